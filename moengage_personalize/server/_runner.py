"""Serving the WSGI app on a real socket: a threaded stdlib HTTP/1.1 server.

``http.server`` parses requests; :class:`_WSGIHandler` is a small WSGI gateway on top of it that
keeps connections alive, decodes chunked request bodies, hands the application a body stream it
cannot read past (``Content-Length``, or the end of a chunked body), answers ``Expect:
100-continue`` only once the application starts reading, and closes the connection (after
discarding, for a bounded time, what the client still sends, so it reads the answer) when the
application did not read the whole body, e.g. a 413.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from ._app import DEFAULT_MAX_BODY_BYTES, PersonalizeApp
from ._definitions import Definitions, load_definitions, parse_definitions, sample_definitions
from ._store import EventStore

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PersonalizeServer"]

log = logging.getLogger("moengage_personalize.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8181
_IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection may sit idle
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 64 * 1024 * 1024
_MAX_TRAILERS = 32
_DRAIN_BYTES = 64 * 1024  # an unread rest this small is read so the connection can be kept


# RFC 9110 reason phrases for the errors the HTTP layer can produce, the same on every Python.
_STABLE_TITLES = {
    400: "Bad Request",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}


class _BodyReader(io.RawIOBase):
    """``wsgi.input``: the request body and nothing past it (length-delimited or chunked)."""

    def __init__(self, handler: _WSGIHandler, length: int | None, chunked: bool) -> None:
        super().__init__()
        self._handler = handler
        self._rfile = handler.rfile
        self._left = length or 0  # bytes left: of the body, or of the current chunk
        self._chunked = chunked
        self._eof = not chunked and not length
        self._continue_pending = handler.expects_continue

    def readable(self) -> bool:
        return True

    @property
    def unread_length(self) -> int | None:
        """Bytes of a length-delimited body not read yet; None when unknown (chunked) or when
        the client still waits for ``100 Continue`` (it has sent nothing)."""
        if self._chunked or self._continue_pending:
            return None
        return self._left

    @property
    def finished(self) -> bool:
        """True once the whole body was read."""
        return self._eof

    def _next_chunk(self) -> bool:
        """Read the next chunk's size line; False at the last (empty) chunk."""
        line = self._rfile.readline(1026)
        if not line.endswith(b"\n"):
            raise OSError("malformed chunked body")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise OSError("malformed chunk size") from None
        if size < 0:
            raise OSError("malformed chunk size")
        if size == 0:
            for _ in range(_MAX_TRAILERS + 1):  # trailers, up to the blank line
                trailer = self._rfile.readline(8194)
                if trailer in (b"\r\n", b"\n", b""):
                    break
            else:
                raise OSError("too many chunked-body trailers")
            self._eof = True
            return False
        self._left = size
        return True

    def readinto(self, buffer: Any) -> int:
        if self._continue_pending:
            self._continue_pending = False
            self._handler.send_continue()
        view = memoryview(buffer)
        if self._eof or not view:
            return 0
        if self._left == 0 and not self._next_chunk():
            return 0
        wanted = min(len(view), self._left)
        data = self._rfile.read(wanted)
        if not data:
            raise OSError("the client closed the connection in the middle of the body")
        view[: len(data)] = data
        self._left -= len(data)
        if self._left == 0:
            if self._chunked:
                if self._rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise OSError("malformed chunked body")
            else:
                self._eof = True
        return len(data)


class _WSGIHandler(http.server.BaseHTTPRequestHandler):
    """One connection: requests in turn, each run through the WSGI application."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a write goes out at once: no 40 ms stalls
    # Writes are buffered and flushed once per answer, so the header block and a body of up to
    # this size leave in one send: one segment, one read at the client.
    wbufsize = 64 * 1024
    server: _ThreadingServer
    timeout = _IDLE_TIMEOUT
    expects_continue = False

    def version_string(self) -> str:
        return "moengage-personalize-local"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        self.expects_continue = True  # answered when the application reads the body
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """An HTTP-level error (unparsable request line or headers) in the contract's JSON
        envelope, with ``x-request-id`` like every other answer; the connection is closed."""
        title, default = self.responses.get(code, ("Error", ""))
        title = _STABLE_TITLES.get(code, title)  # the stdlib's phrases differ across versions
        body = json.dumps(
            {"title": title, "description": message or explain or default or title}
        ).encode("utf-8")
        self.close_connection = True
        self.send_response(code, title)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", uuid.uuid4().hex)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)
        self.wfile.flush()

    def send_continue(self) -> None:
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()

    def handle_one_request(self) -> None:
        self.expects_continue = False
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, OSError):
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(414)
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if not self.parse_request():
            return
        if self.request_version == "HTTP/0.9":  # its answer has no length: the end is the close
            self.close_connection = True  # (the stdlib keeps it open on Connection: keep-alive)
        try:
            self._run_wsgi()
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.debug("connection from %s ended: %s", self.address_string(), exc)
            self.close_connection = True
            # what is left in the write buffer can never go: finish() must not wait for it
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        """The stdlib's, except that an answer the client no longer takes (unsent bytes left in
        the buffered writer, which closing flushes again) ends the connection quietly."""
        try:
            super().finish()
        except OSError:
            with contextlib.suppress(OSError):
                self.rfile.close()

    def _run_wsgi(self) -> None:
        length_text = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length: int | None = None
        if length_text is not None and not chunked:
            digits = length_text.strip()
            if digits.isascii() and digits.isdigit() and len(digits) <= 18:
                length = int(length_text)
            else:  # the application answers it; the body's end is unknown: close after
                self.close_connection = True
        body = _BodyReader(self, length, chunked)
        environ = self._environ(body, length, chunked)
        if length is None and length_text is not None and not chunked:
            environ["CONTENT_LENGTH"] = length_text
        status_line: list[str] = []
        response_headers: list[tuple[str, str]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and status_line:
                raise exc_info[1].with_traceback(exc_info[2])
            status_line[:] = [status]
            response_headers[:] = headers
            return lambda _data: None  # the legacy write() callable; this app never uses it

        result = self.server.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not body.finished:
            self._finish_body(body)
        code_text, _, reason = status_line[0].partition(" ")
        self.send_response(int(code_text), reason)
        has_length = False
        for name, value in response_headers:
            has_length = has_length or name.lower() == "content-length"
            self.send_header(name, value)
        if not has_length:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        self.wfile.flush()
        if self.close_connection and not body.finished:
            self._linger()

    def _finish_body(self, body: _BodyReader) -> None:
        """Read a small declared rest of the body (so the connection can be kept); otherwise, or
        for a chunked body, close the connection after the answer."""
        if body.unread_length is None or body.unread_length > _DRAIN_BYTES:
            self.close_connection = True  # too much, unknown, or the client waits for a 100
            return
        try:
            self.connection.settimeout(_LINGER_SECONDS)
            while body.read(8192):
                pass
            self.connection.settimeout(self.timeout)
        except OSError:
            self.close_connection = True

    def _linger(self) -> None:
        """After answering early, discard what the client still sends, for a bounded time, so
        the connection is not reset before the client read the answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(_LINGER_SECONDS)
            discarded = 0
            while discarded < _LINGER_BYTES:
                data = self.connection.recv(65536)
                if not data:
                    break
                discarded += len(data)
        except OSError:
            pass

    def _environ(self, body: _BodyReader, length: int | None, chunked: bool) -> dict[str, Any]:
        path, _, query = self.path.partition("?")
        host, port = self.server.server_address[:2]
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": "" if length is None else str(length),
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BufferedReader(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": chunked,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


class _ThreadingServer(http.server.ThreadingHTTPServer):
    """A thread per connection; :meth:`close_connections` ends the kept-alive ones at stop."""

    daemon_threads = True
    allow_reuse_address = os.name != "nt"
    request_queue_size = 128  # the listen backlog (socketserver defaults to 5)

    def __init__(self, address: tuple[str, int], app: PersonalizeApp) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._handlers: set[threading.Thread] = set()
        super().__init__(address, _WSGIHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:  # registered before its thread starts, so stop() always sees it
            self._open.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._handlers.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)
                self._handlers.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error on the connection from %s", client_address, exc_info=True)

    def close_connections(self, timeout: float) -> None:
        """Shut down every open connection and wait (up to ``timeout``) for their threads."""
        with self._open_lock:
            sockets = list(self._open)
            threads = list(self._handlers)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout)


class PersonalizeServer:
    """The local Personalize server on a real socket; start it, use ``base_url``, stop it.

    ``experiences`` is a definitions file path, a dict shaped like the file, a
    :class:`Definitions`, or None for the embedded sample. ``port=0`` picks a free port (read
    :attr:`port` or :attr:`base_url` after :meth:`start`). ``db`` is an SQLite file for the
    events (kept across restarts); None keeps them in memory. Use it as a context manager (started
    on a background thread, stopped at exit) or call :meth:`serve_forever` to block.
    """

    def __init__(
        self,
        experiences: str | os.PathLike[str] | dict[str, Any] | Definitions | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        db: str | os.PathLike[str] | None = None,
        rate_limit: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        self.definitions = _definitions(experiences)
        store = EventStore(db)
        try:
            extra: dict[str, Any] = {} if clock is None else {"clock": clock}
            self.app = PersonalizeApp(
                self.definitions,
                store=store,
                rate_limit=rate_limit,
                max_body_bytes=max_body_bytes,
                **extra,
            )
        except BaseException:
            store.close()
            raise
        self.host = host
        self._port = port
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self._serving = False
        self._lock = threading.Lock()
        self._closed = False

    # addresses and credentials ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the configured one before :meth:`start`)."""
        return self._httpd.server_address[1] if self._httpd is not None else self._port

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:8181``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The REST prefix to give the SDK's ``base_url`` (ends in ``/v1``)."""
        return f"{self.url}/v1"

    @property
    def workspace_id(self) -> str:
        """The workspace id (the SDK's ``app_id``; the Basic auth user and ``MOE-APPKEY``)."""
        return self.definitions.workspace_id

    app_id = workspace_id

    @property
    def api_key(self) -> str:
        """The Personalize API key the server accepts."""
        return self.definitions.api_key

    @property
    def store(self) -> EventStore:
        """The event store."""
        return self.app.store

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"<PersonalizeServer {self.base_url} workspace_id={self.workspace_id!r} {state}>"

    # what it recorded ----------------------------------------------------------------------

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """The stored events (see :meth:`EventStore.events` for the filters)."""
        return self.app.store.events(**filters)

    def stats(self) -> list[dict[str, Any]]:
        """Impressions, clicks and CTR per experience and variation."""
        return self.app.store.stats()

    def decisions(self, **filters: Any) -> list[dict[str, Any]]:
        """Why recent fetches served or did not serve each key (see
        :meth:`PersonalizeApp.decisions`)."""
        return self.app.decisions(**filters)

    # lifecycle -----------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the socket (idempotent); raises :class:`OSError` if the port is taken."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the server was stopped; create a new one")
            if self._httpd is None:
                self._httpd = _ThreadingServer((self.host, self._port), self.app)

    def start(self) -> PersonalizeServer:
        """Serve on a background thread (idempotent); returns ``self``."""
        self.bind()
        with self._lock:
            if self._thread is None:
                assert self._httpd is not None
                if self._serving:
                    raise RuntimeError("the server is already serving (serve_forever)")
                self._serving = True
                self._thread = threading.Thread(
                    target=self._httpd.serve_forever,
                    kwargs={"poll_interval": 0.01},
                    name=f"moengage-personalize-server:{self.port}",
                    daemon=True,
                )
                self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until :meth:`stop` is called from another thread or Ctrl-C
        (then stops and returns)."""
        self.bind()
        with self._lock:
            if self._serving:
                raise RuntimeError("the server is already serving")
            self._serving = True
        assert self._httpd is not None
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, end open connections, close the event store (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            httpd, thread, serving = self._httpd, self._thread, self._serving
        if httpd is not None:
            if serving:  # ends the serve loop on whichever thread runs it
                httpd.shutdown()
            if thread is not None:
                thread.join(timeout)
            httpd.server_close()
            httpd.close_connections(timeout)
        self.app.store.close()

    def __enter__(self) -> PersonalizeServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _definitions(
    experiences: str | os.PathLike[str] | dict[str, Any] | Definitions | None,
) -> Definitions:
    if experiences is None:
        return sample_definitions()
    if isinstance(experiences, Definitions):
        return experiences
    if isinstance(experiences, dict):
        return parse_definitions(experiences)
    if isinstance(experiences, (str, os.PathLike)):
        return load_definitions(experiences)
    raise TypeError(
        "experiences must be a file path, a dict, Definitions or None (the sample), "
        f"not {type(experiences).__name__}"
    )
