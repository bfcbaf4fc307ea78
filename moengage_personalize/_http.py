"""HTTP transport: one request in, one answer (or one PersonalizeError) out, within a deadline.

``Transport.request`` sends a JSON request with retries (``_retry``, loaded on the first failure)
and returns the decoded JSON answer; ``Transport.send_once`` makes one attempt for callers with
retry rules of their own (events). Everything ``http.client``, ``ssl``, ``socket`` or ``requests``
may raise becomes a :class:`PersonalizeError` in ``_failures``, the one error boundary.

Two ways to the service, chosen once per client:

* **direct** (the default, and an injected session whose settings need nothing more): a small
  pool of ``http.client`` connections, the leanest public HTTP client in the standard library.
  TLS uses the session's ``verify`` and ``cert`` (certifi's CA bundle by default, as requests).
  Sockets block without a timeout once connected: the call's :class:`Deadline` shuts the socket
  down when it passes, so a read never outlives the deadline and needs no poll first.
* **through requests**: an injected session that routes the base URL through a proxy or a
  mounted adapter of its own gets every request through ``adapter.send()``, exactly as requests
  would apply those settings; each read is bounded by the time left (requests cannot bound their
  sum, see the README).

Proxies come from an injected session only; the process environment (``HTTP(S)_PROXY``) is not
read for a session the client makes itself (its credentials never go through a proxy nobody
configured for it).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import sys
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from ._config import PersonalizeConfig
from ._connections import Connection, Pool, TLSConnection, connect_by, tls_context
from ._deadline import Deadline
from ._failures import deadline_error, failure, status_error
from ._resilience import Counter, warn_once
from ._version import __version__
from .exceptions import ParseError, PersonalizeError

if TYPE_CHECKING:
    import requests

DATA_CENTERS = ("01", "02", "03", "04", "05", "06", "101")
USER_AGENT = (
    f"moengage-personalize-python/{__version__} "
    f"({sys.implementation.name} {'.'.join(map(str, sys.version_info[:3]))})"
)
_CHUNK = 64 * 1024
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"base_url is not a valid URL: {base_url!r} ({exc})") from None
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
    import ipaddress  # only for a plain-http base URL

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Headers(dict[str, str]):
    """Request headers; their values (the Basic token among them) never show in a repr, so a
    traceback with its frames' locals, a debugger or an error tracker cannot print them."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<Headers {', '.join(self)}: values redacted>"


class Secret:
    """A credential whose repr never shows it (in a frame's locals, a log, a debugger)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def check(self) -> str:
        """The key, checked (a ValueError never quotes it)."""
        key = self.value
        if not isinstance(key, str) or not key.strip():
            raise ValueError("api_key must be a non-empty str")
        if not key.isascii() or not key.isprintable() or key != key.strip():
            raise ValueError("api_key must be printable ASCII without surrounding spaces")
        return key

    def __repr__(self) -> str:
        return "<Secret: redacted>"


class Request:
    """One logical request: what to send, until when, and how to name it in errors."""

    __slots__ = ("body", "deadline", "expect_json", "method", "path", "what")

    def __init__(
        self,
        method: str,
        path: str,
        body: bytes | None,
        deadline: Deadline,
        what: str,
        expect_json: bool = True,
    ) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.deadline = deadline
        self.what = what
        self.expect_json = expect_json


class Answer:
    """Status, headers and body of one HTTP exchange."""

    __slots__ = ("body", "headers", "reason", "status")
    headers: Mapping[str, str]

    def __init__(self, status: int, reason: str, headers: Any, body: bytes) -> None:
        """``headers``: a case-insensitive mapping (http.client's message, requests' dict)."""
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class Transport:
    """Sends requests to one base URL with the client's credentials. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        app_id: str,
        api_key: Secret,
        config: PersonalizeConfig,
        session: requests.Session | None,
    ) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self._prefix = parts.path.rstrip("/")
        self._host = parts.hostname or ""
        self._port = parts.port
        self._tls = parts.scheme == "https"
        self._max_bytes = config.max_response_bytes
        self._retry = config.retry
        self._sleep = config.sleep
        # idle connections kept: one per worker, per caller running its own call, and for the
        # event dispatcher
        self._pool_size = 4 * config.max_workers + 1
        self._context: ssl.SSLContext | None = None
        self._adapter: Any = None  # requests' adapter, when requests carries the calls
        self._send_kwargs: dict[str, Any] = {}
        self._headers = Headers()
        verify: Any = True
        cert: Any = None
        if session is not None:
            verify, cert = self._from_session(session)
        self._headers.update(
            {
                "Authorization": "Basic " + _token(app_id, api_key.check()),
                "MOE-APPKEY": app_id,
                "User-Agent": USER_AGENT,
            }
        )
        self._verify, self._cert = verify, cert
        self._pool = self._new_pool()
        self.requests = Counter()
        self.retries = Counter()

    def _from_session(self, session: requests.Session) -> tuple[Any, Any]:
        """Read an injected session once: its headers, ``verify``, ``cert`` and proxies (with the
        environment's when it trusts it), and the adapter it mounts for the base URL."""
        import requests.adapters
        import requests.utils

        for name, value in cast(Any, session.headers).items():
            if value is None:  # requests' way to drop a header
                self._headers.pop(name, None)
            elif name.lower() not in ("connection", "accept-encoding", "host", "content-length"):
                self._headers[name] = value if isinstance(value, str) else value.decode("latin-1")
        settings = session.merge_environment_settings(self.base_url, {}, None, None, None)
        adapter = session.get_adapter(self.base_url)
        plain = (
            isinstance(adapter, requests.adapters.HTTPAdapter)
            and type(adapter).send is requests.adapters.HTTPAdapter.send
        )
        if not plain or requests.utils.select_proxy(self.base_url, settings["proxies"]):
            self._adapter = adapter
            self._send_kwargs = {
                "verify": settings["verify"],
                "cert": settings["cert"],
                "proxies": settings["proxies"],
                "stream": True,
            }
        return settings["verify"], settings["cert"]

    @property
    def inline(self) -> bool:
        """Whether a call may run on the thread waiting for it: only where the deadline can
        stop it (the direct path shuts its socket; requests' sockets cannot be shut)."""
        return self._adapter is None

    def _new_pool(self) -> Pool:
        return Pool(self._new_connection, self._pool_size)

    def _new_connection(self) -> http.client.HTTPConnection:
        if not self._tls:
            return Connection(self._host, self._port)
        if self._context is None:  # built on first use: loading CA certificates takes a while
            self._context = tls_context(self._verify, self._cert)
        return TLSConnection(self._host, self._port, context=self._context)

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    def after_fork(self) -> None:
        """In a forked child: never reuse the parent's connections (they share its sockets)."""
        self._pool = self._new_pool()  # the parent's are dropped, not closed
        self.requests = Counter()
        self.retries = Counter()
        if self._adapter is not None:
            warn_once(
                "fork-session",
                "moengage-personalize: this process was forked after the client was made with "
                "an injected requests.Session; its pooled connections are shared with the parent "
                "process. Give each process its own session (or client).",
            )

    def close(self) -> None:
        self._pool.close()

    # the two ways in ------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any, deadline: Deadline, *, what: str) -> Any:
        """Send ``body`` as JSON and return the decoded JSON answer, retried as the policy says
        until ``deadline``. Raises only PersonalizeError."""
        data = None if body is None else _encode(body).encode()
        request = Request(method, path, data, deadline, what)
        try:
            return self._attempt(request)
        except PersonalizeError as exc:
            first = exc
        from . import _retry  # the first failure: tenacity takes over (never imported before)

        if (self._retry.max_attempts or 2) == 1 or not _retry.fetch_retryable(first):
            raise first
        retrying = _retry.fetch_retrying(
            self._retry, self._sleep, deadline.remaining, self.retries.add
        )
        return retrying(_retry.replaying(first, self._attempt), request)

    def send_once(
        self, method: str, path: str, data: bytes, deadline: Deadline, *, what: str
    ) -> None:
        """One attempt, no retries: returns on any 2xx, whatever its body."""
        self._attempt(Request(method, path, data, deadline, what, expect_json=False))

    def _attempt(self, request: Request) -> Any:
        if request.deadline.remaining() <= 0:
            raise deadline_error(request)
        self.requests.add()
        mapped: PersonalizeError | None = None
        try:
            if self._adapter is None:
                answer = self._exchange(request)
            else:
                answer = self._exchange_adapter(request)
        except PersonalizeError:
            raise
        except Exception as exc:
            mapped = failure(exc, request, self.base_url)
        if mapped is not None:  # raised outside the except: no traceback of the cause's frames
            raise mapped
        if 200 <= answer.status < 300:
            if not request.expect_json:
                return None
            try:
                return json.loads(answer.body)
            except (ValueError, RecursionError):
                ctype = answer.headers.get("Content-Type", "no content type")
                error = ParseError(
                    f"the {request.what} answer is not JSON ({ctype}, {len(answer.body)} bytes)"
                )
            raise error
        raise status_error(answer, request.what)

    # direct: http.client ----------------------------------------------------------------------

    def _exchange(self, request: Request) -> Answer:
        deadline = request.deadline
        response: http.client.HTTPResponse | None = None
        conn = self._pool.take()
        try:
            left = max(deadline.remaining(), 0.001)
            if conn.sock is None:
                conn.timeout = left  # bounds the connect (but not a name look-up)
                if deadline.here:
                    connect_by(conn, deadline)
                else:
                    conn.connect()
            # the socket, not the connection: http.client hands it to an answer that closes
            # the connection, and the deadline must still be able to shut it
            if not deadline.attach(conn.sock):  # passed meanwhile (a look-up cannot be stopped)
                raise deadline_error(request)
            if not deadline.watched:  # nobody will shut the socket: each read gets a timeout
                conn.sock.settimeout(left)
            body = request.body
            conn.putrequest(request.method, self._prefix + request.path, skip_accept_encoding=True)
            for name, value in self._headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Type", "application/json")
                conn.putheader("Content-Length", str(len(body)))
            conn.gather()  # type: ignore[attr-defined]
            conn.endheaders()
            conn.send_gathered(body)  # type: ignore[attr-defined]
            response = conn.getresponse()
            content = self._read(response, request)
            if deadline.expired:  # shut down mid-answer: what was read is cut short, whatever
                raise deadline_error(request)  # http.client made of it
        except BaseException:
            deadline.detach()
            conn.close()  # in an unknown state: never reused
            if response is not None:
                response.close()  # (an answer with Connection: close holds the socket itself)
            raise
        deadline.detach()  # before the connection can serve another call
        if deadline.watched:
            self._pool.give(conn)
        else:  # its socket has a timeout now: not for the pool
            conn.close()
        return Answer(response.status, response.reason, response.headers, content)

    def _read(self, response: http.client.HTTPResponse, request: Request) -> bytes:
        """The whole body, at most ``max_response_bytes`` decoded: a compressed answer is
        decoded as it arrives, so a bomb stops at the cap, not after it is all read."""
        declared = self._check_declared(response.getheader("Content-Length"), request)
        encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
        chunked = response.getheader("Transfer-Encoding") is not None  # then the length lies
        if declared is not None and encoding == "identity" and not chunked:
            return response.read()  # at most the declared length (http.client checks it)
        decoder = None
        if encoding != "identity":
            if encoding not in ("gzip", "x-gzip", "deflate"):
                raise ParseError(f"the {request.what} answer has an unknown encoding {encoding!r}")
            decoder = zlib.decompressobj(47 if encoding != "deflate" else zlib.MAX_WBITS)
        cap = self._max_bytes
        chunks: list[bytes] = []
        total = 0
        while not response.isclosed():
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            if decoder is not None:
                try:
                    chunk = decoder.decompress(chunk, cap + 1 - total)
                except zlib.error as exc:
                    raise ParseError(
                        f"the {request.what} answer could not be decoded: {exc}"
                    ) from None
                if decoder.unconsumed_tail:  # more than the cap still to come out
                    raise self._too_big(request)
            total += len(chunk)
            if total > cap:
                raise self._too_big(request)
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_declared(self, declared: str | None, request: Request) -> int | None:
        """The declared body length (None if absent or unreadable); over the cap: PARSE_ERROR."""
        if declared is None or not (declared.isascii() and declared.isdigit()):
            return None
        if len(declared) > 18 or int(declared) > self._max_bytes:
            raise ParseError(
                f"the {request.what} answer declares {declared} bytes, over the "
                f"{self._max_bytes}-byte cap (config.max_response_bytes)"
            )
        return int(declared)

    def _too_big(self, request: Request) -> ParseError:
        return ParseError(
            f"the {request.what} answer is over the {self._max_bytes}-byte cap "
            "(config.max_response_bytes)"
        )

    # through requests -------------------------------------------------------------------------

    def _exchange_adapter(self, request: Request) -> Answer:
        import requests

        prepared = requests.PreparedRequest()
        headers = Headers(self._headers)
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        prepared.prepare(
            method=request.method,
            url=self.base_url + request.path,
            headers=headers,
            data=request.body,
        )
        left = max(request.deadline.remaining(), 0.001)
        response = self._adapter.send(prepared, timeout=(left, left), **self._send_kwargs)
        try:
            self._check_declared(response.headers.get("Content-Length"), request)
            # one receive at a time where the adapter's stream allows it (urllib3 >= 2.3), so the
            # deadline is checked between pieces of a trickling body
            read1 = getattr(response.raw, "read1", None)
            pieces = (
                iter(lambda: read1(_CHUNK, decode_content=True), b"")
                if read1 is not None
                else response.iter_content(_CHUNK)
            )
            chunks: list[bytes] = []
            total = 0
            for chunk in pieces:
                if request.deadline.remaining() <= 0:
                    raise deadline_error(request)
                total += len(chunk)
                if total > self._max_bytes:
                    raise self._too_big(request)
                chunks.append(chunk)
        finally:
            response.close()
        return Answer(
            response.status_code, response.reason or "", response.headers, b"".join(chunks)
        )


def _token(app_id: str, api_key: str) -> str:
    return base64.b64encode(f"{app_id}:{api_key}".encode()).decode("ascii")
