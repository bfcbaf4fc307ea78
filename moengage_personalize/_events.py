"""Impressions and clicks: checked on the caller's thread, everything else on one dispatcher.

The caller validates, stamps ``event_time``, appends a small tuple to a bounded deque and returns:
no I/O, no uuid, no JSON on its thread. The dispatcher thread (``moengage-personalize-events``)
gives each event its ``moe_event_uuid`` (kept across retries), groups events per user into requests
within the service's limits (100 users, ``event_batch_size`` actions, ~512 KiB), sends them with
tenacity retries (network errors, 429, 5xx, 401: the events are kept and retried with backoff), and
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
import contextlib
import functools
import json
import logging
import os
import random
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import attrs
import tenacity

from ._config import PersonalizeConfig, User
from ._models import ExperienceCampaign, FlushReport, Offering, PersonalizeStats
from ._resilience import warn_once
from ._transport import Transport
from .exceptions import HTTPStatusError, PersonalizeError

log = logging.getLogger("moengage_personalize")

EVENTS_PATH = "/experiences/events"
ACTION_SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"
ACTION_CLICKED = "MOE_PERSONALIZATION_MESSAGE_CLICKED"
REQUIRED_CONTEXT = (
    "cid",
    "experience",
    "moe_locale_id",
    "moe_variation_id",
    "audience_name",
    "audience_id",
)
MAX_USERS_PER_REQUEST = 100
MAX_BYTES_PER_REQUEST = 512 * 1024
ATTEMPT_TIMEOUT = 10.0  # seconds per send attempt (shorter when a close deadline is nearer)
INITIAL_BACKOFF = 0.25
MAX_IN_FLIGHT = 2  # requests whose first attempt runs on the worker pool at the same time
_REJECTED = frozenset({400, 413, 422})  # the service refuses the content: split, never resend as is
_WRITER_BATCH_DELAY = 0.002  # the outbox writer gathers this long before a commit

DROP_QUEUE_FULL = "queue_full"
DROP_CLOSED = "closed"
DROP_DISABLED = "disabled"
DROP_STORE_FULL = "store_full"
DROP_UNDELIVERED = "undelivered"  # still not accepted when close() gave up


class EventRecord(NamedTuple):
    """An event as the caller's thread records it (cheap: no uuid, no JSON yet)."""

    action: str
    context: Mapping[str, Any]
    under: Mapping[str, Any] | None  # merged below the context (offering attribution)
    over: Mapping[str, Any] | None  # merged above the context (b_id)
    customer_id: str
    timezone_offset: int | None
    event_time: int


class _Item(NamedTuple):
    """An event ready for the wire: its user and the action's JSON (uuid fixed)."""

    customer_id: str
    timezone_offset: int | None
    action_json: str
    row_id: int | None = None  # in the outbox


def check_context(context: object, where: str) -> Mapping[str, Any]:
    """The campaign attribution to send back, or a ValueError naming what is missing."""
    if not isinstance(context, Mapping):
        raise TypeError(f"{where} has no usable experience_context (got {type(context).__name__})")
    missing = [k for k in REQUIRED_CONTEXT if not isinstance(context.get(k), str)]
    if missing:
        raise ValueError(
            f"{where}.experience_context lacks {', '.join(missing)} (required to attribute events)"
        )
    return context


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant nibble


def _uuid4s(count: int) -> list[str]:
    """``count`` random (version 4) UUID strings from one ``os.urandom`` call: the version and
    variant nibbles are set in the hex text (122 random bits each, as ``uuid.uuid4``)."""
    h = os.urandom(16 * count).hex()
    return [
        f"{h[o : o + 8]}-{h[o + 8 : o + 12]}-4{h[o + 13 : o + 16]}-"
        f"{_VARIANT[h[o + 16]]}{h[o + 17 : o + 20]}-{h[o + 20 : o + 32]}"
        for o in range(0, 32 * count, 32)
    ]


def _to_items(records: Sequence[EventRecord], platform: str) -> tuple[list[_Item], int]:
    """Wire-ready events: each gets its ``moe_event_uuid`` here, once, kept across retries.

    The action JSON is assembled from pre-encoded parts; a campaign context shared by many
    events is encoded once per batch.
    """
    platform_json = _encode(platform)
    unencodable = 0
    encoded: dict[int, str] = {}  # id(context) -> JSON, for contexts alive during this call
    items = []
    for record, event_uuid in zip(records, _uuid4s(len(records)), strict=True):
        try:
            if record.under is None and record.over is None:
                attributes = encoded.get(id(record.context))
                if attributes is None:
                    attributes = encoded[id(record.context)] = _encode(record.context)
            else:
                merged = {**(record.under or {}), **record.context, **(record.over or {})}
                attributes = _encode(merged)
        except (TypeError, ValueError) as exc:  # changed after the call checked it
            log.error("moengage-personalize: an event could not be encoded (%s); dropped", exc)
            unencodable += 1
            continue
        items.append(
            _Item(
                record.customer_id,
                record.timezone_offset,
                f'{{"action":"{record.action}","moe_event_uuid":"{event_uuid}",'
                f'"event_time":{record.event_time},"platform":{platform_json},'
                f'"attributes":{attributes}}}',
            )
        )
    return items, unencodable


def _body(items: Sequence[_Item]) -> bytes:
    """The events request body: one element per user, its actions batched under it."""
    groups: dict[tuple[str, int | None], list[str]] = {}
    for item in items:
        groups.setdefault((item.customer_id, item.timezone_offset), []).append(item.action_json)
    elements = []
    for (customer_id, offset), actions in groups.items():
        head = '{"customer_id":' + json.dumps(customer_id, ensure_ascii=False)
        if offset is not None:
            head += ',"user_timezone_offset":' + str(offset)
        elements.append(head + ',"actions":[' + ",".join(actions) + "]}")
    return ('{"elements":[' + ",".join(elements) + "]}").encode()


def _fits(items: Iterable[_Item], limit_actions: int) -> list[_Item]:
    """The longest prefix of ``items`` within the per-request limits."""
    out: list[_Item] = []
    users: set[tuple[str, int | None]] = set()
    size = 20
    for item in items:
        key = (item.customer_id, item.timezone_offset)
        extra = (
            len(item.action_json.encode()) + 1 + (0 if key in users else 80 + len(item.customer_id))
        )
        if out and (
            len(out) >= limit_actions
            or size + extra > MAX_BYTES_PER_REQUEST
            or (key not in users and len(users) >= MAX_USERS_PER_REQUEST)
        ):
            break
        out.append(item)
        users.add(key)
        size += extra
    return out


class _Outbox:
    """The SQLite outbox: a table of wire-ready events, and a lock file held by the live client."""

    def __init__(self, path: str | os.PathLike[str], max_events: int) -> None:
        self.path = os.fspath(path)
        self.max_events = max_events
        self._lock_file = _acquire_lock(self.path + ".lock")
        try:
            conn = self._connect()
            with conn:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " customer_id TEXT NOT NULL, timezone_offset INTEGER, action TEXT NOT NULL)"
                )
            self.count = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            conn.close()
        except sqlite3.Error as exc:
            self.release()
            raise ValueError(f"event_store {self.path!r} cannot be used: {exc}") from exc
        self._count_lock = threading.Lock()
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.isolation_level = "DEFERRED"
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def add(self, items: Sequence[_Item]) -> int:
        """Store as many of ``items`` as the size limit allows; returns how many were stored."""
        with self._count_lock:
            room = max(0, self.max_events - self.count)
        items = items[:room]
        if items:
            conn = self._conn()
            with conn:
                conn.executemany(
                    "INSERT INTO outbox (customer_id, timezone_offset, action) VALUES (?, ?, ?)",
                    [(i.customer_id, i.timezone_offset, i.action_json) for i in items],
                )
            with self._count_lock:
                self.count += len(items)
        return len(items)

    def take(self, limit: int) -> list[_Item]:
        rows = self._conn().execute(
            "SELECT id, customer_id, timezone_offset, action FROM outbox ORDER BY id LIMIT ?",
            (limit,),
        )
        return [_Item(cid, tz, action, row_id) for row_id, cid, tz, action in rows]

    def remove(self, items: Sequence[_Item]) -> None:
        conn = self._conn()
        with conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i.row_id,) for i in items])
        with self._count_lock:
            self.count -= len(items)

    def close_thread_connection(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def release(self) -> None:
        if self._lock_file is not None:
            _release_lock(self._lock_file)
            self._lock_file = None


def _acquire_lock(path: str) -> Any:
    """Hold an exclusive lock on ``path`` for the client's life (released when the file closes,
    also when the process dies)."""
    handle = open(path, "a+")  # noqa: SIM115 - held for the client's life
    try:
        if sys.platform == "win32":  # pragma: no cover
            import msvcrt  # noqa: PLC0415

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl  # noqa: PLC0415

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise ValueError(
            f"event_store {path.removesuffix('.lock')!r} is in use by another live client "
            "(one client per outbox file)"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _release_lock(handle: Any) -> None:
    with contextlib.suppress(OSError):
        handle.close()  # closing the descriptor releases the lock


class EventPipeline:
    """The bounded queue, the dispatcher (and, with an outbox, the writer) and their counters."""

    def __init__(
        self,
        transport: Transport,
        config: PersonalizeConfig,
        offload: Callable[[Callable[[], None]], Future[None] | None] | None = None,
    ) -> None:
        self._transport = transport
        self._config = config
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
        self._carry: list[_Item] = []  # taken and given a uuid, waiting for the next request
        self._outbox: _Outbox | None = None
        if config.event_store is not None:
            self._outbox = _Outbox(config.event_store, config.event_store_max_events)
            self._taken = self._outbox.count  # left by an earlier process: resent first
            if self._outbox.count:
                log.info("resending %d events left in %s", self._outbox.count, self._outbox.path)
            self._start()
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_resendable),
            wait=self._backoff,
            stop=self._should_give_up,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    def after_fork(self) -> EventPipeline:
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
        return EventPipeline(self._transport, config, self._offload)

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
                    items, unencodable = _to_items(records, self._platform)
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

    def _next_batch(self) -> list[_Item]:
        """One request's worth of events (limits: ``event_batch_size`` actions, 100 users,
        ~512 KiB); what does not fit waits, uuid already given, for the next request."""
        if self._outbox is not None:
            return _fits(self._outbox.take(self._batch), self._batch)
        items, self._carry = self._carry, []
        if len(items) < self._batch:
            more, unencodable = _to_items(
                self._take_records(self._batch - len(items)), self._platform
            )
            if unencodable:
                self._settle(failed=unencodable)
            items.extend(more)
        batch = _fits(items, self._batch)
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

    def _send_all(self) -> None:
        """Send what is waiting. The first attempt of up to ``MAX_IN_FLIGHT`` requests runs on
        the client's worker pool while this thread builds the next request; failures are
        retried here (with back-off), oldest first."""
        inflight: collections.deque[tuple[Future[None], list[_Item]]] = collections.deque()
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

    def _finish(self, future: Future[None], items: list[_Item]) -> bool:
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

    def _deliver(self, items: Sequence[_Item], first: PersonalizeError | None = None) -> bool:
        """Send ``items`` (``first``: how an attempt made elsewhere failed); split on rejection.
        False when it gave up because the client closes."""
        try:
            if first is None:
                self._retrying(self._send, items)
            else:
                self._retrying(self._replay_then_send, items, [first])
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

    def _replay_then_send(self, items: Sequence[_Item], first: list[PersonalizeError]) -> None:
        if first:
            raise first.pop()  # tenacity sees the failed first attempt as its own
        self._send(items)

    def _send(self, items: Sequence[_Item]) -> None:
        timeout = ATTEMPT_TIMEOUT
        if self._give_up_at is not None:
            timeout = max(0.05, min(timeout, self._give_up_at - time.monotonic()))
        self._transport.send_once(
            "POST",
            EVENTS_PATH,
            _body(items),
            time.monotonic() + timeout,
            what="sending events",
            budget=timeout,
        )

    def _acknowledge(self, items: Sequence[_Item], *, failed: bool) -> None:
        if self._outbox is not None:
            try:
                self._outbox.remove(items)
            except sqlite3.Error as exc:  # they will be sent again; the service de-duplicates
                log.error("moengage-personalize: updating the event store failed: %s", exc)
        if failed:
            self._settle(failed=len(items))
        else:
            self._settle(sent=len(items))

    def _give_up(self, items: Sequence[_Item], exc: PersonalizeError) -> bool:
        """The client is closing and its deadline passed: stop (the outbox keeps the events)."""
        log.info("moengage-personalize: giving up sending %d events: %s", len(items), exc.message)
        if self._outbox is None:
            self._settle(dropped=len(items), cause=DROP_UNDELIVERED)
        return False

    # retry policy (tenacity) -----------------------------------------------------------------

    def _backoff(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        cap = self._config.event_retry_max_backoff
        if isinstance(exc, HTTPStatusError) and exc.retry_after is not None:
            return min(exc.retry_after, cap)  # a huge Retry-After must not stall delivery
        backoff = min(cap, INITIAL_BACKOFF * 2 ** min(state.attempt_number - 1, 30))
        return random.uniform(backoff / 2, backoff)  # noqa: S311

    def _should_give_up(self, state: tenacity.RetryCallState) -> bool:
        give_up_at = self._give_up_at
        if give_up_at is None:
            return False
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= give_up_at

    def _sleep(self, seconds: float) -> None:
        if self._config.sleep is not time.sleep:  # injected (tests): never really wait
            self._config.sleep(seconds)
            return
        self._interrupt.wait(seconds)
        if not self._stopping:
            self._interrupt.clear()  # woken by a flush: one attempt now, then back-off again

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        items: Sequence[_Item] = state.args[0]
        with self._progress:
            self._retried += len(items)
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "moengage-personalize: sending %d events failed (%s); retrying in %.2f s",
            len(items),
            exc,
            state.upcoming_sleep,
        )


def _resendable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPStatusError):
        return exc.status_code not in _REJECTED
    return isinstance(exc, PersonalizeError)


# building records from the public calls ---------------------------------------------------------


def campaign_context(campaign: object, name: str) -> tuple[Mapping[str, Any], User | None]:
    """The attribution and fetch-time user of ``campaign`` (an ExperienceCampaign, or a mapping
    with ``experience_context`` re-read from the app's own cache)."""
    if isinstance(campaign, ExperienceCampaign):
        return check_context(campaign.experience_context, name), campaign.user
    if isinstance(campaign, Mapping) and "experience_context" in campaign:
        context = check_context(campaign["experience_context"], name)
        if not all(type(k) is str for k in context):  # JSON-decoded contexts always pass
            raise TypeError(f"{name}.experience_context keys must all be str")
        return context, None
    raise TypeError(
        f"{name} must be an ExperienceCampaign from this SDK (or a mapping with its "
        f"experience_context), not {type(campaign).__name__}"
    )


def resolve_user(fetched: User | None, override: User | None, name: str) -> tuple[str, int | None]:
    """The customer id and timezone offset to send: ``user=`` wins over the fetch's user."""
    user = override if override is not None else fetched
    if user is None or user.customer_id is None:
        raise ValueError(
            f"{name} was fetched without a customer id; pass user= with one (for an anonymous "
            "visitor, a session identifier): the events API needs a customer_id"
        )
    offset = user.timezone_offset
    if offset is None and fetched is not None and fetched.customer_id == user.customer_id:
        offset = fetched.timezone_offset
    return user.customer_id, offset


def offering_attribution(
    offering: object, campaign: object | None, name: str
) -> tuple[Mapping[str, Any], object]:
    """An offering's attribution (``dp_offering_id`` + ``offering_context``) and its campaign."""
    if not isinstance(offering, Mapping):
        raise TypeError(
            f"{name} must be an offering dict as returned, not {type(offering).__name__}"
        )
    offering_id = offering.get("dp_offering_id")
    context = offering.get("offering_context")
    if offering_id is None or (isinstance(offering_id, str) and not offering_id):
        raise ValueError(f"{name} has no dp_offering_id: it cannot be attributed")
    if not isinstance(context, Mapping):
        raise ValueError(f"{name} has no offering_context object: it cannot be attributed")
    if campaign is None:
        campaign = offering.campaign if isinstance(offering, Offering) else None
        if campaign is None:
            raise ValueError(
                f"{name} is a plain dict: pass campaign= (the campaign whose payload carried it)"
            )
    return {**context, "dp_offering_id": offering_id}, campaign
