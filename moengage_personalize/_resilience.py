"""Resilience helpers of the fetch path: a circuit breaker, single flight, an LRU experience cache,
and thread-safe counters. No I/O here."""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from ._config import CircuitBreakerPolicy
from ._deadline import Deadline
from .exceptions import (
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    PersonalizeError,
)

T = TypeVar("T")

log = logging.getLogger("moengage_personalize")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


class Counter:
    """A thread-safe counter (``+=`` on an int is not atomic across threads)."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


class CircuitState(str, enum.Enum):
    """State of the fetch path's circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


def _counts_as_failure(error: PersonalizeError) -> bool:
    if error.code in (
        ErrorCode.NETWORK_ERROR,
        ErrorCode.UNKNOWN_SERVER_ERROR,
        ErrorCode.PARSE_ERROR,
    ):
        return True
    return error.status_code in (401, 429)


class CircuitBreaker:
    """Stops hammering a service that keeps failing or refuses the credentials (401).

    CLOSED: calls pass; ``failure_threshold`` consecutive failures (network, 5xx, 429, unparsable
    answers), or one 401, open it. OPEN: calls fail fast with the error that opened it until
    ``cool_down`` has passed. HALF_OPEN: one trial call passes; its success closes the circuit, its
    failure opens it again.
    """

    def __init__(self, policy: CircuitBreakerPolicy) -> None:
        self._threshold = policy.failure_threshold
        self._cool_down = policy.cool_down
        self._open_on_401 = policy.open_on_401
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._opener: PersonalizeError | None = None
        self._trial_running = False
        self.opened = Counter()

    @property
    def state(self) -> CircuitState:
        with self._lock:
            if self._state is CircuitState.OPEN and self._cool_down_passed():
                return CircuitState.HALF_OPEN
            return self._state

    def _cool_down_passed(self) -> bool:
        return time.monotonic() - self._opened_at >= self._cool_down

    def check(self) -> PersonalizeError | None:
        """None if a call may go ahead (it may be the half-open trial), else the error to fail
        fast with."""
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return None
            if self._state is CircuitState.OPEN and self._cool_down_passed():
                self._state = CircuitState.HALF_OPEN
                self._trial_running = False
            if self._state is CircuitState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return None
            return self._fast_fail_error()

    def _fast_fail_error(self) -> PersonalizeError:
        opener = self._opener
        assert opener is not None
        left = max(0.0, self._cool_down - (time.monotonic() - self._opened_at))
        return type(opener)(
            f"failing fast: the circuit breaker is open after {opener.message} "
            f"(next try in {left:.1f} s)",
            code=opener.code,
            status_code=opener.status_code,
            title=opener.title,
            description=opener.description,
            service_code=opener.service_code,
            request_id=opener.request_id,
            retry_after=left,
        )

    def after_fork(self) -> None:
        """A new lock in a forked child (the parent's may be held by a thread that is gone)."""
        self._lock = threading.Lock()
        self._trial_running = False
        self.opened = Counter()

    def inconclusive(self) -> None:
        """The call said nothing of the service (it raised something unforeseen, or was
        interrupted): a half-open trial ends, and the next call becomes the trial."""
        with self._lock:
            self._trial_running = False

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._state = CircuitState.CLOSED
            self._trial_running = False

    def failure(self, error: PersonalizeError) -> None:
        if not _counts_as_failure(error):
            self.success()  # the service answered: it is up
            return
        with self._lock:
            self._failures += 1
            trip = (
                self._state is CircuitState.HALF_OPEN
                or self._failures >= self._threshold
                or (
                    self._open_on_401
                    and isinstance(error, HTTPStatusError)
                    and error.status_code == 401
                )
            )
            if trip:
                if self._state is not CircuitState.OPEN:
                    self.opened.add()
                self._state = CircuitState.OPEN
                self._opened_at = time.monotonic()
                self._opener = error
                self._trial_running = False


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Lock()  # held by the leader until the result is in (cheaper
        self.done.acquire()  # than an Event, and most calls have no follower)
        self.result: Any = None
        self.error: PersonalizeError | None = None


class SingleFlight:
    """Identical calls in flight at the same time share one execution."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call] = {}
        self.coalesced = Counter()

    def do(self, key: Hashable, fn: Callable[[], T], deadline: Deadline) -> tuple[T, bool]:
        """Run ``fn`` or wait for the identical call already running; (result, shared)."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if leader:
            try:
                call.result = fn()
            except PersonalizeError as exc:
                call.error = exc
            except BaseException as exc:  # interrupted (Ctrl-C, exit): the followers get an
                call.error = PersonalizeError(  # error, the leader's thread the interrupt
                    f"the request they waited for was interrupted ({type(exc).__name__})"
                )
                raise
            finally:
                with self._lock:
                    del self._calls[key]
                call.done.release()
        else:
            self.coalesced.add()
            if not call.done.acquire(timeout=max(0.0, deadline.remaining())):
                raise DeadlineExceededError(
                    f"waiting for an identical request in flight did not complete within "
                    f"{deadline.describe()}"
                )
            call.done.release()  # let the next follower through
        if call.error is not None:
            raise call.error
        result: T = call.result
        return result, not leader

    def reset(self) -> None:
        """Forget calls in flight (after fork: their threads are gone in the child)."""
        self._lock = threading.Lock()
        self._calls = {}
        self.coalesced = Counter()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A bounded, thread-safe LRU of values stamped with the time they were stored."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._data: collections.OrderedDict[K, tuple[float, V]] = collections.OrderedDict()

    def get(self, key: K, max_age: float) -> tuple[bool, V | None]:
        """(found, value) for an entry stored less than ``max_age`` seconds ago."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False, None
            if self._clock() - entry[0] >= max_age:
                return False, None
            self._data.move_to_end(key)
            return True, entry[1]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = (self._clock(), value)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def reset_lock(self) -> None:
        """A new lock (after fork the parent's may be held by a thread that is gone)."""
        self._lock = threading.Lock()
