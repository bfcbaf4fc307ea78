"""Sending events: the dispatcher's half of the pipeline that talks to the service.

Up to ``MAX_IN_FLIGHT`` requests have their first attempt on the client's worker pool while the
dispatcher builds the next one; every failure is retried on the dispatcher with the events'
``RetryPolicy`` (``_retry``), a batch the service rejects is split until the bad events are
isolated, and each attempt is bounded as a whole by a Deadline the client's watchdog enforces.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._config import PersonalizeConfig
from ._deadline import Deadline
from ._event_wire import Item, body
from ._http import Transport
from .exceptions import HTTPStatusError, PersonalizeError

if TYPE_CHECKING:
    from ._outbox import Outbox

log = logging.getLogger("moengage_personalize")

EVENTS_PATH = "/experiences/events"
ATTEMPT_TIMEOUT = 10.0  # seconds per send attempt (shorter when a close deadline is nearer)
MAX_IN_FLIGHT = 2  # requests whose first attempt runs on the worker pool at the same time
_REJECTED = frozenset({400, 413, 422})  # the service refuses the content: split, never resend as is
DROP_UNDELIVERED = "undelivered"  # still not accepted when close() gave up


class Delivery:
    """Mixed into :class:`~moengage_personalize._events.EventPipeline`, whose state it uses."""

    _config: PersonalizeConfig
    _transport: Transport
    _watch: Callable[[Deadline], bool]
    _offload: Callable[[Callable[[], None]], Future[None] | None] | None
    _outbox: Outbox | None
    _healthy: bool
    _give_up_at: float | None
    _interrupt: threading.Event
    _progress: threading.Condition
    _retried: int
    _stopping: bool

    def _next_batch(self) -> list[Item]:
        raise NotImplementedError

    def _give_up_passed(self) -> bool:
        raise NotImplementedError

    def _settle(self, *, sent: int = 0, failed: int = 0, dropped: int = 0, cause: str = "") -> None:
        raise NotImplementedError

    def _send_all(self) -> None:
        """Send what is waiting. The first attempt of up to ``MAX_IN_FLIGHT`` requests runs on
        the client's worker pool while this thread builds the next request; failures are
        retried here (with back-off), oldest first."""
        inflight: collections.deque[tuple[Future[None], list[Item]]] = collections.deque()
        # With an outbox the store is the queue: the next batch is read from it, so a request
        # still in flight (not yet deleted) would be read again; send one at a time then.
        offload = self._offload if self._outbox is None else None
        try:
            while not self._give_up_passed():
                if not self._healthy:  # while sends fail, keep them off the fetch workers
                    offload = None
                batch = self._next_batch()
                must_wait = len(inflight) >= MAX_IN_FLIGHT or (inflight and not batch)
                if must_wait and not self._finish(*inflight.popleft()):
                    break  # gave up: the client is closing
                if not batch:
                    if inflight:
                        continue
                    break
                future = offload(functools.partial(self._send, batch)) if offload else None
                if future is not None:
                    inflight.append((future, batch))
                elif not self._deliver(batch):
                    break
        finally:
            while inflight:
                self._finish(*inflight.popleft())

    def _finish(self, future: Future[None], items: list[Item]) -> bool:
        """Settle a request whose first attempt ran on the worker pool (retrying it here)."""
        try:
            future.result(timeout=ATTEMPT_TIMEOUT + 5)
        except PersonalizeError as exc:
            self._healthy = False
            return self._deliver(items, exc)
        except Exception as exc:  # the pool failed to run it, or it never finished
            self._healthy = False
            error = PersonalizeError(f"sending events did not complete: {exc!r}")
            return self._deliver(items, error)
        self._acknowledge(items, failed=False)
        return True

    def _deliver(self, items: Sequence[Item], first: PersonalizeError | None = None) -> bool:
        """Send ``items`` (``first``: how an attempt made elsewhere failed); split on rejection.
        False when it gave up because the client closes."""
        try:
            if first is None:
                try:
                    self._send(items)
                except PersonalizeError as exc:
                    first = exc
            if first is not None:
                self._retry(first, items)
        except HTTPStatusError as exc:
            if exc.status_code not in _REJECTED:
                return self._give_up(items, exc)
            if len(items) == 1:
                log.warning(
                    "moengage-personalize: the service rejected an event (%s); dropped: %s",
                    exc.message,
                    items[0].action_json[:500],
                )
                self._acknowledge(items, failed=True)
                return True
            half = len(items) // 2
            if not self._deliver(items[:half]):
                return self._give_up(items[half:], exc)
            return self._deliver(items[half:])
        except PersonalizeError as exc:
            return self._give_up(items, exc)
        self._healthy = True  # delivered: the worker pool may carry sends again
        self._acknowledge(items, failed=False)
        return True

    def _retry(self, first: PersonalizeError, items: Sequence[Item]) -> None:
        """Retry a failed send with the events' RetryPolicy (tenacity, loaded on the first
        failure) until delivered, rejected, or given up because the client closes."""
        from . import _retry

        if not _resendable(first):
            raise first
        retrying = _retry.events_retrying(
            self._config.event_retry,
            self._sleep,
            _resendable,
            self._should_give_up,
            self._before_sleep,
        )
        retrying(_retry.replaying(first, self._send), items)

    def _send(self, items: Sequence[Item]) -> None:
        timeout = ATTEMPT_TIMEOUT
        if self._give_up_at is not None:
            timeout = max(0.05, min(timeout, self._give_up_at - time.monotonic()))
        deadline = Deadline(timeout, "attempt timeout")
        self._watch(deadline)
        try:
            self._transport.send_once(
                "POST", EVENTS_PATH, body(items), deadline, what="sending events"
            )
        finally:
            deadline.done = True

    def _acknowledge(self, items: Sequence[Item], *, failed: bool) -> None:
        if self._outbox is not None:
            try:
                self._outbox.remove(items)
            except Exception as exc:  # sqlite3.Error: sent again; the service de-duplicates
                log.error("moengage-personalize: updating the event store failed: %s", exc)
        if failed:
            self._settle(failed=len(items))
        else:
            self._settle(sent=len(items))

    def _give_up(self, items: Sequence[Item], exc: PersonalizeError) -> bool:
        """The client is closing and its deadline passed: stop (the outbox keeps the events)."""
        log.info("moengage-personalize: giving up sending %d events: %s", len(items), exc.message)
        if self._outbox is None:
            self._settle(dropped=len(items), cause=DROP_UNDELIVERED)
        return False

    # retries (_retry) -----------------------------------------------------------------------

    def _should_give_up(self, wait: float) -> bool:
        give_up_at = self._give_up_at
        return give_up_at is not None and time.monotonic() + wait >= give_up_at

    def _sleep(self, seconds: float) -> None:
        if self._config.sleep is not time.sleep:  # injected (tests): never really wait
            self._config.sleep(seconds)
            return
        self._interrupt.wait(seconds)
        if not self._stopping:
            self._interrupt.clear()  # woken by a flush: one attempt now, then back-off again

    def _before_sleep(self, args: Any, wait: float, error: BaseException | None) -> None:
        items: Sequence[Item] = args[0]
        with self._progress:
            self._retried += len(items)
        log.info(
            "moengage-personalize: sending %d events failed (%s); retrying in %.2f s",
            len(items),
            error,
            wait,
        )


def _resendable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.status_code not in _REJECTED
    return isinstance(exc, PersonalizeError)
