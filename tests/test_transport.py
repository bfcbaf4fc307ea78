"""Transport: injected sessions and adapters, compressed answers, connection reuse."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import pathlib
import socket
import ssl
import struct
import threading
import time
import types
from typing import Any

import pytest
import requests
import requests.adapters
import trustme
import urllib3.exceptions
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    ErrorCode,
    MoEngagePersonalize,
    PersonalizeConfig,
    PersonalizeError,
    RetryPolicy,
    _transport,
)
from moengage_personalize._transport import Running, _parse_headers, _releasing, running

from support import API_KEY, APP_ID, DEFAULT_META, FUTURE_TIMEOUT, requests_to

META = "/v1/experiences/metadata"


class CountingAdapter(requests.adapters.HTTPAdapter):
    """A custom adapter (as a mocking library or an app's own transport would mount)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def, override]
        self.sent += 1
        return super().send(request, **kwargs)


def test_custom_adapter_sees_every_request(with_meta: HTTPServer, base_url: str) -> None:
    """A session whose adapter overrides send() gets every request through it."""
    session = requests.Session()
    adapter = CountingAdapter()
    session.mount("http://", adapter)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, session=session) as c:
        c.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    assert adapter.sent == 1
    session.get(base_url + "/experiences/metadata").close()  # the session stays the caller's


def test_injected_session_headers_are_sent_and_session_kept_open(
    with_meta: HTTPServer, base_url: str
) -> None:
    """Headers set on an injected session go out with every call; close() leaves it open."""
    session = requests.Session()
    session.headers["X-App"] = "shop"
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, session=session) as c:
        c.fetch_experiences_meta().result(FUTURE_TIMEOUT)
    (req,) = requests_to(with_meta, META)
    assert req.headers["X-App"] == "shop"
    assert "python-requests" not in req.headers["User-Agent"]
    assert session.get(base_url + "/experiences/metadata").status_code == 200


def test_client_survives_its_session_pools_being_closed(
    with_meta: HTTPServer, base_url: str
) -> None:
    """If the injected session's pools are closed under it, the client resolves a new one."""
    session = requests.Session()
    config = PersonalizeConfig(meta_ttl=0)
    with MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=base_url, session=session, config=config
    ) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        session.close()
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4


def test_gzip_answers_are_decoded(httpserver: HTTPServer, client: MoEngagePersonalize) -> None:
    """A gzip-encoded answer is decompressed."""
    body = gzip.compress(json.dumps(DEFAULT_META).encode())
    httpserver.expect_request(META).respond_with_data(
        body, headers={"Content-Encoding": "gzip"}, content_type="application/json"
    )
    assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4


def test_gzip_bomb_is_stopped_at_the_cap(httpserver: HTTPServer, base_url: str) -> None:
    """A small compressed body that expands past max_response_bytes fails PARSE_ERROR."""
    bomb = gzip.compress(b'{"metadata": {"experiences": [], "pad": "' + b"x" * 5_000_000 + b'"}}')
    httpserver.expect_request(META).respond_with_data(
        bomb, headers={"Content-Encoding": "gzip"}, content_type="application/json"
    )
    config = PersonalizeConfig(max_response_bytes=100_000)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as c:
        err = c.fetch_experiences_meta().exception(FUTURE_TIMEOUT)
    assert isinstance(err, PersonalizeError)
    assert err.code is ErrorCode.PARSE_ERROR


def test_answer_without_content_length_is_read_whole(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """A chunked answer (no Content-Length) is read to its end."""

    def chunked(_request: Request) -> Response:
        text = json.dumps(DEFAULT_META)
        return Response(iter([text[:10], text[10:]]), content_type="application/json")

    httpserver.expect_request(META).respond_with_handler(chunked)
    assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4


def test_injected_session_proxies_are_used(httpserver: HTTPServer) -> None:
    """Proxies set on an injected session (per client, not via the environment) carry the calls:
    the 'proxy' (a local server) receives them in absolute form."""
    httpserver.expect_request(META).respond_with_json(DEFAULT_META)
    session = requests.Session()
    session.proxies = {"http": httpserver.url_for("/").rstrip("/")}
    session.trust_env = False
    config = PersonalizeConfig(allow_insecure_http=True)
    with MoEngagePersonalize(
        APP_ID,
        api_key=API_KEY,
        base_url="http://personalize.example.invalid/v1",
        session=session,
        config=config,
    ) as client:
        assert len(client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences) == 4
    (req,) = requests_to(httpserver, META)
    assert req.headers["Host"] == "personalize.example.invalid"


# response headers --------------------------------------------------------------------------------

_HEADER_BLOCKS = {
    "plain": b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    "bare_newlines": b"Content-Type: application/json\nX-A: 1\n\n",
    "duplicates": b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Request-Id: r1\r\n\r\n",
    "no_space_and_empty": b"X-A:1\r\nX-Empty:\r\nX-Spaces:   padded  \r\n\r\n",
    "tabs": b"X-Tab:\tvalue\t\r\n\r\n",
    "folded": b"X-Long: first\r\n  second\r\n\tthird\r\nX-Next: n\r\n\r\n",
    "colon_in_value": b"Location: http://h:1/p?q=a:b\r\n\r\n",
    "empty_name": b": nameless\r\nX-A: 1\r\n\r\n",
    "malformed_line": b"X-A: 1\r\nNot a header line\r\nX-B: 2\r\n\r\n",
    "space_in_name": b"X-A: 1\r\nBad Name: 2\r\nX-C: 3\r\n\r\n",
    "latin1": "X-Name: caf\u00e9\r\n\r\n".encode("latin-1"),
    "no_headers": b"\r\n",
    "eof_without_blank_line": b"X-A: 1\r\n",
    "first_line_folded": b" orphan\r\nX-A: 1\r\n\r\n",
    "folded_after_nameless": b"X-A: 1\r\n: x\r\n cont\r\nX-B: 2\r\n\r\n",
    "envelope_first": b"From someone\r\nX-A: 1\r\n\r\n",
    "envelope_middle": b"X-A: 1\r\nFrom someone\r\nX-B: 2\r\n\r\n",
    "envelope_last": b"X-A: 1\r\nFrom someone\r\n\r\n",
    "envelope_last_then_junk": b"X-A: 1\r\nFrom someone\r\njunk\r\n\r\n",
    "bare_cr_inside": b"X-A: 1\rX-B: 2\r\nX-C: 3\r\n\r\n",
    "bare_cr_at_end": b"X-A: 1\r\nX-B: 2\r",
    "other_separators": b"X-A: a\x0bb\x0cc\x1cd\x85e\r\n\r\n",
}


@pytest.mark.parametrize("block", list(_HEADER_BLOCKS.values()), ids=list(_HEADER_BLOCKS))
def test_lean_header_parser_matches_http_client(block: bytes) -> None:
    """The transport's header parser gives what http.client's (the email parser) gives: names,
    values, order, and any line it cannot take left in the payload; it reads the same bytes."""
    expected_fp, lean_fp = io.BytesIO(block + b"BODY"), io.BytesIO(block + b"BODY")
    expected = http.client.parse_headers(expected_fp)
    lean = _parse_headers(lean_fp)
    assert lean.items() == expected.items()
    assert (lean.get_payload() or "") == (expected.get_payload() or "")
    assert lean_fp.read() == expected_fp.read()
    assert lean.get("content-type") == expected.get("content-type")


def test_lean_header_parser_keeps_http_clients_limits() -> None:
    """Over 100 header lines or a line over 64 KiB: the errors http.client raises."""
    too_many = b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        _parse_headers(io.BytesIO(too_many))
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        http.client.parse_headers(io.BytesIO(too_many))
    too_long = b"X-A: " + b"a" * 70_000 + b"\r\n\r\n"
    with pytest.raises(http.client.LineTooLong):
        _parse_headers(io.BytesIO(too_long))


# running calls and their sockets -----------------------------------------------------------------


def test_a_connection_given_back_to_the_pool_is_no_longer_the_calls() -> None:
    """urllib3 gives a connection back as soon as its body is read; from then on aborting the
    call that used it must not touch it (another call may be using it)."""
    left, right = socket.socketpair()
    try:
        conn = types.SimpleNamespace(sock=left)
        run = Running(time.monotonic() + 5)
        run.attach(conn)
        put: list[object] = []
        _releasing(put.append)(conn)
        assert put == [conn]
        run.abort()
        left.sendall(b"still open")
        assert right.recv(64) == b"still open"
    finally:
        left.close()
        right.close()


def test_aborting_a_call_shuts_its_socket_and_never_raises() -> None:
    """abort() shuts the socket the call is using; a socket of another kind is shut its own way,
    and nothing it raises escapes (the deadline thread calls it)."""
    left, right = socket.socketpair()
    try:
        run = Running(time.monotonic() + 5)
        run.attach(types.SimpleNamespace(sock=left))
        run.abort()
        assert right.recv(64) == b""  # the peer sees the shutdown
        assert run.aborted
    finally:
        left.close()
        right.close()

    class Odd:
        def shutdown(self, how: int) -> None:
            raise TypeError("not a socket")

    other = Running(time.monotonic() + 5)
    other.attach(types.SimpleNamespace(sock=Odd()))
    other.abort()  # no exception


def test_a_connect_that_ends_after_the_deadline_passed_is_not_used(
    with_meta: HTTPServer, base_url: str
) -> None:
    """A call aborted while its connection was being opened does not go on to read from it."""
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url)
    try:
        pool = client._transport._connection_pool()
        conn = pool._new_conn()
        run = Running(time.monotonic() + 5)
        run.abort()
        previous = running(run)
        try:
            with pytest.raises(urllib3.exceptions.ConnectTimeoutError):
                conn.connect()
        finally:
            running(previous)
        assert conn.sock is None
    finally:
        client.close()


# pooled connections and their sockets -----------------------------------------------------------


class MetaServer:
    """Answers ``GET`` with DEFAULT_META (or ``answer``), keeping each connection open. ``end``: after its
    first answer (keep-alive announced all the same), each connection waits for :meth:`end_idle`
    to ``"close"`` or ``"reset"`` it, as a server does whose idle timeout is short, or that
    restarts. TLS with ``context``."""

    def __init__(
        self,
        *,
        end: str | None = None,
        context: ssl.SSLContext | None = None,
        answer: bytes | None = None,
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.end = end
        self.answer = answer
        self.context = context
        self.accepted = 0
        self.answered = 0
        self.closed = threading.Event()
        self._end_now = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        body = json.dumps(DEFAULT_META).encode()
        answer = self.answer or (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            data = b""
            while not self._stop.is_set():
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                self.answered += 1  # before the answer: the client may be done right after it
                conn.sendall(answer)
                if self.end:
                    self._end_now.wait(5)  # the answer is read by then (a reset drops it)
                    if self.end == "reset":
                        linger = struct.pack("ii", 1, 0)
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    return
        except OSError:
            return
        finally:
            conn.close()
            self.closed.set()

    def end_idle(self) -> None:
        """End the connection that answered (see ``end``); back once it is closed."""
        self._end_now.set()
        assert self.closed.wait(5)
        self.closed.clear()
        self._end_now.clear()

    def close(self) -> None:
        self._stop.set()
        self._end_now.set()
        self._thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_pooled_connection_the_server_ended_is_replaced_before_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, tls: bool, how: str
) -> None:
    """A kept-alive connection the server closed or reset while it sat in the pool is found
    out before a request goes out on it: each call opens a new one, with no error and no
    retry (retries are even switched off), and the server sees each request once."""
    context = _trusted_tls(monkeypatch, tmp_path) if tls else None
    server = MetaServer(end=how, context=context)
    config = PersonalizeConfig(retry=RetryPolicy(max_attempts=1))
    try:
        with MoEngagePersonalize(
            APP_ID, api_key=API_KEY, base_url=server.base_url, config=config
        ) as client:
            transport = client._transport
            for _ in range(3):
                deadline = time.monotonic() + FUTURE_TIMEOUT
                answer = transport.request("GET", "/experiences/metadata", None, deadline, what="m")
                assert answer == DEFAULT_META
                server.end_idle()
            assert (server.accepted, server.answered) == (3, 3)
            assert transport.retries.value == 0
    finally:
        server.close()


def _trusted_tls(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> ssl.SSLContext:
    """A server context with a certificate from a local CA the client trusts (through
    REQUESTS_CA_BUNDLE, as an app would)."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    return context


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_pooled_sockets_skip_unchanged_timeouts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, tls: bool
) -> None:
    """The pooled connection's socket (TLS too: a local CA trusted through REQUESTS_CA_BUNDLE,
    as an app would) is the lean one: calls go through and reuse it, and its timeout still
    changes when asked."""
    context = _trusted_tls(monkeypatch, tmp_path) if tls else None
    server = MetaServer(context=context)
    try:
        assert server.base_url.startswith("https://" if tls else "http://")
        with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=server.base_url) as client:
            transport = client._transport
            for _ in range(3):
                deadline = time.monotonic() + FUTURE_TIMEOUT
                assert transport.request("GET", "/experiences/metadata", None, deadline, what="m")
            (conn,) = [c for c in transport._connection_pool().pool.queue if c is not None]
            lean = _transport._LeanSSLSocket if tls else _transport._LeanSocket
            assert type(conn.sock) is lean
            sock = conn.sock
            for value in (None, 1.5, 1.5, None, 2):
                sock.settimeout(value)
                assert sock.gettimeout() == value
            assert client.fetch_experiences_meta().result(FUTURE_TIMEOUT).experiences is not None
            assert conn.sock is sock  # one connection all along
        assert (server.accepted, server.answered) == (1, 4)
    finally:
        server.close()


class _CountingSocket(_transport._LeanSocket):
    __slots__ = ()
    sent: list[int] = []  # noqa: RUF012 - the test reads it

    def sendall(self, data: Any, *args: Any) -> None:
        type(self).sent.append(len(data))
        super().sendall(data, *args)


@pytest.mark.parametrize("size", [100, 300_000])
def test_a_request_goes_out_in_one_send(
    httpserver: HTTPServer, base_url: str, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The header block and the body leave in one system call, for a fetch's small body and
    for an events request of a few hundred KiB alike (each call releases the GIL)."""
    monkeypatch.setattr(_CountingSocket, "sent", [])
    monkeypatch.setitem(_transport._LEAN, socket.socket, _CountingSocket)
    httpserver.expect_request("/v1/experiences/events", method="POST").respond_with_json({})
    body = b'{"elements":["' + b"x" * size + b'"]}'
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url) as client:
        deadline = time.monotonic() + FUTURE_TIMEOUT
        client._transport.send_once(
            "POST", "/experiences/events", body, deadline, what="events", budget=FUTURE_TIMEOUT
        )
    (request,) = requests_to(httpserver, "/v1/experiences/events")
    assert request.data == body
    (sent,) = _CountingSocket.sent
    assert sent > len(body)  # the header block with it


def test_a_chunked_answer_is_read_whole_whatever_its_content_length_says() -> None:
    """A chunked answer's Content-Length is to be ignored (RFC 9112): the body is read to the
    last chunk, and the connection stays usable for the next call."""
    body = json.dumps(DEFAULT_META).encode()
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 2\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    server = MetaServer(answer=answer)
    config = PersonalizeConfig(retry=RetryPolicy(max_attempts=1))
    try:
        with MoEngagePersonalize(
            APP_ID, api_key=API_KEY, base_url=server.base_url, config=config
        ) as client:
            for _ in range(2):
                deadline = time.monotonic() + FUTURE_TIMEOUT
                got = client._transport.request(
                    "GET", "/experiences/metadata", None, deadline, what="m"
                )
                assert got == DEFAULT_META
        assert (server.accepted, server.answered) == (1, 2)
    finally:
        server.close()


def test_body_reads_ask_for_what_is_missing(client: MoEngagePersonalize) -> None:
    """Each read asks for no more than the declared length still missing; an empty or
    undeclared body is read until its end shows (urllib3 closes the answer only then, before
    the connection goes back to the pool)."""

    def reads(pieces: list[bytes], expected: int | None) -> tuple[bytes, list[int]]:
        asked: list[int] = []
        rest = iter(pieces)

        def read(n: int) -> bytes:
            asked.append(n)
            return next(rest, b"")

        call = _transport._Call("GET", "/x", None, time.monotonic() + 5, "m", 5.0, "timeout")
        return client._transport._read_body(read, call, expected), asked

    assert reads([b"a" * 60, b"b" * 40], 100) == (b"a" * 60 + b"b" * 40, [100, 40])
    assert reads([], 0) == (b"", [_transport._CHUNK])
    assert reads([b"abc"], None) == (b"abc", [_transport._CHUNK, _transport._CHUNK])
