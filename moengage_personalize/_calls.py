"""The Futures of a client's fetches: where a call starts, how it ends, and how identical calls
in flight share one request.

A call starts in one place, :meth:`Calls.start`: its Future and its :class:`Deadline` are made,
the deadline is watched, and the call is submitted to the executor. The worker that runs it
passes the deadline to the core (and on to the transport) and completes the Future; if the
deadline passes first, the watchdog fails the Future with ``DeadlineExceededError`` and shuts the
call's socket, so the worker is free at once. An identical call made while one is in flight
(same keys, attributes and user) holds no thread: its Future completes from the first one's.
"""

from __future__ import annotations

import logging
import threading
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


class _Call:
    """A call in flight: its Future, its deadline, and how to word its errors."""

    __slots__ = ("args", "deadline", "fn", "future", "key", "what")

    def __init__(
        self, what: str, fn: Callable[..., Any], args: tuple[Any, ...], key: Hashable | None
    ) -> None:
        self.what = what
        self.fn = fn
        self.args = args
        self.key = key
        self.future: Future[Any] = Future()
        self.deadline: Deadline | None = None


class Calls:
    """Starts a client's calls on its executor and sees that each one ends by its deadline."""

    def __init__(self, executor: Executor, timeout: float, errors: Errors) -> None:
        self._executor = executor
        self._timeout = timeout
        self.errors = errors
        self.watchdog = Watchdog()
        self._flights: dict[Hashable, _Call] = {}
        self._lock = threading.Lock()  # only for the flights table
        self._live: set[_Call] = set()  # calls started and not finished (close fails them)
        self.coalesced = Counter()

    def start(
        self, what: str, fn: Callable[..., T], args: tuple[Any, ...], key: Hashable | None = None
    ) -> Future[T]:
        """Run ``fn(*args, deadline)`` on the executor; ``key`` names identical calls."""
        call = _Call(what, fn, args, key)
        if key is not None:
            with self._lock:
                leader = self._flights.setdefault(key, call)
            if leader is not call:
                self.coalesced.add()
                return self._follow(leader, call)
        self._launch(call)
        return call.future

    def _launch(self, call: _Call) -> None:
        deadline = call.deadline = Deadline(self._timeout, on_expire=lambda: self._expired(call))
        self._live.add(call)
        if not self.watchdog.watch(deadline):
            self._end(call, ClientClosedError(f"{call.what}: the client is closed"))
            return
        try:
            self._executor.submit(self._run, call)
        except RuntimeError as exc:  # executor shut down, or the interpreter is exiting
            self._end(call, ClientClosedError(f"{call.what}: cannot run: {exc}"))

    def _follow(self, leader: _Call, follower: _Call) -> Future[Any]:
        """``follower`` completes with ``leader``'s outcome (or runs itself if the leader's
        caller cancelled it)."""

        def adopt(done: Future[Any]) -> None:
            if done.cancelled():
                follower.key = None  # run on its own
                self._launch(follower)
            elif done.exception() is not None:
                settle(follower.future, error=done.exception())
            else:
                settle(follower.future, result=_own_copy(done.result()))

        leader.future.add_done_callback(adopt)
        return follower.future

    def _run(self, call: _Call) -> None:
        deadline = call.deadline
        assert deadline is not None
        future = call.future
        try:
            if not future.set_running_or_notify_cancel():
                self._end(call, None)
                return
        except RuntimeError:  # failed (the deadline passed, the client closed) while queued
            self._end(call, None)
            return
        error: PersonalizeError | None = None
        result: Any = None
        try:
            result = call.fn(*call.args, deadline)
        except PersonalizeError as exc:
            error = exc
        except BaseException as exc:  # never let a foreign exception out of a Future
            error = PersonalizeError(
                f"{call.what}: unexpected {type(exc).__name__}: {exc}", code=ErrorCode.UNKNOWN
            )
            error.__cause__ = exc
        self._end(call, error, result)

    def _end(self, call: _Call, error: PersonalizeError | None, result: Any = None) -> None:
        """The call is over: forget it, then complete its Future (unless something else did)."""
        if call.deadline is not None:
            call.deadline.done = True
        self._live.discard(call)
        if call.key is not None:
            with self._lock:
                if self._flights.get(call.key) is call:
                    del self._flights[call.key]
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
        live = list(self._live)
        for call in live:
            if not call.future.running():
                self._end(call, ClientClosedError("the client was closed before the call ran"))
        wait_futures([call.future for call in live], timeout=timeout)
        for call in live:
            if not call.future.done() and call.deadline is not None:
                call.deadline.on_expire = None
                call.deadline.expire()  # frees the thread running it
            self._end(call, ClientClosedError("the client was closed while the call ran"))
        self.watchdog.stop(timeout=timeout)

    def orphans(self) -> list[Future[Any]]:
        """In a forked child: the parent's calls (their threads did not survive the fork)."""
        return [call.future for call in list(self._live) if not call.future.done()]
