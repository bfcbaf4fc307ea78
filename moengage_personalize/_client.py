"""The public facade: checks arguments, starts the blocking core's calls as Futures, tracks.

Lifecycle: OPEN -> CLOSED (``close()`` is idempotent). A Future returned by this class always
completes: with a result, or with a :class:`PersonalizeError` no later than its deadline.
"""

from __future__ import annotations

import atexit
import enum
import functools
import logging
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._calls import Calls, Errors, settle
from ._checks import check_attributes, check_key, check_keys, check_statuses, check_timeout
from ._config import PersonalizeConfig, User, coerce_user
from ._core import Core, user_key
from ._events import DROP_CLOSED, DROP_DISABLED, EventPipeline, EventRecord
from ._http import Secret, Transport, base_url_for
from ._models import (
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceStatus,
    FlushReport,
    PersonalizeStats,
)
from ._resilience import warn_once
from ._tracking import TrackingCalls
from .exceptions import ClientClosedError, PersonalizeError, SDKDisabledError

if TYPE_CHECKING:
    import requests

__all__ = ["MoEngagePersonalize"]

log = logging.getLogger("moengage_personalize")

T = TypeVar("T")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class MoEngagePersonalize(TrackingCalls):
    """A MoEngage Personalize client: fetch experiences for users, as Futures.

    ``app_id`` is the workspace ID, ``api_key`` the Personalize API key (never shown in a repr, a
    log line, an error or a traceback's locals). ``data_center`` ("01".."06", "101") picks
    ``https://sdk-{dc}.moengage.com/v1``; ``base_url`` overrides it (the full prefix with ``/v1``;
    plain http only to loopback unless ``config.allow_insecure_http``).

    **Threads.** One client serves a whole process: share it between threads. Calls run on
    ``executor`` (by default a ``ThreadPoolExecutor`` of ``config.max_workers`` threads named
    ``moengage-personalize_N``, which :meth:`close` shuts down; an injected executor stays yours).
    An injected ``session`` is read once, at construction (headers, proxies, ``verify``, ``cert``,
    the adapter mounted for the base URL); requests only carries the calls when a proxy or an
    adapter of its own applies (see the README's "Transport"). Session hooks, cookies and auth
    are not used.

    **Futures.** Every fetch returns a :class:`concurrent.futures.Future`, started on a worker at
    once, that completes with the result or a :class:`PersonalizeError` within ``config.timeout``.
    An identical fetch made while one is in flight (same keys, attributes and user) shares its
    request and holds no thread. ``add_done_callback`` callbacks run on the thread that completes
    the Future: a worker, the client's deadline thread when the deadline passes, or the calling
    thread if the Future is already complete. Keep them short; an exception raised in a callback
    is logged by ``concurrent.futures`` and otherwise ignored.
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
        secret = Secret(api_key)  # from here on no frame shows the key, not even on error
        del api_key
        secret.check()
        if not isinstance(app_id, str) or not app_id.strip():
            raise ValueError("app_id must be the workspace ID, a non-empty str")
        if app_id != app_id.strip() or not app_id.isprintable() or not app_id.isascii():
            raise ValueError(
                f"app_id must be printable ASCII without surrounding spaces: {app_id!r}"
            )
        if config is None:
            config = PersonalizeConfig()
        elif not isinstance(config, PersonalizeConfig):
            raise TypeError(f"config must be a PersonalizeConfig, not {type(config).__name__}")
        if session is not None:
            requests_module = sys.modules.get("requests")  # a Session means requests is loaded
            if requests_module is None or not isinstance(session, requests_module.Session):
                raise TypeError(f"session must be a requests.Session, not {type(session).__name__}")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, not {executor!r}")
        url = base_url_for(data_center, base_url, allow_insecure_http=config.allow_insecure_http)
        self._app_id = app_id
        self._config = config
        self._transport = Transport(url, app_id, secret, config, session)
        self._owns_executor = executor is None
        self._executor: Executor = executor or self._new_executor()
        self._calls = Calls(
            self._executor, config.timeout, Errors(config.on_error), self._transport.inline
        )
        self._core = Core(self._transport, config, self._background, self._calls.watchdog.watch)
        self._events = EventPipeline(
            self._transport, config, self._calls.watchdog.watch, self._offload
        )
        self._lock = threading.Lock()
        self._state = _State.OPEN
        self._exit_hook = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)
        _LIVE_CLIENTS.add(self)

    def _new_executor(self) -> Executor:
        return ThreadPoolExecutor(
            max_workers=self._config.max_workers, thread_name_prefix="moengage-personalize"
        )

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
        if not hasattr(self, "_state"):  # half-built: the constructor raised
            return "<MoEngagePersonalize (not constructed)>"
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
        wanted = check_statuses(statuses)
        return self._start("fetching metadata", self._core.fetch_meta, (wanted,), ("meta", wanted))

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
        return self._fetch([check_key(experience_key, "experience_key")], attributes, user)

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
        return self._fetch(check_keys(experience_keys), attributes, user)

    def _fetch(
        self, keys: list[str], attributes: Mapping[str, str] | None, user: User | str | None
    ) -> Future[ExperienceCampaignsResult]:
        checked = check_attributes(attributes)
        who = coerce_user(user)
        if self._state is _State.OPEN and self._config.enabled:
            cached = self._core.cached_result(keys, checked, who)
            if cached is not None:  # complete at once, on the caller's thread
                future: Future[ExperienceCampaignsResult] = Future()
                future.set_result(cached)
                return future
        key = (tuple(keys), tuple(sorted(checked.items())), user_key(who))
        return self._start("fetching experiences", self._core.fetch, (keys, checked, who), key)

    def _start(self, what: str, fn: Callable[..., T], args: tuple[Any, ...], key: Any) -> Future[T]:
        """THE place a fetch starts (see ``_calls``), unless the client cannot run it."""
        if self._state is not _State.OPEN:
            error: PersonalizeError = ClientClosedError(f"{what}: the client is closed")
        elif not self._config.enabled:
            error = SDKDisabledError(f"{what}: the client was built disabled")
        else:
            return self._calls.start(what, fn, args, key)
        future: Future[T] = Future()
        self._calls.errors.fail(future, error)
        return future

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

    # tracking (the calls are in TrackingCalls) ---------------------------------------------

    def _enqueue(self, records: list[EventRecord]) -> None:
        if self._state is not _State.OPEN:
            self._events.drop(DROP_CLOSED, len(records))
        elif not self._config.enabled:
            self._events.drop(DROP_DISABLED, len(records))
        else:
            for record in records:
                self._events.put(record)

    def flush(self, timeout: float = 5.0) -> FlushReport:
        """Deliver the events queued so far: block until each is delivered or given up, or
        ``timeout`` seconds pass, and report what happened."""
        return self._events.flush(check_timeout(timeout))

    def stats(self) -> PersonalizeStats:
        """A snapshot of the client's counters (requests, retries, failures by code, cache,
        coalesced calls, circuit state, events)."""
        breaker = self._core.breaker
        return attrs.evolve(
            self._events.stats(),
            requests=self._transport.requests.value,
            retries=self._transport.retries.value,
            failures=self._calls.errors.snapshot(),
            cache_hits=self._core.cache_hits.value,
            cache_misses=self._core.cache_misses.value,
            stale_served=self._core.stale_served.value,
            coalesced=self._core.coalesced + self._calls.coalesced.value,
            circuit_state=breaker.state.value if breaker is not None else "disabled",
            circuit_opened=breaker.opened.value if breaker is not None else 0,
        )

    # lifecycle -----------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the client within ``timeout`` seconds: queued events are flushed, then the
        threads stop; new calls fail ``SDK_NOT_INITIALIZED``, queued fetches fail the same way,
        fetches in flight get what is left of ``timeout`` to finish. Idempotent; shuts down only
        an executor the client created."""
        timeout = check_timeout(timeout)
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        atexit.unregister(self._exit_hook)
        end = time.monotonic() + timeout
        self._events.close(timeout)
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._calls.close(max(0.0, end - time.monotonic()))
        self._transport.close()

    def _after_fork_in_child(self) -> None:
        """Rebuild what the client owns in a forked child: its threads did not survive the fork
        and its locks and connections are the parent's."""
        if self._state is not _State.OPEN:
            return
        parents = self._calls.orphans()
        self._lock = threading.Lock()
        if self._owns_executor:
            self._executor = self._new_executor()
        else:
            warn_once(
                "fork-executor",
                "moengage-personalize: this process was forked after the client was made with "
                "an injected executor; its threads did not survive the fork. Give each process "
                "its own executor (or client).",
            )
        self._calls = Calls(
            self._executor,
            self._config.timeout,
            Errors(self._config.on_error),
            self._transport.inline,
        )
        self._transport.after_fork()
        self._core.after_fork(self._calls.watchdog.watch)
        self._events = self._events.after_fork(self._calls.watchdog.watch)
        if parents:  # the parent's calls are the parent's: fail them here, on a thread of
            # their own (a lock of theirs may have been held by a thread that is gone)
            threading.Thread(
                target=_fail_all,
                args=(parents,),
                name="moengage-personalize-fork",
                daemon=True,
            ).start()

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
                self._calls.watchdog.stop(timeout=0)
                self._events.abandon()
            except Exception:  # noqa: S110 - best effort at garbage collection
                pass


def _fail_all(futures: list[Future[Any]]) -> None:
    for future in futures:
        settle(future, error=ClientClosedError("the call was made before this process forked"))


_LIVE_CLIENTS: weakref.WeakSet[MoEngagePersonalize] = weakref.WeakSet()


def _reinit_clients_in_child() -> None:
    for client in list(_LIVE_CLIENTS):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_reinit_clients_in_child)


def _flush_at_exit(ref: weakref.ref[MoEngagePersonalize]) -> None:
    """At interpreter exit: a bounded flush (``config.exit_flush_timeout``) and a clean stop."""
    client = ref()
    if client is not None and not client.closed:
        client.close(timeout=client.config.exit_flush_timeout)
