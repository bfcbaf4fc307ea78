"""Transport: injected sessions and adapters, proxies (session and environment), compressed and
undelimited answers, keep-alive and pooled connections the server ended, one send per request.

Every test goes through the public API against a real server on 127.0.0.1 (pytest-httpserver, or
the raw-socket :class:`RawServer` below when the test needs to see connections and reads).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import pytest
import requests
import requests.adapters
import trustme
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    ErrorCode,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    RetryPolicy,
)

from support import API_KEY, APP_ID, DEFAULT_META, FUTURE_TIMEOUT, Sleeps, requests_to, served

META = "/v1/experiences/metadata"
FETCH = "/v1/experiences/fetch"
META_BODY = json.dumps(DEFAULT_META).encode()
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_or_ca_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected sessions trust the environment: a proxy or CA bundle set where the tests run must
    not change where they connect. Tests that want such variables set them themselves."""
    for name in (*PROXY_VARIABLES, *NO_PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


class CountingAdapter(requests.adapters.HTTPAdapter):
    """A custom adapter (as a mocking library or an app's own transport would mount)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def, override]
        self.sent += 1
        return super().send(request, **kwargs)


def adapter_session() -> requests.Session:
    """A session whose adapter overrides send(): the client goes through ``adapter.send()``."""
    session = requests.Session()
    session.mount("http://", CountingAdapter())
    session.mount("https://", CountingAdapter())
    return session


def make_client(
    base_url: str, route: str = "direct", session: requests.Session | None = None, **options: Any
) -> MoEngagePersonalize:
    """A client on ``route``: ``"direct"`` (the default path, no session) or ``"adapter"`` (an
    injected session with a custom adapter). Retry sleeps are recorded, not slept."""
    if route == "adapter":
        session = adapter_session()
    options.setdefault("sleep", Sleeps())
    config = PersonalizeConfig(**options)
    return MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=base_url, config=config, session=session
    )


ROUTES = pytest.mark.parametrize("route", ["direct", "adapter"])


# a raw HTTP/1.1 server -------------------------------------------------------------------------


class Seen(NamedTuple):
    """One request as the server received it."""

    line: str  # the request line
    headers: dict[str, str]  # names in lower case
    first: int  # bytes returned by the first recv() of this request
    head: int  # bytes of the header block, blank line included
    body: bytes


def _answer(body: bytes, *, close: bool = False) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: %s\r\n" % (
        b"close" if close else b"keep-alive"
    ) + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


class RawServer:
    """HTTP/1.1 on raw sockets at 127.0.0.1, one thread per connection, keeping each open.

    Answers each path of ``bodies`` (metadata and fetch by default) with that JSON body, or every
    request with the raw ``answer`` (closing the connection after it when it says
    ``Connection: close``; ``b""``: closing it without answering). Records every request (:class:`Seen`) and counts connections.
    ``end``: after its first answer each connection waits for :meth:`end_idle`, then ``"close"``
    or ``"reset"`` ends it (a server whose idle timeout is short, or that restarts) or
    ``"stray"`` sends an answer nobody asked for. TLS with ``context``. ``spin``: the first read
    of each request polls without sleeping (plain http only), so that it sees the first segment
    that arrives and nothing later.
    """

    def __init__(
        self,
        *,
        bodies: Mapping[str, bytes] | None = None,
        answer: bytes | None = None,
        end: str | None = None,
        context: ssl.SSLContext | None = None,
        spin: bool = False,
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.bodies = dict(
            bodies
            if bodies is not None
            else {META: META_BODY, FETCH: json.dumps(served("homepage-banner")).encode()}
        )
        self.answer = answer
        self.end = end
        self.context = context
        self.spin = spin
        self.accepted = 0
        self.seen: list[Seen] = []
        self._ended = threading.Event()
        self._end_now = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            pending = b""
            while not self._stop.is_set():
                got = self._read_request(conn, pending)
                if got is None:
                    return
                seen, pending = got
                path = seen.line.split(" ")[1]
                answer = self.answer
                if answer is None:
                    answer = _answer(self.bodies.get(path, b"{}"))
                self.seen.append(seen)  # before the answer: the client may be done right after
                if not answer:
                    return  # closes without answering
                conn.sendall(answer)
                if self.answer is not None and b"connection: close" in answer.lower():
                    return
                if self.end:
                    self._end_idle_connection(conn)
                    if self.end != "stray":
                        return
        except OSError:
            return
        finally:
            conn.close()
            if self.end in ("close", "reset"):
                self._ended.set()

    def _read_request(self, conn: socket.socket, pending: bytes) -> tuple[Seen, bytes] | None:
        data, first = pending, len(pending) or None
        if not data and self.spin:
            data = self._first_bytes(conn)
            first = len(data)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return None
            first = first or len(chunk)
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for text in lines:
            name, _, value = text.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return None
            rest += chunk
        seen = Seen(line, headers, first or 0, len(head) + 4, rest[:length])
        return seen, rest[length:]

    @staticmethod
    def _first_bytes(conn: socket.socket) -> bytes:
        """What the first read gets, polled without sleeping: a read that woke up on the first
        segment could find a second one arrived meanwhile; a busy poll sees the first alone."""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                return conn.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
        raise TimeoutError("no request came")

    def _end_idle_connection(self, conn: socket.socket) -> None:
        self._end_now.wait(5)  # the answer is read by then (a reset would drop it)
        if self.end == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif self.end == "stray":
            conn.sendall(_answer(b'{"stray": true}'))
            self._ended.set()

    def end_idle(self) -> None:
        """End the connection that answered (see ``end``); back once that is done."""
        self._end_now.set()
        assert self._ended.wait(5)
        self._ended.clear()
        self._end_now.clear()
        time.sleep(0.02)  # what the server did reaches the client's socket (loopback)

    def close(self) -> None:
        self._stop.set()
        self._end_now.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


def _trust(tmp_path: pathlib.Path) -> tuple[ssl.SSLContext, requests.Session]:
    """A server context with a certificate for 127.0.0.1 from a local CA, and a plain session
    whose ``verify`` trusts that CA (the client keeps the direct path for it)."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    session = requests.Session()
    session.verify = str(bundle)
    return context, session


# injected sessions and adapters ----------------------------------------------------------------


def test_custom_adapter_sees_every_request(with_meta: HTTPServer, base_url: str) -> None:
    """A session whose adapter overrides send() gets every request through it; the session
    stays the caller's."""
    with_meta.expect_request(FETCH, method="POST").respond_with_json(served("homepage-banner"))
    session = requests.Session()
    adapter = CountingAdapter()
    session.mount("http://", adapter)
    with make_client(base_url, session=session) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        result = client.fetch_experience("homepage-banner").result(FUTURE_TIMEOUT)
    assert [c.experience_key for c in result.experiences] == ["homepage-banner"]
    assert adapter.sent == 2
    assert session.get(base_url + "/experiences/metadata").status_code == 200
    assert adapter.sent == 3


def test_injected_session_headers_are_sent_and_session_kept_open(
    with_meta: HTTPServer, base_url: str
) -> None:
    """Headers set on an injected (plain) session go out with every call, the SDK's own
    credentials and User-Agent win; close() leaves the session open."""
    session = requests.Session()
    session.headers["X-App"] = "shop"
    with make_client(base_url, session=session) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        assert client._transport._adapter is None  # a plain session keeps the direct path
    (req,) = requests_to(with_meta, META)
    assert req.headers["X-App"] == "shop"
    assert req.headers["MOE-APPKEY"] == APP_ID
    assert req.headers["Authorization"].startswith("Basic ")
    assert req.headers["User-Agent"].startswith("moengage-personalize-python/")
    assert session.get(base_url + "/experiences/metadata").status_code == 200


def test_a_session_header_set_to_none_is_not_sent(with_meta: HTTPServer, base_url: str) -> None:
    """requests drops a session header whose value is None; so does the client."""
    session = requests.Session()
    session.headers["X-Dropped"] = None  # type: ignore[assignment]
    session.headers["X-App"] = "shop"
    with make_client(base_url, session=session) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    (req,) = requests_to(with_meta, META)
    assert "X-Dropped" not in req.headers
    assert req.headers["X-App"] == "shop"


@pytest.mark.parametrize("route", ["plain", "adapter"])
def test_client_survives_its_session_pools_being_closed(
    with_meta: HTTPServer, base_url: str, route: str
) -> None:
    """If the injected session's pools are closed under it, the next call still goes through."""
    session = adapter_session() if route == "adapter" else requests.Session()
    with make_client(base_url, session=session, meta_ttl=0) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        session.close()
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
    assert len(requests_to(with_meta, META)) == 2


# answers ---------------------------------------------------------------------------------------


@ROUTES
def test_gzip_answers_are_decoded(httpserver: HTTPServer, base_url: str, route: str) -> None:
    """A gzip-encoded answer is decompressed."""
    body = gzip.compress(META_BODY)
    httpserver.expect_request(META).respond_with_data(
        body, headers={"Content-Encoding": "gzip"}, content_type="application/json"
    )
    with make_client(base_url, route) as client:
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4


@ROUTES
def test_gzip_bomb_is_stopped_at_the_cap(httpserver: HTTPServer, base_url: str, route: str) -> None:
    """A small compressed body that expands past max_response_bytes fails PARSE_ERROR."""
    bomb = gzip.compress(b'{"metadata": {"experiences": [], "pad": "' + b"x" * 5_000_000 + b'"}}')
    httpserver.expect_request(META).respond_with_data(
        bomb, headers={"Content-Encoding": "gzip"}, content_type="application/json"
    )
    with make_client(base_url, route, max_response_bytes=100_000) as client:
        err = client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
    assert isinstance(err, PersonalizeError)
    assert err.code is ErrorCode.PARSE_ERROR
    assert "cap" in err.message


def test_a_compressed_stream_is_stopped_at_the_cap() -> None:
    """A chunked gzip answer far bigger than max_response_bytes is abandoned early: the client
    stops reading near the cap instead of taking the whole stream in first."""
    total = 64 << 20
    sent = [0]
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                stored = zlib.compressobj(0, zlib.DEFLATED, 31)  # no compression: fast
                block = b"x" * (1 << 20)
                for _ in range(total >> 20):
                    piece = stored.compress(block)
                    conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent[0] += len(piece)
                tail = stored.flush()
                conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
            except OSError:
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    try:
        with make_client(
            url, max_response_bytes=100_000, timeout=20, retry=RetryPolicy(max_attempts=1)
        ) as client:
            err = client.fetch_experiences_meta().exception(30)
        thread.join(10)
    finally:
        listener.close()
    assert isinstance(err, PersonalizeError)
    assert err.code is ErrorCode.PARSE_ERROR
    assert sent[0] < total // 2  # socket buffers hold a few MiB, not the whole stream


def test_an_answer_refused_at_the_cap_is_closed_at_once() -> None:
    """An answer declaring more than max_response_bytes on a connection the server will close
    (Connection: close): the client closes its socket at once, even while the caller keeps the
    error, so the server sees the end of the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    saw_the_end: list[bool] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 5000\r\n\r\n" + b" " * 5000
                )
                saw_the_end.append(conn.recv(1) == b"")
            except OSError:  # TimeoutError: the client never closed
                saw_the_end.append(False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    try:
        with make_client(url, max_response_bytes=1000, retry=RetryPolicy(max_attempts=1)) as client:
            err = client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
            thread.join(5)
    finally:
        listener.close()
    assert isinstance(err, PersonalizeError)
    assert err.code is ErrorCode.PARSE_ERROR
    assert saw_the_end == [True]


@ROUTES
def test_answer_without_content_length_is_read_whole(
    httpserver: HTTPServer, base_url: str, route: str
) -> None:
    """A streamed answer (no Content-Length) is read to its end."""

    def streamed(_request: Request) -> Response:
        text = META_BODY.decode()
        return Response(iter([text[:10], text[10:]]), content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(streamed)
    with make_client(base_url, route) as client:
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4


@ROUTES
def test_answer_ended_by_closing_the_connection_is_read_whole(route: str) -> None:
    """An answer with neither Content-Length nor chunks (it ends when the server closes) is
    read whole, and the next call opens a new connection."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    server = RawServer(answer=answer + META_BODY)
    try:
        with make_client(server.base_url, route, meta_ttl=0) as client:
            for _ in range(2):
                assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
        assert (server.accepted, len(server.seen)) == (2, 2)
    finally:
        server.close()


@ROUTES
def test_a_server_closing_without_answering_is_named_so(route: str) -> None:
    """A server that reads the request and closes without a word: NETWORK_ERROR saying so
    (not a reset: nothing was reset), one request with retries off."""
    server = RawServer(answer=b"")
    try:
        with make_client(server.base_url, route, retry=RetryPolicy(max_attempts=1)) as client:
            err = client.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
        assert len(server.seen) == 1
    finally:
        server.close()
    assert isinstance(err, PersonalizeError)
    assert err.code is ErrorCode.NETWORK_ERROR
    assert "closed the connection without answering" in err.message, err.message


def test_a_chunked_answer_is_read_whole_whatever_its_content_length_says() -> None:
    """A chunked answer's Content-Length is to be ignored (RFC 9112): the body is read to the
    last chunk, and the connection stays usable for the next call."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 2\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(META_BODY), META_BODY)
    )
    server = RawServer(answer=answer)
    try:
        with make_client(server.base_url, meta_ttl=0, retry=RetryPolicy(max_attempts=1)) as client:
            for _ in range(2):
                assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
            assert client.stats().retries == 0
        assert (server.accepted, len(server.seen)) == (1, 2)
    finally:
        server.close()


# proxies ---------------------------------------------------------------------------------------


@pytest.fixture
def proxy() -> Iterator[RawServer]:
    """A stand-in proxy on 127.0.0.1: records what reaches it and answers itself (metadata)."""
    server = RawServer(answer=_answer(META_BODY, close=True))
    yield server
    server.close()


def _point_the_environment_at(monkeypatch: pytest.MonkeyPatch, proxy: RawServer) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy.url)


def test_injected_session_proxies_are_used(httpserver: HTTPServer) -> None:
    """Proxies set on an injected session (per client, not via the environment) carry the calls:
    the 'proxy' (a local server) receives them in absolute form; the host is never resolved."""
    httpserver.expect_request(META).respond_with_json(DEFAULT_META)
    session = requests.Session()
    session.proxies = {"http": httpserver.url_for("/").rstrip("/")}
    session.trust_env = False
    with make_client(
        "http://personalize.example.invalid/v1", session=session, allow_insecure_http=True
    ) as client:
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
    (req,) = requests_to(httpserver, META)
    assert req.headers["Host"] == "personalize.example.invalid"


@pytest.mark.parametrize("environment", ["proxies set", "proxies unset"])
def test_proxies_from_the_environment_are_ignored_without_an_injected_session(
    monkeypatch: pytest.MonkeyPatch,
    proxy: RawServer,
    raw_server: RawServer,
    environment: str,
) -> None:
    """HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (either case) do not apply to the session the client
    makes itself: every request goes straight to the service, as with no such variable."""
    if environment == "proxies set":
        _point_the_environment_at(monkeypatch, proxy)
    with make_client(raw_server.base_url) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        result = client.fetch_experience("homepage-banner").result(FUTURE_TIMEOUT)
    assert [c.experience_key for c in result.experiences] == ["homepage-banner"]
    assert [s.line.split(" ")[:2] for s in raw_server.seen] == [["GET", META], ["POST", FETCH]]
    assert raw_server.seen[0].headers["authorization"].startswith("Basic ")
    assert (proxy.accepted, proxy.seen) == (0, [])


def test_an_injected_session_trusting_the_environment_goes_through_its_proxy(
    monkeypatch: pytest.MonkeyPatch, proxy: RawServer, raw_server: RawServer
) -> None:
    """An injected session with trust_env=True (requests' default) follows requests' rules:
    HTTP_PROXY applies, and the request reaches the proxy in absolute form."""
    _point_the_environment_at(monkeypatch, proxy)
    session = requests.Session()
    assert session.trust_env
    with make_client(raw_server.base_url, session=session) as client:
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
    (seen,) = proxy.seen
    assert seen.line == f"GET {raw_server.base_url}/experiences/metadata HTTP/1.1"
    assert seen.headers["host"] == f"127.0.0.1:{raw_server.port}"
    assert (raw_server.accepted, raw_server.seen) == (0, [])


@pytest.mark.parametrize("how", ["trust_env=False", "NO_PROXY"])
def test_an_injected_session_bypasses_the_environments_proxy_as_requests_would(
    monkeypatch: pytest.MonkeyPatch, proxy: RawServer, raw_server: RawServer, how: str
) -> None:
    """requests' semantics both ways: a session that does not trust the environment, or a host
    NO_PROXY lists, goes straight to the service."""
    _point_the_environment_at(monkeypatch, proxy)
    session = requests.Session()
    if how == "NO_PROXY":
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
    else:
        session.trust_env = False
    with make_client(raw_server.base_url, session=session) as client:
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
    assert len(raw_server.seen) == 1
    assert (proxy.accepted, proxy.seen) == (0, [])


# connections -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_default_path_keeps_its_connection_alive(tmp_path: pathlib.Path, tls: bool) -> None:
    """Consecutive calls (GET and POST) reuse one connection, over http and over TLS."""
    context, session = _trust(tmp_path) if tls else (None, None)
    server = RawServer(context=context)
    try:
        assert server.base_url.startswith("https://" if tls else "http://")
        with make_client(server.base_url, session=session, meta_ttl=0) as client:
            assert client._transport._adapter is None  # the direct path
            for _ in range(2):
                assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
            client.fetch_experience("homepage-banner").result(FUTURE_TIMEOUT)
            assert client.stats().requests == 4
        assert server.accepted == 1
        assert [s.line.split(" ")[0] for s in server.seen] == ["GET", "GET", "GET", "POST"]
    finally:
        server.close()


@pytest.mark.parametrize("how", ["close", "reset", "stray"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_pooled_connection_the_server_ended_is_replaced_before_use(
    tmp_path: pathlib.Path, tls: bool, how: str
) -> None:
    """A kept-alive connection the server closed or reset while it sat in the pool, or that
    holds an answer nobody asked for, is found out before a request goes out on it: each call
    opens a new one, with no error and no retry (retries are even switched off), and the server
    sees each request once."""
    context, session = _trust(tmp_path) if tls else (None, None)
    server = RawServer(end=how, context=context)
    try:
        with make_client(
            server.base_url, session=session, meta_ttl=0, retry=RetryPolicy(max_attempts=1)
        ) as client:
            assert client._transport._adapter is None  # the direct path
            for _ in range(3):
                assert client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences
                server.end_idle()
            stats = client.stats()
        assert (server.accepted, len(server.seen)) == (3, 3)
        assert (stats.requests, stats.retries, stats.failures) == (3, 0, {})
    finally:
        server.close()


@pytest.mark.parametrize("size", [100, 300_000])
def test_a_request_goes_out_in_one_send(size: int) -> None:
    """The header block and the body leave together: the server's first read of each request
    holds the whole header block and the body (a small body whole; a large one at least its
    start). A header block sent on its own would arrive alone (http.client sets TCP_NODELAY,
    and the server's first read takes the first segment that lands)."""
    server = RawServer(spin=True)
    try:
        with make_client(server.base_url, meta_ttl=0) as client:
            for i in range(3):
                attributes = {"note": str(i) + "x" * size}
                client.fetch_experience("homepage-banner", attributes=attributes).result(
                    FUTURE_TIMEOUT
                )
    finally:
        server.close()
    assert len(server.seen) == 6
    for seen in server.seen:
        if not seen.body:  # metadata: a GET, the header block alone
            assert seen.first == seen.head
            continue
        assert json.loads(seen.body)["note"].endswith("x" * size)
        if size < 10_000:
            assert seen.first == seen.head + len(seen.body)
        else:
            assert seen.head < seen.first <= seen.head + len(seen.body)
