"""The direct path's connections: ``http.client`` connections that send a request in one piece
and block without socket timeouts (the call's Deadline shuts the socket down), a small pool of
idle ones checked before reuse, connects bounded by the deadline, and the TLS context."""

from __future__ import annotations

import collections
import http.client
import os
import select
import ssl
import threading
from collections.abc import Callable
from typing import Any

from ._deadline import Deadline


class _OneSend:
    """A connection that sends a request's header block and body together: one system call,
    one TCP segment, one read at the server. ``gather()`` holds what ``send`` gets until
    ``send_gathered(body)``; if ``endheaders`` sent its block some other way, the body simply
    follows it."""

    _gathered: list[bytes] | None = None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        # reads and writes block without a timeout: the call's Deadline shuts the socket down
        self.sock.settimeout(None)  # type: ignore[attr-defined]

    def gather(self) -> None:
        self._gathered = []

    def send(self, data: Any) -> None:
        gathered = self._gathered
        if gathered is not None and isinstance(data, bytes):
            gathered.append(data)
        else:
            super().send(data)  # type: ignore[misc]

    def send_gathered(self, body: bytes | None) -> None:
        gathered, self._gathered = self._gathered or [], None
        if body:
            gathered.append(body)
        if gathered:
            super().send(b"".join(gathered))  # type: ignore[misc]


class Connection(_OneSend, http.client.HTTPConnection):
    pass


class TLSConnection(_OneSend, http.client.HTTPSConnection):
    pass


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle pooled connection is unusable: closed by the server, or holding bytes
    nobody asked for (a stray answer must never reach the next request)."""
    sock = conn.sock
    if sock is None:
        return False  # closed by http.client: the next request opens a new one
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class Pool:
    """Idle connections to the base URL's host, most recently used first. ``take`` and ``give``
    need no lock: a deque's ``pop`` and ``append`` are atomic."""

    def __init__(self, connect: Callable[[], http.client.HTTPConnection], size: int) -> None:
        self._connect = connect
        self._size = size
        self._idle: collections.deque[http.client.HTTPConnection] = collections.deque()

    def take(self) -> http.client.HTTPConnection:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return self._connect()
            if not _dropped(conn):
                return conn
            conn.close()

    def give(self, conn: http.client.HTTPConnection) -> None:
        if len(self._idle) < self._size:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def connect_by(conn: http.client.HTTPConnection, deadline: Deadline) -> None:
    """Connect ``conn`` on a thread of its own, waiting at most until the deadline: the caller's
    own thread must never be held past it by a name look-up, which nothing can interrupt."""
    done = threading.Event()
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            conn.connect()
        except BaseException as exc:  # handed to the waiting caller
            failed.append(exc)
        finally:
            done.set()

    try:
        threading.Thread(target=connect, name="moengage-personalize-connect", daemon=True).start()
    except RuntimeError:  # interpreter exit: no new threads; connect here (bounded by timeout)
        conn.connect()
        return
    if not done.wait(max(deadline.remaining(), 0.0)):
        conn.close()  # whatever the connect opens later is dropped with the connection
        raise TimeoutError("connecting did not finish before the deadline")
    if failed:
        raise failed[0]


def tls_context(verify: Any, cert: Any) -> ssl.SSLContext:
    """An SSL context with requests' meaning of ``verify`` and ``cert``."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str) and verify:
        if os.path.isdir(verify):
            context = ssl.create_default_context(capath=verify)
        else:
            context = ssl.create_default_context(cafile=verify)
    else:
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
    if cert:
        if isinstance(cert, str):
            context.load_cert_chain(cert)
        else:
            context.load_cert_chain(cert[0], cert[1])
    return context
