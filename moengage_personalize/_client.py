"""The public facade: validates arguments, runs the blocking core on an executor, returns Futures.

Lifecycle: OPEN -> CLOSED (``close()`` is idempotent). A Future returned by this class always
completes: with a result, or with a :class:`PersonalizeError` no later than its deadline.
"""

from __future__ import annotations

import atexit
import collections
import enum
import functools
import heapq
import itertools
import logging
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TypeVar

import attrs
import requests

from ._config import PersonalizeConfig, User, coerce_user
from ._core import WEEKDAYS, Core
from ._events import (
    ACTION_CLICKED,
    ACTION_SHOWN,
    DROP_CLOSED,
    DROP_DISABLED,
    EventPipeline,
    EventRecord,
    campaign_context,
    offering_attribution,
    resolve_user,
)
from ._models import (
    ExperienceCampaign,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceStatus,
    FlushReport,
    Offering,
    PersonalizeStats,
)
from ._resilience import warn_once
from ._transport import Running, Transport, base_url_for, running
from .exceptions import (
    ClientClosedError,
    DeadlineExceededError,
    ErrorCode,
    PersonalizeError,
    SDKDisabledError,
)

__all__ = ["MoEngagePersonalize"]

log = logging.getLogger("moengage_personalize")

T = TypeVar("T")

RESERVED_ATTRIBUTES = frozenset({"identifiers", "experience_key"})
_WEEKDAYS = frozenset(WEEKDAYS)
_HOURS = frozenset(f"{h:02d}" for h in range(24))
_STATUS_VALUES = {s.value: s for s in ExperienceStatus}


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


def _settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> bool:
    """Complete ``future`` unless something (the deadline, close) already did; True if it did."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        return False
    return True


_GRACE = 0.005  # a call nobody waits for yet starts on a worker after at most about this
_threads = threading.local()  # .latest: the last fetch the thread made, maybe not started yet


class _Waiters(list):  # type: ignore[type-arg]
    """A Future's waiter list: ``concurrent.futures.wait()`` and ``as_completed()`` add to it."""

    __slots__ = ("owner",)
    owner: weakref.ref[_Pending[Any]]

    def append(self, waiter: Any) -> None:
        super().append(waiter)
        future = self.owner()
        if future is not None:
            future.hand_off()


class _Pending(Future[T]):
    """The Future of a fetch, whose call starts where it is first needed.

    ``result()`` or ``exception()`` (with no timeout, or one not shorter than the call's deadline)
    runs the call on the waiting thread itself: no hand-off to a worker and back, each of which
    costs a thread wake-up. Anything else that waits for it (``add_done_callback``,
    ``concurrent.futures.wait``/``as_completed``, ``asyncio.wrap_future``, a shorter ``result()``
    timeout, the same thread's next fetch) hands it to a worker at once; a call nobody has waited
    for after ``_GRACE`` goes to a worker too (the deadline thread sees to it). Either way the
    call stays bounded by its deadline (see :class:`~moengage_personalize._transport.Running`).
    """

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.claim = threading.Lock()  # taken by the one thread that runs the call
        self.here: Callable[[], None] | None = None  # runs the call on the calling thread
        self.elsewhere: Callable[[], None] | None = None  # hands it to a worker
        self.run = Running(deadline)  # for the deadline thread: made before the call can start
        waiters = _Waiters()
        waiters.owner = weakref.ref(self)
        self._waiters = waiters

    def forget(self) -> None:
        """Drop what would run the call (they hold the client): it runs now, or never will."""
        self.here = self.elsewhere = None

    def hand_off(self) -> None:
        """Start the call on a worker unless it started already."""
        elsewhere = self.elsewhere
        if elsewhere is not None:
            self.elsewhere = None
            elsewhere()

    def result(self, timeout: float | None = None) -> T:
        self._wait(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        self.hand_off()
        super().add_done_callback(fn)

    def _wait(self, timeout: float | None) -> None:
        latest = getattr(_threads, "latest", None)
        if latest is not None:
            _threads.latest = None
            if latest is not self:
                latest.hand_off()  # fan-out: the thread's later call runs meanwhile
        here = self.here
        if here is None:
            return
        if (timeout is not None and timeout < self.deadline - time.monotonic()) or getattr(
            _threads, "deadline_thread", False
        ):
            self.hand_off()  # the caller may stop waiting first, or must not be held
            return
        here()


class _Errors:
    """Counts the errors callers get, by code, and calls ``config.on_error`` for each, on the
    thread where the error surfaced; an exception inside the hook is logged and swallowed."""

    def __init__(self, hook: Callable[[PersonalizeError], None] | None) -> None:
        self._hook = hook
        self._lock = threading.Lock()
        self.by_code: dict[str, int] = {}

    def fail(self, future: Future[Any], error: PersonalizeError) -> None:
        if not _settle(future, error=error):
            return  # the Future was already complete: this error reaches nobody
        with self._lock:
            self.by_code[error.code.value] = self.by_code.get(error.code.value, 0) + 1
        if self._hook is not None:
            try:
                self._hook(error)
            except Exception:
                log.exception("moengage-personalize: config.on_error raised; ignored")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_code)


class _Deadlines:
    """One thread that fails Futures whose deadline passed (``requests`` cannot bound DNS look-ups
    or a trickling body, so the deadline completes the Future itself), and hands calls nobody
    waits for to a worker (``start_by``).

    Callers never take its lock on the common path: they append to ``_inbox`` (atomic) and wake
    the thread only if it would otherwise sleep past the new entry (every deadline is
    ``config.timeout`` after its call, so later calls' deadlines never come first); the thread
    moves the inbox into its heap each time it wakes.
    """

    def __init__(self, timeout: float, errors: _Errors) -> None:
        self._timeout = timeout
        self._errors = errors
        self._cond = threading.Condition(threading.Lock())
        self._inbox: collections.deque[tuple[float, int, _Pending[Any], str | None]] = (
            collections.deque()
        )
        self._heap: list[tuple[float, int, _Pending[Any], str | None]] = []  # the thread's own
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._wake_at = math.inf  # when the thread next wakes by itself; -inf while awake

    def add(
        self, deadline: float, future: _Pending[Any], message: str, start_by: float | None = None
    ) -> bool:
        """Watch ``future`` (and, with ``start_by``, hand its call to a worker then if it has
        not started); False once stopped (client closed)."""
        if self._stopped:
            return False
        if self._thread is None:
            self._start()
        self._inbox.append((deadline, next(self._seq), future, message))
        wake_by = deadline
        if start_by is not None:
            self._inbox.append((start_by, next(self._seq), future, None))
            wake_by = start_by + _GRACE  # back-to-back calls: one wake-up per _GRACE at most
        if self._wake_at > wake_by:
            with self._cond:
                self._cond.notify()
        return not self._stopped  # stopped meanwhile: nobody will watch it

    def _start(self) -> None:
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(
                    target=self._run, name="moengage-personalize-deadline", daemon=True
                )
                self._thread.start()

    def pending(self) -> list[_Pending[Any]]:
        """The calls still watched."""
        with self._cond:
            return self.orphans()

    def orphans(self) -> list[_Pending[Any]]:
        """:meth:`pending` without the lock: for a forked child, where a thread of the parent
        may have held it."""
        entries = [*self._heap, *self._inbox.copy()]
        return [item[2] for item in entries if item[3] is not None and not item[2].done()]

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        _threads.deadline_thread = True  # a callback's result() here hands its call off
        while True:
            try:
                if self._watch():
                    return
            except Exception:  # a bug here must not end every deadline: log it, go on
                log.exception("moengage-personalize: the deadline thread failed; going on")

    def _watch(self) -> bool:
        """Process entries until the thread stops (True)."""
        expired: list[tuple[_Pending[Any], str | None]] = []
        heap = self._heap
        inbox = self._inbox
        while True:
            with self._cond:
                while not self._stopped:
                    self._wake_at = -math.inf
                    while inbox:
                        entry = inbox.popleft()
                        if not entry[2].done():  # most calls end before the thread looks
                            heapq.heappush(heap, entry)
                    now = time.monotonic()
                    while heap and (heap[0][0] <= now or heap[0][2].done()):
                        _, _, future, message = heapq.heappop(heap)
                        if not future.done():
                            expired.append((future, message))
                    if expired:
                        break
                    self._wake_at = heap[0][0] if heap else math.inf
                    if inbox:  # arrived meanwhile; its caller may have seen -inf
                        continue
                    self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)
                if self._stopped:
                    return True
            for future, what in expired:  # first free the threads still running them
                if what is not None:
                    future.run.abort()
            for future, what in expired:  # callbacks run outside the lock
                if what is None:
                    future.hand_off()
                    continue
                future.forget()
                self._errors.fail(
                    future,
                    DeadlineExceededError(
                        f"{what} did not complete within its deadline of {self._timeout:g} s "
                        "(config.timeout)"
                    ),
                )
            expired.clear()


def _check_attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping of str to str, not {attributes!r}")
    out: dict[str, str] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"attributes keys must be non-empty str, got {name!r}")
        if name in RESERVED_ATTRIBUTES:
            raise ValueError(
                f"attributes[{name!r}] is reserved (the SDK sets {sorted(RESERVED_ATTRIBUTES)})"
            )
        if not isinstance(value, str):
            raise TypeError(
                f"attributes[{name!r}] must be a str (in-session attributes are strings), "
                f"not {type(value).__name__}"
            )
        out[name] = value
    day = out.get("DAY_OF_THE_WEEK")
    if day is not None and day not in _WEEKDAYS:
        raise ValueError(
            f"attributes['DAY_OF_THE_WEEK'] must be a day such as 'Monday', got {day!r}"
        )
    hour = out.get("TIME_OF_THE_DAY")
    if hour is not None and hour not in _HOURS:
        raise ValueError(
            f"attributes['TIME_OF_THE_DAY'] must be a UTC hour '00'..'23', got {hour!r}"
        )
    return out


def _check_key(key: object, name: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, not {type(key).__name__}")
    if not key or key.strip() != key:
        raise ValueError(f"{name} must be a non-empty key without surrounding spaces, got {key!r}")
    return key


def _check_keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise TypeError(f"experience_keys must be a list of str, not {type(keys).__name__}")
    checked = [_check_key(k, f"experience_keys[{i}]") for i, k in enumerate(keys)]
    if not checked:
        raise ValueError("experience_keys must not be empty")
    return checked


def _check_statuses(
    statuses: Iterable[ExperienceStatus | str] | None,
) -> frozenset[ExperienceStatus]:
    if statuses is None:
        return frozenset(ExperienceStatus)
    if isinstance(statuses, (str, ExperienceStatus)) or not isinstance(statuses, Iterable):
        raise TypeError(f"statuses must be a list of ExperienceStatus, not {statuses!r}")
    out: set[ExperienceStatus] = set()
    for item in statuses:
        if isinstance(item, ExperienceStatus):
            out.add(item)
        elif isinstance(item, str) and item.lower() in _STATUS_VALUES:
            out.add(_STATUS_VALUES[item.lower()])
        else:
            raise ValueError(
                f"statuses items must be ExperienceStatus ('active', 'paused', 'scheduled'), "
                f"got {item!r}"
            )
    if not out:
        raise ValueError("statuses must not be empty (pass None for every status)")
    return frozenset(out)


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be seconds (int or float), not {timeout!r}")
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a finite number >= 0, got {timeout!r}")
    return float(timeout)


class MoEngagePersonalize:
    """A MoEngage Personalize client: fetch experiences for users, as Futures.

    ``app_id`` is the workspace ID, ``api_key`` the Personalize API key (never shown in a repr, a
    log line or an error). ``data_center`` ("01".."06", "101") picks
    ``https://sdk-{dc}.moengage.com/v1``; ``base_url`` overrides it (the full prefix with ``/v1``;
    plain http only to loopback unless ``config.allow_insecure_http``).

    **Threads.** One client serves a whole process: share it between threads. Calls run on
    ``executor`` (by default a ``ThreadPoolExecutor`` of ``config.max_workers`` threads named
    ``moengage-personalize_N``, which :meth:`close` shuts down; an injected executor stays yours).
    ``requests.Session`` is not documented as thread-safe, so the client reads an injected
    ``session`` once, at construction (headers, proxies, ``verify``, ``cert``, the adapter
    mounted for the base URL), then only uses that adapter's connection pool, which is
    thread-safe; the pool of the session the client creates has room for the workers and the
    callers running their own call (``4 * max_workers + 1``). Session hooks, cookies and auth are
    not used.

    **Futures.** Every fetch returns a :class:`concurrent.futures.Future` that completes with the
    result or a :class:`PersonalizeError` within ``config.timeout``. A thread that waits in
    ``result()`` (no timeout, or one not shorter than the deadline left) before a worker started
    the call runs it itself, still bounded by the deadline; any other way of waiting starts it on
    a worker at once. ``add_done_callback`` callbacks run on the thread that completes the Future:
    the thread that ran the call, the client's deadline thread when the deadline passes, or the
    calling thread if the Future is already complete. Keep them short, never call ``.result()`` of
    another SDK Future inside one, and note that an exception raised in a callback is logged by
    ``concurrent.futures`` and otherwise ignored.
    """

    def __init__(
        self,
        app_id: str,
        *,
        api_key: str,
        data_center: str = "01",
        base_url: str | None = None,
        config: PersonalizeConfig | None = None,
        session: requests.Session | None = None,
        executor: Executor | None = None,
    ) -> None:
        if not isinstance(app_id, str) or not app_id.strip():
            raise ValueError("app_id must be the workspace ID, a non-empty str")
        if app_id != app_id.strip() or not app_id.isprintable() or not app_id.isascii():
            raise ValueError(
                f"app_id must be printable ASCII without surrounding spaces: {app_id!r}"
            )
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty str")
        if config is None:
            config = PersonalizeConfig()
        elif not isinstance(config, PersonalizeConfig):
            raise TypeError(f"config must be a PersonalizeConfig, not {type(config).__name__}")
        if session is not None and not isinstance(session, requests.Session):
            raise TypeError(f"session must be a requests.Session, not {type(session).__name__}")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, not {executor!r}")
        url = base_url_for(data_center, base_url, allow_insecure_http=config.allow_insecure_http)
        self._app_id = app_id
        self._config = config
        self._transport = Transport(url, app_id, api_key, config, session)
        self._core = Core(self._transport, config, self._background)
        self._owns_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix="moengage-personalize"
        )
        self._errors = _Errors(config.on_error)
        self._deadlines = _Deadlines(config.timeout, self._errors)
        self._lock = threading.Lock()
        self._callers = [True] * (3 * config.max_workers)  # callers running their own call
        self._events = EventPipeline(self._transport, config, self._offload)
        self._state = _State.OPEN
        self._exit_hook = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)
        _LIVE_CLIENTS.add(self)

    # introspection -------------------------------------------------------------------------

    @property
    def app_id(self) -> str:
        """The workspace ID."""
        return self._app_id

    @property
    def base_url(self) -> str:
        """The API prefix in use (ends in ``/v1``)."""
        return self._transport.base_url

    @property
    def config(self) -> PersonalizeConfig:
        """The client's configuration."""
        return self._config

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._state is _State.CLOSED

    def __repr__(self) -> str:
        return (
            f"<MoEngagePersonalize app_id={self._app_id!r} base_url={self.base_url!r} "
            f"state={self._state.value}>"
        )

    # fetches -------------------------------------------------------------------------------

    def fetch_experiences_meta(
        self, statuses: Iterable[ExperienceStatus | str] | None = None
    ) -> Future[ExperienceCampaignsMetadata]:
        """The workspace's experiences with one of ``statuses`` (all when ``None``).

        The full list is cached for ``config.meta_ttl`` and shared by concurrent callers; results
        served from it say ``source=CACHE``. [Flutter: ``fetchExperiencesMeta``]
        """
        wanted = _check_statuses(statuses)
        return self._submit("fetching metadata", self._core.fetch_meta, wanted)

    def fetch_experience(
        self,
        experience_key: str,
        *,
        attributes: Mapping[str, str] | None = None,
        user: User | str | None = None,
    ) -> Future[ExperienceCampaignsResult]:
        """One experience for ``user`` (a :class:`User`, a customer id, or ``None`` for anonymous).

        ``attributes`` are the in-session attributes of this request (``current_page``,
        ``cart_value``, ``utm_*`` ...), all strings. [Flutter: ``fetchExperience``]
        """
        key = _check_key(experience_key, "experience_key")
        return self._fetch([key], attributes, user)

    def fetch_experiences(
        self,
        experience_keys: Iterable[str],
        *,
        attributes: Mapping[str, str] | None = None,
        user: User | str | None = None,
    ) -> Future[ExperienceCampaignsResult]:
        """Several experiences in one request (at most 25; the rest fail ``MAX_LIMIT_BREACHED``).

        Keys not in the metadata fail ``INVALID_EXPERIENCE_KEY``, paused or scheduled ones
        ``EXPERIENCE_NOT_ACTIVE``, those the service did not serve ``USER_NOT_IN_SEGMENT``;
        campaigns come in request order, duplicates once. [Flutter: ``fetchExperiences``]
        """
        return self._fetch(_check_keys(experience_keys), attributes, user)

    def _fetch(
        self, keys: list[str], attributes: Mapping[str, str] | None, user: User | str | None
    ) -> Future[ExperienceCampaignsResult]:
        attrs_ = _check_attributes(attributes)
        who = coerce_user(user)
        if self._state is _State.OPEN and self._config.enabled:
            cached = self._core.cached_result(keys, attrs_, who)
            if cached is not None:  # complete at once, on the caller's thread
                future: Future[ExperienceCampaignsResult] = Future()
                future.set_result(cached)
                return future
        return self._submit("fetching experiences", self._core.fetch, keys, attrs_, who)

    def _submit(self, what: str, fn: Callable[..., T], *args: Any) -> Future[T]:
        now = time.monotonic()
        future: _Pending[T] = _Pending(now + self._config.timeout)
        if self._state is not _State.OPEN:
            self._errors.fail(future, ClientClosedError(f"{what}: the client is closed"))
            return future
        if not self._config.enabled:
            self._errors.fail(future, SDKDisabledError(f"{what}: the client was built disabled"))
            return future
        if not self._transport.inline:
            if self._deadlines.add(future.deadline, future, what):
                self._run_elsewhere(future, fn, args, what)
            else:
                self._errors.fail(future, ClientClosedError(f"{what}: the client is closed"))
            return future
        future.here = functools.partial(self._run_here, future, fn, args)
        future.elsewhere = functools.partial(self._run_elsewhere, future, fn, args, what)
        if not self._deadlines.add(future.deadline, future, what, now + _GRACE):
            future.forget()
            self._errors.fail(future, ClientClosedError(f"{what}: the client is closed"))
            return future
        previous = getattr(_threads, "latest", None)
        _threads.latest = future
        if previous is not None:
            previous.hand_off()  # fan-out: this thread's earlier call starts now
        return future

    def _run_elsewhere(
        self, future: _Pending[T], fn: Callable[..., T], args: tuple[Any, ...], what: str
    ) -> None:
        try:
            self._executor.submit(self._run, future, fn, args, False)
        except RuntimeError as exc:  # executor shut down, or interpreter shutting down
            self._errors.fail(future, ClientClosedError(f"{what}: cannot run: {exc}"))

    def _spawn(self, fn: Callable[[], None]) -> Future[None] | None:
        """Run ``fn`` on a worker; None if the client cannot (closed, executor shut down)."""
        if self._state is not _State.OPEN:
            return None
        try:
            return self._executor.submit(fn)
        except RuntimeError:
            return None

    def _offload(self, fn: Callable[[], None]) -> Future[None] | None:
        """Run an event send on the client's own worker pool (None: the caller runs it)."""
        return self._spawn(fn) if self._owns_executor else None

    def _background(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` on a worker (metadata refreshes); False if the client cannot."""
        return self._spawn(fn) is not None

    def _run_here(self, future: _Pending[T], fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        """``future.result()`` came before a worker started the call: the caller runs it. At
        most ``3 * max_workers`` callers at once (the connection pool has room for them and the
        workers); beyond that the call goes to a worker."""
        try:
            token = self._callers.pop()  # atomic: no lock, so no convoy of waiting callers
        except IndexError:
            future.hand_off()
            return
        try:
            self._run(future, fn, args, True)
        finally:
            self._callers.append(token)

    def _run(
        self,
        future: _Pending[T],
        fn: Callable[..., T],
        args: tuple[Any, ...],
        here: bool,
    ) -> None:
        future.forget()
        if not future.claim.acquire(blocking=False) or future.done():
            return  # run by another thread, or failed (deadline, close) while queued
        try:
            if not future.set_running_or_notify_cancel():
                return  # cancelled by the caller while queued
        except RuntimeError:
            return  # failed (deadline passed, client closed) a moment ago
        run = future.run
        run.here = here
        previous = running(run)
        error: PersonalizeError | None = None
        interrupt: BaseException | None = None
        try:
            result = fn(*args, future.deadline)
        except PersonalizeError as exc:
            error = exc
        except BaseException as exc:  # never let a foreign exception out of a Future
            error = PersonalizeError(
                f"unexpected {type(exc).__name__}: {exc}", code=ErrorCode.UNKNOWN
            )
            error.__cause__ = exc
            if here and not isinstance(exc, Exception):
                interrupt = exc  # Ctrl-C or exit on the caller's thread: theirs to handle
        finally:
            running(previous)  # callbacks run outside the call
        if error is None:
            _settle(future, result=result)
        else:
            self._errors.fail(future, error)
        if interrupt is not None:
            raise interrupt

    # tracking ------------------------------------------------------------------------------

    def experiences_shown(
        self, campaigns: Iterable[ExperienceCampaign], *, user: User | str | None = None
    ) -> None:
        """Record an impression of each campaign, in order. [Flutter: ``experiencesShown``]

        Never blocks on the network and never raises for delivery problems; invalid input raises
        ``TypeError``/``ValueError`` at once and nothing is queued.
        """
        if isinstance(campaigns, (ExperienceCampaign, Mapping)) or not isinstance(
            campaigns, Iterable
        ):
            raise TypeError(
                f"campaigns must be a list of campaigns, not {type(campaigns).__name__}"
            )
        who = coerce_user(user)
        self._enqueue(
            [self._record(ACTION_SHOWN, c, f"campaigns[{i}]", who) for i, c in enumerate(campaigns)]
        )

    def experience_shown(
        self, campaign: ExperienceCampaign, *, user: User | str | None = None
    ) -> None:
        """Record an impression of ``campaign``. [Flutter: ``experienceShown``]"""
        self._enqueue([self._record(ACTION_SHOWN, campaign, "campaign", coerce_user(user))])

    def experience_clicked(
        self,
        campaign: ExperienceCampaign,
        *,
        b_id: str | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record a click on ``campaign``; ``b_id`` names the clicked element (e.g. "Add to
        Cart"). [Flutter: ``experienceClicked``]"""
        over = None
        if b_id is not None:
            if not isinstance(b_id, str) or not b_id:
                raise TypeError(f"b_id must be a non-empty str or None, not {b_id!r}")
            over = {"b_id": b_id}
        self._enqueue(
            [self._record(ACTION_CLICKED, campaign, "campaign", coerce_user(user), over=over)]
        )

    def offerings_shown(
        self,
        offering_payloads: Iterable[Offering | Mapping[str, Any]],
        *,
        campaign: ExperienceCampaign | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record an impression of each offering, in order (the dicts exactly as returned; plain
        dicts need ``campaign=``). [Flutter: ``offeringsShown``]"""
        if isinstance(offering_payloads, Mapping) or not isinstance(offering_payloads, Iterable):
            raise TypeError(
                f"offering_payloads must be a list of offerings, not "
                f"{type(offering_payloads).__name__}"
            )
        who = coerce_user(user)
        self._enqueue(
            [
                self._offering_record(ACTION_SHOWN, o, campaign, f"offering_payloads[{i}]", who)
                for i, o in enumerate(offering_payloads)
            ]
        )

    def offering_shown(
        self,
        offering_payload: Offering | Mapping[str, Any],
        *,
        campaign: ExperienceCampaign | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record an impression of one offering. [Flutter: ``offeringShown``]"""
        self._enqueue(
            [
                self._offering_record(
                    ACTION_SHOWN, offering_payload, campaign, "offering_payload", coerce_user(user)
                )
            ]
        )

    def offering_clicked(
        self,
        campaign: ExperienceCampaign,
        offering_payload: Offering | Mapping[str, Any],
        *,
        user: User | str | None = None,
    ) -> None:
        """Record ONE click on ``campaign`` carrying the offering: it counts as the experience
        click too (do not also call :meth:`experience_clicked`). [Flutter: ``offeringClicked``]"""
        if campaign is None:
            raise TypeError("campaign must be the campaign whose payload carried the offering")
        self._enqueue(
            [
                self._offering_record(
                    ACTION_CLICKED,
                    offering_payload,
                    campaign,
                    "offering_payload",
                    coerce_user(user),
                )
            ]
        )

    def flush(self, timeout: float = 5.0) -> FlushReport:
        """Deliver the events queued so far: block until each is delivered or given up, or
        ``timeout`` seconds pass, and report what happened."""
        return self._events.flush(_check_timeout(timeout))

    def stats(self) -> PersonalizeStats:
        """A snapshot of the client's counters (requests, retries, failures by code, cache,
        coalesced calls, circuit state, events)."""
        breaker = self._core.breaker
        return attrs.evolve(
            self._events.stats(),
            requests=self._transport.requests.value,
            retries=self._transport.retries.value,
            failures=self._errors.snapshot(),
            cache_hits=self._core.cache_hits.value,
            cache_misses=self._core.cache_misses.value,
            stale_served=self._core.stale_served.value,
            coalesced=self._core.coalesced,
            circuit_state=breaker.state.value if breaker is not None else "disabled",
            circuit_opened=breaker.opened.value if breaker is not None else 0,
        )

    @staticmethod
    def _record(
        action: str,
        campaign: object,
        name: str,
        user: User | None,
        *,
        under: Mapping[str, Any] | None = None,
        over: Mapping[str, Any] | None = None,
    ) -> EventRecord:
        context, fetched_for = campaign_context(campaign, name)
        customer_id, offset = resolve_user(fetched_for, user, name)
        return EventRecord(action, context, under, over, customer_id, offset, int(time.time()))

    def _offering_record(
        self, action: str, offering: object, campaign: object | None, name: str, user: User | None
    ) -> EventRecord:
        attribution, parent = offering_attribution(offering, campaign, name)
        return self._record(action, parent, name, user, under=attribution)

    def _enqueue(self, records: list[EventRecord]) -> None:
        if self._state is not _State.OPEN:
            self._events.drop(DROP_CLOSED, len(records))
        elif not self._config.enabled:
            self._events.drop(DROP_DISABLED, len(records))
        else:
            for record in records:
                self._events.put(record)

    # lifecycle -----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the client within ``timeout`` seconds: queued events are flushed, then the
        threads stop; new calls fail ``SDK_NOT_INITIALIZED``, queued fetches fail the same way,
        fetches in flight get what is left of ``timeout`` to finish. Idempotent; shuts down only
        an executor the client created."""
        timeout = _check_timeout(timeout)
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        atexit.unregister(self._exit_hook)
        end = time.monotonic() + timeout
        self._events.close(timeout)
        timeout = max(0.0, end - time.monotonic())
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        pending = self._deadlines.pending()
        for future in pending:
            if not future.running():
                future.forget()
                self._errors.fail(
                    future, ClientClosedError("the client was closed before the call ran")
                )
        wait_futures(pending, timeout=timeout)
        for future in pending:
            if not future.done():  # free its thread: the deadline thread stops below
                future.run.abort()
            self._errors.fail(future, ClientClosedError("the client was closed while the call ran"))
        self._deadlines.stop(timeout=max(0.0, end - time.monotonic()))
        self._transport.close()

    def _after_fork_in_child(self) -> None:
        """Rebuild what the client owns in a forked child: its threads did not survive the fork
        and its locks and connections are the parent's."""
        if self._state is not _State.OPEN:
            return
        parents = self._deadlines.orphans()
        self._lock = threading.Lock()
        self._errors = _Errors(self._config.on_error)
        self._deadlines = _Deadlines(self._config.timeout, self._errors)
        self._callers = [True] * (3 * self._config.max_workers)
        for future in parents:  # the parent's calls are the parent's: fail them here
            future.forget()
            lock = getattr(future, "_condition", None)
            if lock is not None and lock.acquire(blocking=False):  # not held by a lost thread
                lock.release()
                self._errors.fail(
                    future, ClientClosedError("the call was made before this process forked")
                )
        if self._owns_executor:
            self._executor = ThreadPoolExecutor(
                max_workers=self._config.max_workers, thread_name_prefix="moengage-personalize"
            )
        else:
            warn_once(
                "fork-executor",
                "moengage-personalize: this process was forked after the client was made with "
                "an injected executor; its threads did not survive the fork. Give each process "
                "its own executor (or client).",
            )
        self._transport.after_fork()
        self._core.after_fork()
        self._events = self._events.after_fork()

    def __enter__(self) -> MoEngagePersonalize:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", _State.CLOSED) is _State.OPEN and hasattr(self, "_exit_hook"):
            warnings.warn(
                f"{self!r} was never closed; call close() or use it as a context manager",
                ResourceWarning,
                stacklevel=2,
            )
            try:
                atexit.unregister(self._exit_hook)
                if self._owns_executor:
                    self._executor.shutdown(wait=False, cancel_futures=True)
                self._deadlines.stop(timeout=0)
                self._events.abandon()
            except Exception:  # noqa: S110 - best effort at garbage collection
                pass


_LIVE_CLIENTS: weakref.WeakSet[MoEngagePersonalize] = weakref.WeakSet()


def _reinit_clients_in_child() -> None:
    _threads.latest = None  # a call the parent had not started yet stays the parent's
    for client in list(_LIVE_CLIENTS):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reinit_clients_in_child)


def _flush_at_exit(ref: weakref.ref[MoEngagePersonalize]) -> None:
    """At interpreter exit: a bounded flush (``config.exit_flush_timeout``) and a clean stop."""
    client = ref()
    if client is not None and not client.closed:
        client.close(timeout=client.config.exit_flush_timeout)
