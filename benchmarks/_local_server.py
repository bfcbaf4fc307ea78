"""Helpers shared by ``bench_events.py`` and ``bench_threads.py`` (not a benchmark itself).

* :class:`LocalServer` -- the project's own local Personalize server, started exactly as a user
  starts it (``python -m moengage_personalize serve --host 127.0.0.1 --port 0 --db FILE --json``)
  in a subprocess, on an ephemeral loopback port, with a temporary SQLite file for the events.
  It is stopped (SIGINT, so it closes its store cleanly; then SIGTERM/SIGKILL) when the
  benchmark ends, also on errors; on Linux the child also gets SIGTERM if this process dies.
* :func:`closed_port` -- a loopback port nothing listens on (connection refused at once).
* process figures from ``/proc``: CPU seconds of a process or of one thread, ``VmRSS``/``VmHWM``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import first_line

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalServer:
    """``python -m moengage_personalize serve`` in a subprocess; a context manager."""

    def __init__(self, start_timeout: float = 15.0) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="bench-personalize-")
        self.db = str(Path(self.tmpdir) / "events.sqlite3")
        self.stderr_path = Path(self.tmpdir) / "server.stderr"
        self._stderr = self.stderr_path.open("wb")
        cmd = [
            sys.executable,
            "-u",
            "-m",
            "moengage_personalize",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            self.db,
            "--json",
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        try:
            info = self._read_info(start_timeout)
            self.base_url: str = info["base_url"]
            self.workspace_id: str = info["workspace_id"]
            self.api_key: str = info["api_key"]
            self.root = self.base_url.removesuffix("/v1")
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _read_info(self, timeout: float) -> dict[str, Any]:
        line = first_line(self.proc, timeout, "the local server")
        try:
            info = json.loads(line)
        except ValueError:
            raise RuntimeError(
                f"the local server did not start (it printed {line!r}; stderr: {self.stderr()!r})"
            ) from None
        if not isinstance(info, dict) or "base_url" not in info:
            raise RuntimeError(f"unexpected serve --json line {line!r}")
        return info

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except OSError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.root}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def health(self) -> dict[str, Any]:
        """``GET /_local/health``: ``events`` is the number of stored (unique uuid) events."""
        answer: dict[str, Any] = self._get("/_local/health")
        return answer

    def stored_events(self) -> int:
        return int(self.health()["events"])

    def db_counts(self) -> tuple[int, int]:
        """(rows, distinct moe_event_uuid) read from the server's SQLite file (read-only)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            rows, unique = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT moe_event_uuid) FROM events"
            ).fetchone()
        finally:
            conn.close()
        return int(rows), int(unique)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text("utf-8", "replace")[-2000:]
        return ""

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc.stdout is not None:
            proc.stdout.close()
        self._stderr.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port that was free a moment ago and has no listener (refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _stat_cpu(path: str) -> float:
    with open(path, "rb") as handle:
        data = handle.read().decode("ascii", "replace")
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); 0.0 if unreadable."""
    try:
        return _stat_cpu(f"/proc/{pid}/stat")
    except (OSError, ValueError, IndexError):
        return 0.0


def thread_cpu_seconds(native_id: int | None) -> float:
    """User + system CPU seconds of one thread of this process; 0.0 if unreadable."""
    if native_id is None:
        return 0.0
    try:
        return _stat_cpu(f"/proc/self/task/{native_id}/stat")
    except (OSError, ValueError, IndexError):
        return 0.0


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``); -1 if unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True
