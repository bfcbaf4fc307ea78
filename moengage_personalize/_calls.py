"""The Futures of a client's fetches: where a call starts, how it ends, and how identical calls
in flight share one request.

:meth:`Calls.start` makes a call's Future and its :class:`Deadline` and has the deadline
watched. The call then runs once, in :meth:`_Call.run` (one claim, whoever comes first), on one
of two threads:

* the caller's own, when it waits in ``result()``/``exception()`` (no timeout, or one not shorter
  than the deadline left) before anything else started the call: a hand-off to a worker and
  back costs two thread wake-ups, a third of a fetch on loopback;
* a worker, as soon as anything else needs it: ``add_done_callback`` (``asyncio.wrap_future``
  too), or ``START_AFTER`` seconds passing with nobody running it (``concurrent.futures.wait``,
  ``as_completed``, a Future nobody waits for), which the watchdog sees to.

The runner passes the deadline to the core (and on to the transport) and completes the Future;
if the deadline passes first, the watchdog fails the Future with ``DeadlineExceededError`` and
shuts the call's socket, so the thread running it is free at once. An identical call made while
one is in flight (same keys, attributes and user) holds no thread: its Future completes from the
first one's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures import wait as wait_futures
from typing import Any, TypeVar

import attrs

from ._deadline import Deadline, Watchdog
from ._models import ExperienceCampaignsMetadata, ExperienceCampaignsResult
from ._resilience import Counter
from .exceptions import ClientClosedError, DeadlineExceededError, ErrorCode, PersonalizeError

log = logging.getLogger("moengage_personalize")

T = TypeVar("T")

START_AFTER = 0.002  # a call nobody runs by then starts on a worker
_watchdog_thread = threading.local()  # .active on the watchdog's thread: it never runs a call


def settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> bool:
    """Complete ``future`` unless something (the deadline, close) already did; True if it did."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        return False
    return True


class Errors:
    """Counts the errors callers get, by code, and calls ``config.on_error`` for each, on the
    thread where the error surfaced; an exception inside the hook is logged and swallowed."""

    def __init__(self, hook: Callable[[PersonalizeError], None] | None) -> None:
        self._hook = hook
        self._lock = threading.Lock()
        self.by_code: dict[str, int] = {}

    def fail(self, future: Future[Any], error: PersonalizeError) -> None:
        if not settle(future, error=error):
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


def _own_copy(result: Any) -> Any:
    """A follower's own copy of a shared result (its lists are the caller's to change)."""
    if isinstance(result, ExperienceCampaignsResult):
        return attrs.evolve(
            result, experiences=list(result.experiences), failures=list(result.failures)
        )
    if isinstance(result, ExperienceCampaignsMetadata):
        return attrs.evolve(result, experiences=list(result.experiences))
    return result


def _mark_watchdog_thread() -> None:
    _watchdog_thread.active = True


class _Pending(Future[T]):
    """A fetch's Future. Waiting for it in ``result()``/``exception()`` runs the call on the
    waiting thread if nothing started it yet; ``add_done_callback`` hands it to a worker."""

    def __init__(self, call: _Call) -> None:
        super().__init__()
        self.call: _Call | None = call  # None once the call is claimed

    def result(self, timeout: float | None = None) -> T:
        self._wait(timeout)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(timeout)

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        call = self.call
        if call is not None and call.deadline is not None:  # (a follower waits for its leader)
            call.submit()
        super().add_done_callback(fn)

    def _wait(self, timeout: float | None) -> None:
        call = self.call
        if call is None:
            return
        deadline = call.deadline
        if deadline is None:  # a follower: it completes from the call it joined
            return
        if (
            not call.calls.inline
            or (timeout is not None and timeout < deadline.remaining())
            or getattr(_watchdog_thread, "active", False)
        ):
            call.submit()  # the caller may stop waiting first, or must not be held
        else:
            call.run(here=True)


class _Call:
    """A call in flight: its Future, its deadline, and how to word its errors."""

    __slots__ = (
        "args",
        "calls",
        "claim",
        "deadline",
        "fn",
        "future",
        "key",
        "made",
        "submitted",
        "what",
    )

    def __init__(
        self,
        calls: Calls,
        what: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        key: Hashable | None,
    ) -> None:
        self.calls = calls
        self.what = what
        self.fn = fn
        self.args = args
        self.key = key
        self.made = time.monotonic()  # the deadline counts from here, followers' too
        self.future: _Pending[Any] = _Pending(self)
        self.deadline: Deadline | None = None
        self.claim = threading.Lock()  # taken by the one thread that runs the call
        self.submitted = False

    def run(self, here: bool = False) -> None:
        """THE place a call starts: unless another thread claimed it, run it here."""
        if not self.claim.acquire(blocking=False):
            return
        self.future.call = None
        if self.deadline is not None:
            self.deadline.started()
        self.calls.run(self, here)

    def submit(self) -> None:
        """Have a worker run the call (unless a thread claimed it already)."""
        if self.submitted or self.claim.locked():
            return
        self.submitted = True
        self.calls.submit(self)


class Calls:
    """Starts a client's calls on its executor and sees that each one ends by its deadline."""

    def __init__(
        self, executor: Executor, timeout: float, errors: Errors, inline: bool = True
    ) -> None:
        self.inline = inline  # callers may run their own call (the transport can stop it)
        self._executor = executor
        self._timeout = timeout
        self.errors = errors
        self.watchdog = Watchdog(on_thread=_mark_watchdog_thread, tick=START_AFTER)
        self._flights: dict[Hashable, _Call] = {}
        self._live: set[_Call] = set()  # calls started and not finished (close fails them)
        self.coalesced = Counter()

    def start(
        self, what: str, fn: Callable[..., T], args: tuple[Any, ...], key: Hashable | None = None
    ) -> Future[T]:
        """Run ``fn(*args, deadline)`` on the executor; ``key`` names identical calls."""
        call = _Call(self, what, fn, args, key)
        if key is not None:
            leader = self._flights.setdefault(key, call)  # atomic
            if leader is not call:
                self.coalesced.add()
                return self._follow(leader, call)
        self._launch(call)
        return call.future

    def _launch(self, call: _Call) -> None:
        spent = time.monotonic() - call.made  # (a follower run after all: partly spent)
        if spent >= self._timeout:
            self._expired(call)
            return
        deadline = call.deadline = Deadline(
            self._timeout, on_expire=lambda: self._expired(call), spent=spent
        )
        deadline.start_by(START_AFTER, call.submit)
        self._live.add(call)
        if not self.watchdog.watch(deadline):
            self._end(call, ClientClosedError(f"{call.what}: the client is closed"))

    def submit(self, call: _Call) -> None:
        try:
            self._executor.submit(call.run)
        except RuntimeError as exc:  # executor shut down, or the interpreter is exiting
            self._end(call, ClientClosedError(f"{call.what}: cannot run: {exc}"))

    def _follow(self, leader: _Call, follower: _Call) -> Future[Any]:
        """``follower`` completes with ``leader``'s outcome (or runs itself if the leader's
        caller cancelled it)."""

        def adopt(done: Future[Any]) -> None:
            if done.cancelled():
                follower.key = None  # run on its own, within what is left of its deadline
                follower.submitted = False
                self._launch(follower)
            elif done.exception() is not None:
                settle(follower.future, error=done.exception())
            else:
                settle(follower.future, result=_own_copy(done.result()))

        leader.future.add_done_callback(adopt)
        return follower.future

    def run(self, call: _Call, here: bool) -> None:
        """Run a claimed call (``here``: on the thread waiting for it); complete its Future."""
        deadline = call.deadline
        assert deadline is not None
        deadline.here = here
        future = call.future
        if future.done():  # failed (the deadline passed, the client closed) while queued
            self._end(call, None)
            return
        try:
            if not future.set_running_or_notify_cancel():
                self._end(call, None)
                return
        except RuntimeError:  # failed (the deadline passed, the client closed) while queued
            self._end(call, None)
            return
        error: PersonalizeError | None = None
        result: Any = None
        interrupt: BaseException | None = None
        try:
            result = call.fn(*call.args, deadline)
        except PersonalizeError as exc:
            error = exc
        except BaseException as exc:  # never let a foreign exception out of a Future
            error = PersonalizeError(
                f"{call.what}: unexpected {type(exc).__name__}: {exc}", code=ErrorCode.UNKNOWN
            )
            error.__cause__ = exc
            if here and not isinstance(exc, Exception):
                interrupt = exc  # Ctrl-C or exit on the caller's own thread: theirs to handle
        self._end(call, error, result)
        if interrupt is not None:
            raise interrupt

    def _end(self, call: _Call, error: PersonalizeError | None, result: Any = None) -> None:
        """The call is over: forget it, then complete its Future (unless something else did)."""
        if call.deadline is not None:
            call.deadline.done = True
        call.future.call = None
        self._live.discard(call)
        if call.key is not None and self._flights.get(call.key) is call:
            self._flights.pop(call.key, None)  # (a race may drop a newer flight: no harm)
        if error is None:
            settle(call.future, result=result)
        else:
            self.errors.fail(call.future, error)

    def _expired(self, call: _Call) -> None:
        self._end(
            call,
            DeadlineExceededError(
                f"{call.what} did not complete within its deadline of {self._timeout:g} s "
                "(config.timeout)"
            ),
        )

    def close(self, timeout: float) -> None:
        """Fail the calls not started yet at once, give those running ``timeout`` seconds, then
        fail them too (their sockets shut), and stop the watchdog."""
        end = time.monotonic() + timeout
        live = list(self._live)
        for call in live:
            if not call.future.running():
                self._end(call, ClientClosedError("the client was closed before the call ran"))
        wait_futures([call.future for call in live], timeout=timeout)
        for call in list(self._live):  # their errors say "closed", not "deadline"
            if call.deadline is not None:
                call.deadline.on_expire = None
        # the watchdog stops first (it shuts what it still held: events sends, refreshes), so
        # that a call started meanwhile is in the last look at the live calls below
        self.watchdog.stop(timeout=max(0.0, end - time.monotonic()))
        for call in list(self._live):
            if not call.future.done() and call.deadline is not None:
                call.deadline.on_expire = None
                call.deadline.stop()  # frees the thread running it
            self._end(call, ClientClosedError("the client was closed while the call ran"))

    def orphans(self) -> list[Future[Any]]:
        """In a forked child: the parent's calls (their threads did not survive the fork)."""
        return [call.future for call in list(self._live) if not call.future.done()]
