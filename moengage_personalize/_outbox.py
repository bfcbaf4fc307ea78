"""The SQLite outbox of the event pipeline: wire-ready events that survive an outage or a killed
process, and the lock file that makes one live client the file's only writer."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ._event_wire import Item


class Outbox:
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

    def add(self, items: Sequence[Item]) -> int:
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

    def take(self, limit: int) -> list[Item]:
        rows = self._conn().execute(
            "SELECT id, customer_id, timezone_offset, action FROM outbox ORDER BY id LIMIT ?",
            (limit,),
        )
        return [Item(cid, tz, action, row_id) for row_id, cid, tz, action in rows]

    def remove(self, items: Sequence[Item]) -> None:
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
