"""The event store: impressions and clicks in SQLite, de-duplicated by ``moe_event_uuid``.

One connection guarded by a lock (so one store serves every request thread); a file database
runs in WAL mode and every accepted request is one committed transaction, so nothing accepted is
lost when the server stops and starts again on the same file. A thread of its own copies the WAL
into the database (checkpoints) beside the writes, so no request waits for one. ``path=None``
keeps the events in memory for the life of the store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["SHOWN", "CLICKED", "EventStore"]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"
CLICKED = "MOE_PERSONALIZATION_MESSAGE_CLICKED"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    moe_event_uuid TEXT NOT NULL,
    action TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    event_time INTEGER,
    platform TEXT NOT NULL,
    experience_key TEXT,
    experience TEXT,
    cid TEXT,
    moe_variation_id TEXT,
    audience_id TEXT,
    audience_name TEXT,
    dp_offering_id TEXT,
    b_id TEXT,
    attributes TEXT NOT NULL,
    user_attributes TEXT,
    user_timezone_offset INTEGER,
    request_id TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""
# No secondary index: ingest speed matters more here than stats queries, which scan (a local
# server's event table stays small enough for that). Rows are never deleted, so ``seq`` (the
# rowid) grows in arrival order without AUTOINCREMENT's bookkeeping (~0.5 us per event; files
# made before keep their AUTOINCREMENT, which orders the same).

_COLUMNS = (
    "moe_event_uuid",
    "action",
    "customer_id",
    "event_time",
    "platform",
    "experience_key",
    "experience",
    "cid",
    "moe_variation_id",
    "audience_id",
    "audience_name",
    "dp_offering_id",
    "b_id",
    "attributes",
    "user_attributes",
    "user_timezone_offset",
    "request_id",
    "received_at",
)
_PLATFORMS = {"web": "web", "android": "android", "ios": "ios", "tv": "tv"}
# context keys with a column of the same name (see _context_columns)
_ATTRIBUTE_COLUMNS = (
    "experience",
    "cid",
    "moe_variation_id",
    "audience_id",
    "audience_name",
    "dp_offering_id",
    "b_id",
)
_IDLE = 0.25  # seconds without a write before the WAL is checkpointed
_UNCHECKPOINTED_MAX = 100_000  # events (~50 MB of WAL): then a checkpoint waits for the writer


class EventStore:
    """Impressions and clicks received by the server. Thread-safe; close it when done."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path or ":memory:",
            check_same_thread=False,
            timeout=10.0,
            isolation_level=None,
        )
        try:
            if self.path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                # A local test server: a commit is handed to the OS at once, so it survives the
                # server being stopped or killed; no fsync (an OS crash is not guarded against).
                self._db.execute("PRAGMA synchronous=OFF")
                self._db.execute("PRAGMA cache_size=-65536")
                # checkpoints run on the store's own thread (_checkpoints), not in a commit
                self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.executescript(_SCHEMA)
            # De-duplication by moe_event_uuid is kept in memory (loaded from the file at start):
            # a unique index over random uuids makes every commit rewrite pages all over it.
            self._seen = {row[0] for row in self._db.execute("SELECT moe_event_uuid FROM events")}
        except sqlite3.Error:
            self._db.close()
            raise
        self._closed = False
        self._uncheckpointed = 0  # events written since the last complete checkpoint
        self._last_write = 0.0
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if self.path is not None:
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="personalize-store-checkpoints", daemon=True
            )
            self._checkpointer.start()

    def __repr__(self) -> str:
        return f"<EventStore {self.path or ':memory:'}>"

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._stop.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join(10)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _checkpoints(self) -> None:
        """Copy the WAL into the database once writes pause (``_IDLE`` seconds without one),
        without blocking the writer (PASSIVE), so a burst of events never shares the machine
        with a checkpoint; if ``_UNCHECKPOINTED_MAX`` events pile up because writes never
        pause, wait for the writer once and restart the WAL (RESTART), which bounds its size."""
        assert self.path is not None
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        except sqlite3.Error:
            return  # the writer's commits still land in the WAL; the last close checkpoints
        try:
            while not self._stop.wait(_IDLE):
                pending = self._uncheckpointed
                if not pending:
                    continue
                idle = time.monotonic() - self._last_write >= _IDLE
                if not idle and pending < _UNCHECKPOINTED_MAX:
                    continue
                mode = "PASSIVE" if idle else "RESTART"
                try:
                    busy, pages, copied = db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                except sqlite3.Error:
                    continue  # busy or locked this time: the next round tries again
                if not busy and copied == pages:
                    with self._lock:
                        self._uncheckpointed -= pending
        finally:
            db.close()

    def record(
        self,
        elements: Sequence[Mapping[str, Any]],
        request_id: str,
        experience_key_for_cid: Callable[[str], str | None] = lambda _cid: None,
    ) -> tuple[int, int]:
        """Store every action of validated ``elements`` in one transaction.

        Returns ``(stored, duplicates)``: an action whose ``moe_event_uuid`` is already stored is
        skipped (a retried request stores nothing twice)."""
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        contexts: dict[Any, tuple[Any, ...]] = {}  # the columns of each distinct context
        for element in elements:
            user_attributes = element.get("user_attributes")
            tail = (
                None if user_attributes is None else _dumps(user_attributes),
                element.get("user_timezone_offset"),
                request_id,
                now,
            )
            customer_id = element["customer_id"]
            for action in element["actions"]:
                attributes: Mapping[str, Any] = action["attributes"]
                try:  # the same context comes with many events: its columns are made once
                    key: Any = tuple(attributes.items())
                    context = contexts.get(key)
                except TypeError:  # a nested (unhashable) value
                    key = context = None
                if context is None:
                    context = _context_columns(attributes, experience_key_for_cid)
                    if key is not None:
                        contexts[key] = context
                platform = action.get("platform")
                rows.append(
                    (
                        action["moe_event_uuid"],
                        action["action"],
                        customer_id,
                        action.get("event_time"),
                        _PLATFORMS.get(platform.lower(), "Unknown")
                        if isinstance(platform, str)
                        else "Unknown",
                        *context,
                        *tail,
                    )
                )
        placeholders = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
        with self._lock:
            self._check_open()
            seen = self._seen
            fresh: list[tuple[Any, ...]] = []
            batch: set[str] = set()
            for row in rows:
                if row[0] not in seen and row[0] not in batch:
                    batch.add(row[0])
                    fresh.append(row)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, fresh)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            seen |= batch
            self._uncheckpointed += len(fresh)
            self._last_write = time.monotonic()
        return len(fresh), len(rows) - len(fresh)

    def events(
        self,
        *,
        experience_key: str | None = None,
        customer_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored events in arrival order (optionally only one experience's or customer's; with
        ``limit``, the most recent ``limit``), as plain dicts."""
        where: list[str] = []
        params: list[Any] = []
        if experience_key is not None:
            where.append("experience_key = ?")
            params.append(experience_key)
        if customer_id is not None:
            where.append("customer_id = ?")
            params.append(customer_id)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM events"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql, params).fetchall()
        out: list[dict[str, Any]] = []
        for row in reversed(rows):
            event = dict(zip(_COLUMNS, row, strict=True))
            event["attributes"] = _attributes(event)
            if event["user_attributes"] is not None:
                event["user_attributes"] = json.loads(event["user_attributes"])
            out.append(event)
        return out

    def count(self) -> int:
        """How many events are stored."""
        with self._lock:
            self._check_open()
            (n,) = self._db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(n)

    def stats(self) -> list[dict[str, Any]]:
        """Impressions, clicks and CTR per experience and variation.

        Every ``..._SHOWN`` action is an impression and every ``..._CLICKED`` a click (an
        offering's events count for its experience; ``offering_impressions`` and
        ``offering_clicks`` say how many of them carried a ``dp_offering_id``). ``ctr`` is
        clicks / impressions, None without impressions."""
        sql = """
            SELECT COALESCE(experience_key, ''), COALESCE(experience, ''),
                   COALESCE(moe_variation_id, ''),
                   SUM(action = ?), SUM(action = ?),
                   SUM(action = ? AND dp_offering_id IS NOT NULL),
                   SUM(action = ? AND dp_offering_id IS NOT NULL),
                   COUNT(DISTINCT customer_id)
            FROM events
            GROUP BY 1, 2, 3
            ORDER BY 1, 2, 3
        """
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql, (SHOWN, CLICKED, SHOWN, CLICKED)).fetchall()
        out: list[dict[str, Any]] = []
        for key, name, variation, shown, clicked, off_shown, off_clicked, users in rows:
            out.append(
                {
                    "experience_key": key or None,
                    "experience": name or None,
                    "moe_variation_id": variation or None,
                    "impressions": int(shown),
                    "clicks": int(clicked),
                    "ctr": round(clicked / shown, 4) if shown else None,
                    "offering_impressions": int(off_shown),
                    "offering_clicks": int(off_clicked),
                    "users": int(users),
                }
            )
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the event store is closed")


def _context_columns(
    attributes: Mapping[str, Any], experience_key_for_cid: Callable[[str], str | None]
) -> tuple[Any, ...]:
    """experience_key .. attributes: the columns an event's context decides. The ``attributes``
    column keeps only what the other columns do not already hold as it came (a non-empty str),
    about a third of the bytes each event writes; :func:`_attributes` puts the context back."""
    cid = str(attributes.get("cid", ""))
    rest = {
        name: value
        for name, value in attributes.items()
        if name not in _ATTRIBUTE_COLUMNS or not isinstance(value, str) or not value
    }
    return (
        experience_key_for_cid(cid),
        _opt_str(attributes.get("experience")),
        cid,
        _opt_str(attributes.get("moe_variation_id")),
        _opt_str(attributes.get("audience_id")),
        _opt_str(attributes.get("audience_name")),
        _opt_str(attributes.get("dp_offering_id")),
        _opt_str(attributes.get("b_id")),
        _dumps(rest),
    )


def _attributes(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event's whole context: the columns that hold part of it, then the stored rest (a
    row written before the rest was stored apart holds the whole context there)."""
    context = {name: event[name] for name in _ATTRIBUTE_COLUMNS if event[name]}
    context.update(json.loads(event["attributes"]))
    return context


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
