"""HTTP transport: the session, auth headers, per-attempt timeouts, retries, and THE error boundary.

Everything ``requests``/``urllib3``/``tenacity`` may raise is turned into a
:class:`~moengage_personalize.exceptions.PersonalizeError` here (``raise ... from exc``) and
nowhere else.

Speed: what a plain ``session.post()`` re-does on every call (environment proxy and netrc look-ups,
settings merges, URL and header preparation, cookie handling) is resolved once per client; a call
builds a :class:`requests.PreparedRequest` from ready parts and hands it to the transport adapter.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import email.parser
import email.utils
import functools
import http.client
import ipaddress
import json
import logging
import math
import platform
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.structures
import requests.utils
import tenacity
import urllib3
import urllib3.connectionpool
import urllib3.exceptions

from ._config import PersonalizeConfig, RetryPolicy
from ._resilience import Counter, warn_once
from ._version import __version__
from .exceptions import (
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    NetworkError,
    ParseError,
    PersonalizeError,
)

log = logging.getLogger("moengage_personalize")

DATA_CENTERS = ("01", "02", "03", "04", "05", "06", "101")
USER_AGENT = (
    f"moengage-personalize-python/{__version__} "
    f"({platform.python_implementation()} {platform.python_version()}; "
    f"requests {requests.__version__})"
)
_REQUEST_ID_HEADERS = ("x-request-id", "x-moe-request-id", "x-amzn-requestid", "request-id")
_CHUNK = 64 * 1024
# A request up to this size goes out in one send: copying the body once costs less than a
# second system call, which releases the GIL (a whole switch interval, 5 ms, to get it back
# while another thread computes).
_ONE_SEND = 1024 * 1024


def base_url_for(data_center: object, base_url: object, *, allow_insecure_http: bool) -> str:
    """The API prefix (ending in ``/v1``) for ``data_center``, or the validated ``base_url``."""
    if base_url is None:
        if not isinstance(data_center, str):
            raise TypeError(f"data_center must be a str such as '01', not {data_center!r}")
        if data_center not in DATA_CENTERS:
            raise ValueError(
                f"data_center must be one of {', '.join(DATA_CENTERS)}; got {data_center!r}"
            )
        return f"https://sdk-{data_center}.moengage.com/v1"
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a str, not {type(base_url).__name__}")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if parts.username or parts.password:
        raise ValueError("base_url must not carry credentials; pass app_id and api_key")
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ValueError(
            f"base_url {base_url!r} is plain http to a non-loopback host; use https, "
            "or set config.allow_insecure_http=True"
        )
    return base_url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Call:
    """One logical request: what to send, until when, and how to describe it in errors."""

    __slots__ = (
        "body",
        "budget",
        "budget_name",
        "deadline",
        "expect_json",
        "method",
        "path",
        "what",
    )

    def __init__(
        self,
        method: str,
        path: str,
        body: bytes | None,
        deadline: float,
        what: str,
        budget: float,
        budget_name: str,
        expect_json: bool = True,
    ) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.deadline = deadline  # time.monotonic() value
        self.what = what
        self.budget = budget  # the whole call's time budget in seconds, for messages
        self.budget_name = budget_name
        self.expect_json = expect_json


class _Answer:
    """Status, headers and body of one HTTP exchange, whichever path carried it."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Running:
    """A fetch in progress, so that it can be stopped at its deadline.

    The facade makes one per call before the call can start (so an abort always finds it) and
    sets it as the running thread's call (:func:`running`). :meth:`abort` (the deadline thread, or
    ``close()``) shuts down the socket the call is using, so the thread running it returns at
    once, whatever the server does; a connection the call gave back to the pool is not its own
    any more (the pool's ``_put_conn`` releases it). With ``here`` (the caller's own thread runs
    the call, in ``Future.result()``), connections are opened on a thread of their own and waited
    for only until the deadline: neither ``requests`` nor ``urllib3`` can bound a DNS look-up.
    """

    __slots__ = ("_aborted", "_conn", "_lock", "deadline", "here")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.here = False
        self._lock = threading.Lock()
        self._conn: Any = None
        self._aborted = False

    @property
    def aborted(self) -> bool:
        return self._aborted

    def attach(self, conn: Any) -> None:
        """``conn`` is about to carry this call's request."""
        with self._lock:
            if self._aborted:
                raise urllib3.exceptions.ReadTimeoutError(None, "", "the deadline passed")  # type: ignore[arg-type]
            self._conn = conn
            conn._personalize_run = self

    def release(self, conn: Any) -> None:
        """``conn`` goes back to the pool (or is dropped): no longer this call's."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
            if getattr(conn, "_personalize_run", None) is self:
                conn._personalize_run = None

    def detach(self) -> None:
        """The exchange is over (or failed): its connection, if any, is no longer this call's
        (only this call's thread attaches, so ``_conn`` cannot change meanwhile)."""
        self.release(self._conn)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = getattr(self._conn, "sock", None)
            if sock is None:
                return
            with contextlib.suppress(Exception):
                if isinstance(sock, socket.socket):  # socket.socket's own: an SSLSocket's
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # drops its TLS state first
                else:  # another TLS wrapper (urllib3.contrib): its own shutdown
                    sock.shutdown(socket.SHUT_RDWR)


class _SameTimeout:
    """``settimeout`` that skips the system call when the timeout does not change. urllib3 sets
    a connection's socket timeout before the request and again before the answer; each call
    is an ``ioctl`` that releases the GIL, which costs a thread switch when other threads wait
    for it."""

    __slots__ = ()

    def settimeout(self, value: float | None) -> None:
        if value != self.gettimeout():  # type: ignore[attr-defined]
            super().settimeout(value)  # type: ignore[misc]


class _LeanSocket(_SameTimeout, socket.socket):
    __slots__ = ()


class _LeanSSLSocket(_SameTimeout, ssl.SSLSocket):
    __slots__ = ()


# the exact classes re-classed (same layout): other wrappers (urllib3.contrib) are left alone
_LEAN = {socket.socket: _LeanSocket, ssl.SSLSocket: _LeanSSLSocket}


def _connect_apart(connect: Callable[[], None]) -> concurrent.futures.Future[None]:
    """Run ``connect`` on a thread of its own (never on the client's workers: they may all be
    waiting for the caller this connect is for)."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            connect()
        except BaseException as exc:  # handed to the waiting caller
            done.set_exception(exc)
        else:
            done.set_result(None)

    threading.Thread(target=run, name="moengage-personalize-connect", daemon=True).start()
    return done


def _releasing(put_conn: Callable[..., Any]) -> Callable[..., Any]:
    """A pool's ``_put_conn`` that first releases the connection from the call that used it
    (urllib3 gives a connection back as soon as its body is read, before the call ends)."""

    def put(conn: Any, *args: Any, **kwargs: Any) -> Any:
        run = getattr(conn, "_personalize_run", None)
        if run is not None:
            run.release(conn)
        return put_conn(conn, *args, **kwargs)

    return put


_local = threading.local()


def running(run: Running | None) -> Running | None:
    """Make ``run`` the current thread's call; returns the one it replaces."""
    previous: Running | None = getattr(_local, "run", None)
    _local.run = run
    return previous


# a line the email package takes into the header block, as its feedparser does
_HEADER_LINE = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]")
_MAX_LINE = 65536  # http.client's _MAXLINE and _MAXHEADERS
_MAX_HEADERS = 100


def _parse_headers(fp: Any) -> http.client.HTTPMessage:
    """``http.client.parse_headers`` without the email parser (a third of a fetch's own CPU):
    the same lines read, limits and errors, and the same message: names, values (compat32:
    folded lines kept, the end of line stripped) and order, lines the email parser skips skipped,
    and from a line that is no header on, the rest left unparsed in the payload (urllib3 then
    warns). A bare CR inside a line goes to the email parser itself, which splits lines there."""
    raw: list[bytes] = []
    while True:
        line = fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        raw.append(line)
        if len(raw) > _MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    if any(b"\r" in line.rstrip(b"\n").removesuffix(b"\r") for line in raw):
        text = b"".join(raw).decode("iso-8859-1")
        return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)
    block: list[str] = []  # the header block, up to the first line that is no header
    rest: list[str] | None = None  # from that line on, the payload
    for line in raw[:-1]:
        text = line.decode("iso-8859-1")
        if rest is not None:
            rest.append(text)
        elif _HEADER_LINE.match(text):
            block.append(text)
        else:
            rest = [text]
    if rest is not None:
        rest.append(raw[-1].decode("iso-8859-1"))
    message = http.client.HTTPMessage()
    fields: list[tuple[str, str]] = message._headers  # type: ignore[attr-defined]
    current: list[str] | None = None  # the source lines of the field being read
    for index, text in enumerate(block):
        if text[0] in " \t":  # a folded line: continues the field, if there is one
            if current is not None:
                current.append(text)
            continue
        if current is not None:
            fields.append(_field(current))
            current = None
        if text.startswith("From "):  # an envelope line: skipped, or body if it ends the block
            if 0 < index == len(block) - 1:
                rest = [text, *(rest or [])]
            continue
        if text[0] != ":":  # a field without a name is skipped
            current = [text]
    if current is not None:
        fields.append(_field(current))
    if rest is not None:
        message.set_payload("".join(rest))
    return message


def _field(lines: list[str]) -> tuple[str, str]:
    """compat32's header_source_parse."""
    name, value = lines[0].split(":", 1)
    return name, (value.lstrip(" \t") + "".join(lines[1:])).rstrip("\r\n")


class _LeanResponse(http.client.HTTPResponse):
    """http.client's response with :func:`_parse_headers`. ``begin`` is CPython's (identical in
    3.10 to 3.13) but for that call."""

    def begin(self) -> None:
        if cast(Any, self).headers is not None:  # None until begun (typeshed says otherwise)
            return
        while True:  # read until a non-100 response
            version, status, reason = self._read_status()  # type: ignore[attr-defined]
            if status != http.client.CONTINUE:
                break
            _parse_headers(self.fp)  # the 100 response's headers, skipped
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = _parse_headers(self.fp)
        tr_enc = self.headers.get("transfer-encoding")
        if tr_enc and tr_enc.lower() == "chunked":
            self.chunked = True
            self.chunk_left = None
        else:
            self.chunked = False
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if (
            status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
            or 100 <= status < 200
            or self._method == "HEAD"  # type: ignore[attr-defined]
        ):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


_GUARDED: dict[Any, type] = {}


def _guarded(base: Any) -> type:
    """A subclass of the urllib3 connection class ``base`` that reports to :class:`Running` and
    sends a request in one piece."""
    cls = _GUARDED.get(base)
    if cls is not None:
        return cls

    def connect(self: Any) -> None:
        run: Running | None = getattr(_local, "run", None)
        if run is None or not run.here:
            base.connect(self)
        else:
            task = _connect_apart(functools.partial(base.connect, self))
            done, _ = concurrent.futures.wait([task], max(0.0, run.deadline - time.monotonic()))
            if not done:  # whatever the connect opens later, nobody will use
                task.add_done_callback(lambda _: self.close())
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"connecting to {self.host} did not finish before the deadline"
                )
            task.result()  # the connect's own error, if any, raised here
        lean = _LEAN.get(type(self.sock))
        if lean is not None:
            self.sock.__class__ = lean
        if run is not None and run.aborted:  # the deadline passed while it connected
            self.close()
            raise urllib3.exceptions.ConnectTimeoutError(self, "the deadline passed")

    def request(self: Any, *args: Any, **kwargs: Any) -> None:
        run: Running | None = getattr(_local, "run", None)
        if run is not None:
            run.attach(self)
            if self.sock is not None:  # the deadline's abort bounds the send too (see read=None)
                self.timeout = None
        self._held = b""  # hold the header block for the body (see send)
        try:
            base.request(self, *args, **kwargs)
            if self._held:  # no body came
                base.send(self, self._held)
        finally:
            self._held = None

    def send(self: Any, data: Any) -> None:
        """http.client sends the header block and the body separately: two system calls, two
        TCP segments and two reads at the server. A request up to ``_ONE_SEND`` (every fetch,
        every events request) goes out in one."""
        held = self._held
        if held is None or not isinstance(data, bytes):
            base.send(self, data)
        elif not held:
            self._held = data
        else:
            self._held = None
            if len(held) + len(data) <= _ONE_SEND:
                base.send(self, held + data)
            else:
                base.send(self, held)
                base.send(self, data)

    cls = _GUARDED[base] = type(
        f"Guarded{base.__name__}",
        (base,),
        {
            "connect": connect,
            "request": request,
            "send": send,
            "response_class": _LeanResponse,
            "_held": None,
            "__module__": __name__,
        },
    )
    return cls


class Transport:
    """Sends one logical request with retries within a deadline; returns the decoded JSON body.

    Thread-safe: a call only reads what ``__init__`` resolved and uses a urllib3 connection pool,
    which is thread-safe. The :class:`requests.Session` itself is only read at construction: its
    headers, proxies, ``verify`` and ``cert`` settings (and the environment's, if it trusts it),
    and the adapter mounted for the base URL. When that adapter is requests' own
    :class:`~requests.adapters.HTTPAdapter` and no proxy applies, calls go straight to the
    connection pool the adapter resolved for the base URL (same TLS settings, none of the
    per-call re-resolution); any other adapter (a mock, a custom transport) gets every request
    through its ``send()``.
    """

    def __init__(
        self,
        base_url: str,
        app_id: str,
        api_key: str,
        config: PersonalizeConfig,
        session: requests.Session | None,
    ) -> None:
        self.base_url = base_url
        self._timeout = config.timeout
        self._max_bytes = config.max_response_bytes
        self._max_attempts = config.retry.max_attempts
        # a connection per worker, per caller running its own call (at most 3 per worker, see
        # MoEngagePersonalize._run_here) and for the event dispatcher: none is ever discarded
        self._pool_size = 4 * config.max_workers + 1
        self._owns_session = session is None
        if session is None:
            session = self._new_session()
        self._session = session
        self._adapter = session.get_adapter(base_url)
        settings = session.merge_environment_settings(base_url, {}, None, None, None)
        self._send_kwargs: dict[str, Any] = {
            "verify": settings["verify"],
            "cert": settings["cert"],
            "proxies": settings["proxies"],
            "stream": True,
        }
        token = base64.b64encode(f"{app_id}:{api_key}".encode()).decode("ascii")
        headers = {
            name: value if isinstance(value, str) else value.decode("latin-1")
            for name, value in session.headers.items()
            if name.lower() != "connection"  # keep-alive is HTTP/1.1's default
        }
        headers.update(
            {
                "Authorization": f"Basic {token}",
                "MOE-APPKEY": app_id,
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
        )
        self._get_headers = headers
        self._post_headers = {**headers, "Content-Type": "application/json"}
        self._path_prefix = urlsplit(base_url).path.rstrip("/")
        self._pool_lock = threading.Lock()
        self._pool: urllib3.connectionpool.HTTPConnectionPool | None = None
        self._http_adapter: requests.adapters.HTTPAdapter | None = None
        if (
            isinstance(self._adapter, requests.adapters.HTTPAdapter)
            and type(self._adapter).send is requests.adapters.HTTPAdapter.send
            and not requests.utils.select_proxy(base_url, settings["proxies"])
        ):
            self._http_adapter = self._adapter
        self._retrying = _build_retrying(config.retry, config.sleep)
        self.requests = Counter()
        self.retries = Counter()

    @property
    def inline(self) -> bool:
        """Whether a caller's thread may run a call itself: only through the connection pool of
        a session this transport made, whose connections report to :class:`Running`."""
        return self._owns_session and self._http_adapter is not None

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=self._pool_size, max_retries=0
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def after_fork(self) -> None:
        """In a forked child: never reuse the parent's connections (they share its sockets).

        A session the client created is replaced by a new one; an injected session stays the
        caller's (warned once: its pooled connections are shared with the parent process).
        """
        self._pool_lock = threading.Lock()
        self._pool = None
        self.requests = Counter()
        self.retries = Counter()
        if self._owns_session:
            session = self._new_session()  # the parent's is dropped, not closed: its sockets
            self._session = session  # are the parent's too
            self._adapter = session.get_adapter(self.base_url)
            if self._http_adapter is not None:
                self._http_adapter = cast(requests.adapters.HTTPAdapter, self._adapter)
        else:
            warn_once(
                "fork-session",
                "moengage-personalize: this process was forked after the client was made with "
                "an injected requests.Session; its pooled connections are shared with the parent "
                "process. Give each process its own session (or client).",
            )

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session:
            self._session.close()

    def request(self, method: str, path: str, body: Any, deadline: float, *, what: str) -> Any:
        """Send ``body`` (JSON-encoded) and return the decoded JSON answer, retrying as the policy
        says until ``deadline`` (a ``time.monotonic()`` value). Raises only PersonalizeError.

        The first attempt runs directly; tenacity takes over from the first retryable failure
        (replaying it as its own first attempt, so attempt counts and backoff stay exact).
        """
        data = None if body is None else _encode(body).encode()
        call = _Call(method, path, data, deadline, what, self._timeout, "config.timeout")
        try:
            return self._guarded(self._attempt, call)
        except PersonalizeError as exc:
            if self._max_attempts == 1 or not _retryable(exc):
                raise
            first: list[PersonalizeError] = [exc]
        return self._guarded(self._retrying, self._replay_then_attempt, call, first)

    def _replay_then_attempt(self, call: _Call, first: list[PersonalizeError]) -> Any:
        if first:
            raise first.pop()
        self.retries.add()
        return self._attempt(call)

    def send_once(
        self, method: str, path: str, data: bytes, deadline: float, *, what: str, budget: float
    ) -> Any:
        """One attempt, no retries, for callers with their own retry rules (the event pipeline):
        returns on any 2xx, whatever its body. Raises only PersonalizeError."""
        call = _Call(method, path, data, deadline, what, budget, "attempt timeout", False)
        return self._guarded(self._attempt, call)

    @staticmethod
    def _guarded(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except PersonalizeError:
            raise
        except Exception as exc:  # a bug or an unforeseen dependency error: never leak it
            raise PersonalizeError(
                f"unexpected {type(exc).__name__}: {_short(exc)}", code=ErrorCode.UNKNOWN
            ) from exc

    def _attempt(self, call: _Call) -> Any:
        remaining = call.deadline - time.monotonic()
        if remaining <= 0:
            raise self._deadline_error(call)
        headers = self._post_headers if call.body is not None else self._get_headers
        self.requests.add()
        try:
            if self._http_adapter is not None:
                answer = self._exchange_direct(call, headers, remaining)
            else:
                answer = self._exchange_adapter(call, headers, remaining)
        except PersonalizeError:
            raise
        except Exception as exc:
            raise self._map_exception(exc, call) from exc
        status = answer.status
        if 200 <= status < 300:
            if not call.expect_json:
                return None
            try:
                return json.loads(answer.body)
            except (ValueError, RecursionError) as exc:
                ctype = answer.headers.get("Content-Type", "no content type")
                raise ParseError(
                    f"the {call.what} answer is not JSON ({ctype}, {len(answer.body)} bytes)"
                ) from exc
        raise _status_error(answer, call.what)

    def _connection_pool(self) -> urllib3.connectionpool.HTTPConnectionPool:
        """The adapter's pool for the base URL, resolved once (again if the adapter dropped it)."""
        pool = self._pool
        if pool is not None and pool.pool is not None:  # a closed pool has no queue left
            return pool
        with self._pool_lock:
            current = self._pool
            if current is None or current.pool is None:
                adapter = self._http_adapter
                assert adapter is not None
                probe = requests.PreparedRequest()
                probe.prepare(method="GET", url=self.base_url)
                kw = self._send_kwargs
                resolved = adapter.get_connection_with_tls_context(
                    probe, kw["verify"], kw["proxies"], kw["cert"]
                )
                if not isinstance(resolved, urllib3.connectionpool.HTTPConnectionPool):
                    raise TypeError(f"unexpected connection pool {type(resolved).__name__}")
                adapter.cert_verify(resolved, self.base_url, kw["verify"], kw["cert"])  # type: ignore[no-untyped-call]
                if self._owns_session:  # a pool nobody else uses: its connections report
                    resolved.ConnectionCls = _guarded(resolved.ConnectionCls)
                    resolved._put_conn = _releasing(resolved._put_conn)  # type: ignore[method-assign]
                current = self._pool = resolved
            return current

    def _exchange_direct(
        self, call: _Call, headers: Mapping[str, str], remaining: float
    ) -> _Answer:
        body = call.body
        if body is not None:
            headers = {**headers, "Content-Length": str(len(body))}
        # a fetch's socket, when the pool's connections report to it (see _guarded)
        run: Running | None = getattr(_local, "run", None) if self._owns_session else None
        try:
            response = self._connection_pool().urlopen(
                call.method,
                self._path_prefix + call.path,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                # A fetch (run is set) is bounded by its deadline: the deadline thread shuts
                # its socket down (Running.abort). Its reads and writes then need no socket
                # timeout, which would cost a poll() and a GIL hand-off before each of them.
                timeout=remaining if run is None else urllib3.Timeout(connect=remaining, read=None),
            )
        except BaseException as exc:
            self._failed(run, exc, call)
            raise
        try:
            headers = response.headers
            declared = self._check_declared(headers.get("Content-Length"), call)
            # the declared length counts the body's bytes on the wire only when they are the
            # body itself (a chunked answer's Content-Length is to be ignored)
            framed = "Content-Encoding" in headers or "Transfer-Encoding" in headers
            expected = None if framed else declared
            read1 = getattr(response, "read1", None)  # urllib3 >= 2.3: one recv at most
            if read1 is not None:
                content = self._read_body(lambda n: read1(n, decode_content=True), call, expected)
            else:
                content = self._read_body(
                    lambda n: response.read(n, decode_content=True), call, expected
                )
        except BaseException as exc:
            response.close()  # the connection is in an unknown state: do not reuse it
            self._failed(run, exc, call)
            raise
        if run is not None:
            run.detach()  # before the connection can serve another call
        response.release_conn()
        return _Answer(response.status, response.reason or "", response.headers, content)

    def _failed(self, run: Running | None, exc: BaseException, call: _Call) -> None:
        """After a failed exchange: the connection is no longer the call's; an error caused by
        the deadline shutting the socket down is the deadline's."""
        if run is None:
            return
        run.detach()
        if run.aborted and isinstance(exc, Exception):
            raise self._deadline_error(call) from exc

    def _read_body(
        self, read: Callable[[int], bytes], call: _Call, expected: int | None = None
    ) -> bytes:
        """The whole body, never more than ``max_response_bytes`` (decoded), and never past the
        call's deadline: a body that trickles in frees the worker (the socket timeout alone
        bounds each read, not their sum). ``read(n)`` reads at most ``n`` bytes: no more than
        the declared length still missing, so a small answer never allocates a 64 KiB buffer
        (an empty one is read as unknown: urllib3 closes a response only when a read finds its
        end, which ``read(0)`` never looks for)."""
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() >= call.deadline:
                raise self._deadline_error(call)
            chunk = read(min(_CHUNK, expected - total) if expected else _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > self._max_bytes:
                raise self._too_big(call)
            chunks.append(chunk)
            if total == expected:  # the declared length is in: no read just to see the end
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _exchange_adapter(
        self, call: _Call, headers: Mapping[str, str], remaining: float
    ) -> _Answer:
        prepared = requests.PreparedRequest()
        prepared.method = call.method
        prepared.url = self.base_url + call.path
        prepared.headers = requests.structures.CaseInsensitiveDict(headers)
        if call.body is not None:
            prepared.headers["Content-Length"] = str(len(call.body))
        prepared.body = call.body
        response = self._adapter.send(prepared, timeout=(remaining, remaining), **self._send_kwargs)
        try:
            self._check_declared(response.headers.get("Content-Length"), call)
            read1 = getattr(response.raw, "read1", None)
            if read1 is not None:
                content = self._read_body(lambda n: read1(n, decode_content=True), call)
            else:  # another adapter's raw stream
                chunks = response.iter_content(_CHUNK)
                content = self._read_body(lambda _n: next(chunks, b""), call)
        finally:
            response.close()
        return _Answer(response.status_code, response.reason or "", response.headers, content)

    def _check_declared(self, declared: str | None, call: _Call) -> int | None:
        """The declared body length (None if absent or unreadable); over the cap: PARSE_ERROR."""
        if declared is None or not (declared.isascii() and declared.isdigit()):
            return None
        if len(declared) > 18 or int(declared) > self._max_bytes:
            raise ParseError(
                f"the {call.what} answer declares {declared} bytes, over the "
                f"{self._max_bytes}-byte cap (config.max_response_bytes)"
            )
        return int(declared)

    def _too_big(self, call: _Call) -> ParseError:
        return ParseError(
            f"the {call.what} answer is over the {self._max_bytes}-byte cap "
            "(config.max_response_bytes)"
        )

    @staticmethod
    def _deadline_error(call: _Call) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"{call.what} did not complete within its deadline of {call.budget:g} s "
            f"({call.budget_name})"
        )

    def _map_exception(self, exc: Exception, call: _Call) -> PersonalizeError:
        """THE boundary: a dependency's exception becomes a PersonalizeError."""
        where = f"{call.what} ({call.method} {self.base_url}{call.path})"
        if _caused_by(exc, socket.gaierror):
            host = urlsplit(self.base_url).hostname
            return NetworkError(f"{where}: host name {host!r} could not be resolved")
        if _caused_by(exc, ConnectionRefusedError):
            return NetworkError(f"{where}: connection refused")
        timed_out = isinstance(exc, requests.Timeout) or (
            isinstance(exc, urllib3.exceptions.TimeoutError)
            and not isinstance(exc, urllib3.exceptions.NewConnectionError)
        )
        if timed_out or _caused_by(exc, TimeoutError):
            if time.monotonic() >= call.deadline - 0.005:
                return self._deadline_error(call)
            connect = isinstance(
                exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)
            )
            return NetworkError(f"{where}: {'connect' if connect else 'read'} timed out")
        if isinstance(exc, (requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
            return NetworkError(f"{where}: TLS failed: {_short(exc)}")
        if isinstance(
            exc, (requests.exceptions.ContentDecodingError, urllib3.exceptions.DecodeError)
        ):
            return ParseError(f"{where}: the answer could not be decoded: {_short(exc)}")
        if _caused_by(exc, ConnectionResetError):
            return NetworkError(f"{where}: connection reset by the server")
        if isinstance(
            exc, (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError)
        ):
            return NetworkError(f"{where}: the connection broke: {_short(exc)}")
        if isinstance(exc, (requests.RequestException, urllib3.exceptions.HTTPError, OSError)):
            return NetworkError(f"{where}: connection failed: {_short(exc)}")
        return PersonalizeError(
            f"{where} failed unexpectedly: {type(exc).__name__}: {_short(exc)}",
            code=ErrorCode.UNKNOWN,
        )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return True
        stack.extend((item.__cause__, item.__context__))
        stack.extend(a for a in item.args if isinstance(a, BaseException))
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return False


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _status_error(answer: _Answer, what: str) -> HTTPStatusError:
    status = answer.status
    envelope: Mapping[str, Any] = {}
    try:
        decoded = json.loads(answer.body) if answer.body else {}
        if isinstance(decoded, dict):
            envelope = decoded
    except ValueError:
        pass
    title = _str_or_none(envelope.get("title"))
    description = _str_or_none(envelope.get("description"))
    headers = answer.headers
    request_id = next((headers[h] for h in _REQUEST_ID_HEADERS if h in headers), None)
    if status == 403:
        code = ErrorCode.FEATURE_DISABLED
    elif status >= 500:
        code = ErrorCode.UNKNOWN_SERVER_ERROR
    else:
        code = ErrorCode.HTTP_ERROR
    summary = ": ".join(p for p in (title, description) if p) or (answer.reason or "no details")
    return HTTPStatusError(
        f"{what} answered HTTP {status}: {summary}",
        code=code,
        status_code=status,
        title=title,
        description=description,
        service_code=_str_or_none(envelope.get("code")),
        request_id=request_id,
        retry_after=_retry_after(headers) if status in (429, 503) else None,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or ``x-ratelimit-reset``."""
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
        else:
            if math.isfinite(seconds):
                return max(0.0, seconds)
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            stamp = float(reset)
        except ValueError:
            return None
        if not math.isfinite(stamp):
            return None
        # Documented as epoch seconds; a small number can only be a delta.
        return max(0.0, stamp - time.time()) if stamp > 1e9 else max(0.0, stamp)
    return None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, DeadlineExceededError):
        return False
    if isinstance(exc, NetworkError):
        return True
    if isinstance(exc, HTTPStatusError):
        return exc.status_code == 429 or (exc.status_code or 0) >= 500
    return False


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop when the next wait would end past the call's deadline, or when the service asks for
    a longer wait than ``max_retry_after``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._max_retry_after = policy.max_retry_after

    def __call__(self, state: tenacity.RetryCallState) -> bool:
        call: _Call = state.args[0]
        exc = state.outcome.exception() if state.outcome else None
        if (
            isinstance(exc, HTTPStatusError)
            and exc.retry_after is not None
            and exc.retry_after > self._max_retry_after
        ):
            return True
        return (state.upcoming_sleep or 0.0) >= call.deadline - time.monotonic()


def _build_retrying(policy: RetryPolicy, sleep: Any) -> tenacity.Retrying:
    """The one place a :class:`RetryPolicy` becomes a :class:`tenacity.Retrying`.

    One instance serves every call (tenacity keeps per-call state thread-locally); the call's
    deadline travels as the attempt function's argument.
    """

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, HTTPStatusError) and exc.retry_after is not None:
            return min(exc.retry_after, policy.max_retry_after)
        backoff = min(policy.max_backoff, policy.initial_backoff * 2 ** (state.attempt_number - 1))
        return random.uniform(backoff / 2, backoff) if policy.jitter else backoff  # noqa: S311

    def before_sleep(state: tenacity.RetryCallState) -> None:
        call: _Call = state.args[0]
        exc = state.outcome.exception() if state.outcome else None
        log.debug(
            "%s: attempt %d failed (%s); retrying in %.3f s",
            call.what,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts) | _StopAtDeadline(policy),
        wait=wait,
        retry=tenacity.retry_if_exception(_retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
