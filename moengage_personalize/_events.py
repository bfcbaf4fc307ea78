"""Impressions and clicks: checked on the caller's thread, everything else on one dispatcher.

The caller validates, stamps ``event_time``, appends a small tuple to a bounded deque and returns:
no I/O, no uuid, no JSON on its thread. The dispatcher thread (``moengage-personalize-events``)
gives each event its ``moe_event_uuid`` (kept across retries), groups events per user into requests
within the service's limits (100 users, ``event_batch_size`` actions, ~512 KiB), sends them with
retries (``config.event_retry``: network errors, 429, 5xx, 401: the events are kept and retried with
back-off), and
splits a batch the service rejects (400) until the bad events are isolated; only those are dropped.
While sends succeed, the first attempt of up to ``MAX_IN_FLIGHT`` requests runs on the client's
worker pool so that the dispatcher builds the next request meanwhile; every failure, retry and
back-off stays on the dispatcher.

With ``config.event_store`` a writer thread (``moengage-personalize-outbox``) moves queued events
into SQLite within milliseconds; the dispatcher sends from there and deletes what the service
accepted, so events survive an outage of any length and a killed process (resent, same uuids, by
the next client on the file). One live client per file: a lock file next to it.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

import attrs

from ._config import PersonalizeConfig
from ._deadline import Deadline
from ._event_sender import DROP_UNDELIVERED, Delivery
from ._event_wire import (
    ACTION_CLICKED,
    ACTION_SHOWN,
    EventRecord,
    Item,
    campaign_context,
    fits,
    offering_attribution,
    resolve_user,
    to_items,
)
from ._http import Transport
from ._models import FlushReport, PersonalizeStats
from ._resilience import warn_once

if TYPE_CHECKING:
    from ._outbox import Outbox

log = logging.getLogger("moengage_personalize")

_WRITER_BATCH_DELAY = 0.002  # the outbox writer gathers this long before a commit

DROP_QUEUE_FULL = "queue_full"
DROP_CLOSED = "closed"
DROP_DISABLED = "disabled"
DROP_STORE_FULL = "store_full"


class EventPipeline(Delivery):
    """The bounded queue, the dispatcher (and, with an outbox, the writer) and their counters."""

    def __init__(
        self,
        transport: Transport,
        config: PersonalizeConfig,
        watch: Callable[[Deadline], bool],
        offload: Callable[[Callable[[], None]], Future[None] | None] | None = None,
    ) -> None:
        self._transport = transport
        self._config = config
        self._watch = watch  # the client's watchdog: each attempt is bounded as a whole
        # Runs one request's first attempt on the client's worker pool while the dispatcher
        # builds the next one (None, or a None result: send on the dispatcher itself). Only
        # while sends succeed: in an outage they stay on the dispatcher, off the fetch workers.
        self._offload = offload
        self._healthy = True
        self._platform = config.platform
        self._maxsize = config.event_queue_size
        self._batch = config.event_batch_size
        self._queue: collections.deque[EventRecord] = collections.deque()
        self._wake = threading.Event()  # dispatcher: work is waiting or a flush/close asks
        self._write = threading.Event()  # outbox writer: the queue has events
        self._interrupt = threading.Event()  # cuts a retry backoff short (close)
        self._progress = threading.Condition()
        self._lock = threading.Lock()
        self._taken = 0  # events moved out of the queue by the dispatcher or the writer
        self._settled = 0  # events delivered, rejected or given up
        self._sent = 0
        self._failed = 0
        self._retried = 0
        self._dropped: dict[str, int] = {}
        self._warned: set[str] = set()
        self._dropping = False
        self._stopping = False
        self._give_up_at: float | None = None
        self._threads: list[threading.Thread] = []
        self._live_threads = 0
        self._started = False
        self._carry: list[Item] = []  # taken and given a uuid, waiting for the next request
        self._outbox: Outbox | None = None
        if config.event_store is not None:
            from ._outbox import Outbox  # sqlite3 loads only for a client with an outbox

            self._outbox = Outbox(config.event_store, config.event_store_max_events)
            self._taken = self._outbox.count  # left by an earlier process: resent first
            if self._outbox.count:
                log.info("resending %d events left in %s", self._outbox.count, self._outbox.path)
            self._start()

    def after_fork(self, watch: Callable[[Deadline], bool]) -> EventPipeline:
        """The pipeline for a forked child: a new, empty queue (the parent's queued events are
        the parent's to send, never sent twice) and memory only (the outbox file belongs to the
        parent, which holds its lock)."""
        config = self._config
        if self._outbox is not None:
            self._outbox.release()  # closes the child's copy of the lock file; the parent's
            self._outbox = None  # descriptor keeps the lock
        if config.event_store is not None:
            warn_once(
                "fork-outbox",
                "moengage-personalize: forked child: the event outbox "
                f"{os.fspath(config.event_store)!r} stays the parent's; the child keeps its "
                "events in memory",
            )
            config = attrs.evolve(config, event_store=None)
        return EventPipeline(self._transport, config, watch, self._offload)

    # caller side -----------------------------------------------------------------------------

    def put(self, record: EventRecord) -> None:
        """Queue one event (never blocks; a full queue drops it, counted and warned once).

        ``event_queue_size`` bounds the events held in memory: those queued plus those taken
        into requests not settled yet (while the service is down, up to three batches), so
        memory stays within it through an outage of any length. With an outbox the events
        taken are on disk, under the store's own limit."""
        queue = self._queue
        held = len(queue)
        if self._outbox is None:
            held += self._taken - self._settled
        if held >= self._maxsize:
            self.drop(DROP_QUEUE_FULL)
            return
        queue.append(record)
        if not self._started:
            self._start()
        if self._outbox is not None:
            if not self._write.is_set():
                self._write.set()
        elif len(queue) >= self._batch and not self._wake.is_set():
            self._wake.set()

    def drop(self, cause: str, count: int = 1) -> None:
        """Count dropped events; warn once per burst (queue full) or once per cause (others)."""
        with self._lock:
            self._dropped[cause] = self._dropped.get(cause, 0) + count
            if cause == DROP_QUEUE_FULL:
                warn = not self._dropping
                self._dropping = True
            else:
                warn = cause not in self._warned
                self._warned.add(cause)
        if warn:
            reasons = {
                DROP_QUEUE_FULL: f"the event queue is full ({self._maxsize} events, "
                "config.event_queue_size); new events are dropped until it drains",
                DROP_CLOSED: "the client is closed; tracking calls are dropped",
                DROP_STORE_FULL: "the event store is full (config.event_store_max_events); "
                "new events are dropped",
            }
            if cause in reasons:
                log.warning("moengage-personalize: %s", reasons[cause])

    # lifecycle -------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        targets: list[tuple[str, Callable[[], None]]] = [
            ("moengage-personalize-events", self._dispatch)
        ]
        if self._outbox is not None:
            targets.append(("moengage-personalize-outbox", self._write_outbox))
        self._live_threads = len(targets)
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def flush(self, timeout: float) -> FlushReport:
        """Wait until every event queued so far is delivered or given up, or ``timeout`` passes."""
        with self._progress:
            target = len(self._queue) + self._taken
        self._write.set()
        self._wake.set()
        self._interrupt.set()  # a flush asks for delivery now: cut a retry back-off short
        end = time.monotonic() + timeout
        with self._progress:
            while self._settled < target and self._threads_alive():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._progress.wait(left)
            completed = self._settled >= target
        return self.report(completed)

    def close(self, timeout: float) -> FlushReport:
        """Flush for up to ``timeout``, then stop the threads; what is left is dropped (or, with
        an outbox, stays in it for the next client)."""
        end = time.monotonic() + timeout
        self._give_up_at = end
        self._interrupt.set()
        self.flush(timeout)
        self._stopping = True
        self._interrupt.set()
        self._wake.set()
        self._write.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, end - time.monotonic()))  # a send in flight ends by itself
        if self._outbox is None:
            left = len(self._queue)
            self._queue.clear()
            carried, self._carry = len(self._carry), []
            with self._progress:
                self._taken += left
            if left + carried:
                self._settle(dropped=left + carried, cause=DROP_UNDELIVERED)
        else:
            self._release_outbox_when_idle()
        report = self.report(self.pending() == 0)
        with self._lock:
            undelivered = self._dropped.get(DROP_UNDELIVERED, 0)
        if self._outbox is not None and report.pending:
            log.warning(
                "moengage-personalize: closed with %d events not delivered "
                "(kept in the event store for the next client)",
                report.pending,
            )
        elif undelivered or report.pending:
            # pending: a request still in flight past the deadline; it ends by itself (its
            # events are counted then, dropped unless that last attempt is accepted)
            log.warning(
                "moengage-personalize: closed with %d events not delivered (dropped)",
                undelivered + report.pending,
            )
        return report

    def _release_outbox_when_idle(self) -> None:
        """Release the outbox lock once no thread of this pipeline uses the file any more."""
        with self._lock:
            if self._outbox is not None and self._stopping and self._live_threads == 0:
                self._outbox.release()

    def _thread_done(self) -> None:
        with self._lock:
            self._live_threads -= 1
        self._release_outbox_when_idle()

    def abandon(self) -> None:
        """Stop at once without waiting (the client was garbage-collected unclosed): the threads
        end by themselves and the outbox lock is released when they have."""
        self._give_up_at = time.monotonic()
        self._stopping = True
        self._interrupt.set()
        self._wake.set()
        self._write.set()
        if not self._started:
            self._release_outbox_when_idle()

    def _threads_alive(self) -> bool:
        return not self._started or any(t.is_alive() for t in self._threads)

    # counters --------------------------------------------------------------------------------

    def pending(self) -> int:
        with self._progress:
            return len(self._queue) + self._taken - self._settled

    def report(self, completed: bool) -> FlushReport:
        with self._progress:
            return FlushReport(
                sent=self._sent,
                dropped=sum(self._dropped.values()),
                failed=self._failed,
                pending=len(self._queue) + self._taken - self._settled,
                completed=completed,
            )

    def stats(self) -> PersonalizeStats:
        with self._progress, self._lock:
            return PersonalizeStats(
                events_queued=self._taken + len(self._queue),
                events_sent=self._sent,
                events_retried=self._retried,
                events_failed=self._failed,
                events_pending=len(self._queue) + self._taken - self._settled,
                events_dropped=dict(self._dropped),
            )

    def _settle(
        self, *, sent: int = 0, failed: int = 0, dropped: int = 0, cause: str = DROP_CLOSED
    ) -> None:
        if dropped:
            self.drop(cause, dropped)
        with self._progress:
            self._sent += sent
            self._failed += failed
            self._settled += sent + failed + dropped
            self._progress.notify_all()

    # threads ---------------------------------------------------------------------------------

    def _take_records(self, limit: int) -> list[EventRecord]:
        records: list[EventRecord] = []
        queue = self._queue
        with self._progress:  # popped and counted together: flush() and pending() read both
            while queue and len(records) < limit:
                records.append(queue.popleft())
            self._taken += len(records)
        if records and self._dropping and len(queue) < self._maxsize // 2:
            self._dropping = False
        return records

    def _write_outbox(self) -> None:
        """Writer thread: queue -> SQLite, in small transactions, within milliseconds."""
        assert self._outbox is not None
        outbox = self._outbox
        try:
            while True:
                self._write.wait()
                if self._stopping and not self._queue:
                    return
                time.sleep(_WRITER_BATCH_DELAY)
                self._write.clear()
                while self._queue:
                    records = self._take_records(1000)
                    items, unencodable = to_items(records, self._platform)
                    if unencodable:
                        self._settle(failed=unencodable)
                    try:
                        stored = outbox.add(items)
                    except Exception as exc:  # sqlite3.Error, or a bug: never end the thread
                        log.error("moengage-personalize: writing the event store failed: %s", exc)
                        stored = 0
                    if stored < len(items):
                        self._settle(dropped=len(items) - stored, cause=DROP_STORE_FULL)
                    self._wake.set()
                if self._stopping:
                    return
        finally:
            outbox.close_thread_connection()
            self._thread_done()

    def _next_batch(self) -> list[Item]:
        """One request's worth of events (limits: ``event_batch_size`` actions, 100 users,
        ~512 KiB); what does not fit waits, uuid already given, for the next request."""
        if self._outbox is not None:
            return fits(self._outbox.take(self._batch), self._batch)
        items, self._carry = self._carry, []
        if len(items) < self._batch:
            more, unencodable = to_items(
                self._take_records(self._batch - len(items)), self._platform
            )
            if unencodable:
                self._settle(failed=unencodable)
            items.extend(more)
        batch = fits(items, self._batch)
        self._carry = items[len(batch) :]
        return batch

    def _dispatch(self) -> None:
        """Dispatcher thread: every flush interval (or when woken), send all that is waiting."""
        interval = self._config.event_flush_interval
        try:
            while True:
                self._wake.wait(interval)
                self._wake.clear()
                try:
                    self._send_all()
                except Exception:  # a bug must not end delivery for the client's life
                    log.exception("moengage-personalize: the event dispatcher failed; continuing")
                if self._stopping and (
                    self._outbox is None or not self._queue or self._give_up_passed()
                ):
                    return
        finally:
            if self._outbox is not None:
                self._outbox.close_thread_connection()
            self._thread_done()

    def _give_up_passed(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at


__all__ = [
    "ACTION_CLICKED",
    "ACTION_SHOWN",
    "EventPipeline",
    "EventRecord",
    "campaign_context",
    "offering_attribution",
    "resolve_user",
]
