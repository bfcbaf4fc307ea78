"""No secret in a frame local: the api key and its Basic token never show in an error, its
traceback formatted with every frame's locals (``capture_locals=True``, as ``pytest -l`` or an
error tracker's frame variables would), its cause/context chain, a repr, or a log line.

Every failure path that can be produced on 127.0.0.1 is driven through the public API; the error
is the one the caller gets, from ``future.exception(timeout)``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import pathlib
import socket
import ssl
import struct
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import requests
import requests.adapters
import trustme
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    MoEngagePersonalize,
    NetworkError,
    ParseError,
    PersonalizeConfig,
    PersonalizeError,
    RetryPolicy,
)
from moengage_personalize._http import Headers

from support import DEFAULT_META, FUTURE_TIMEOUT, SilentServer, Sleeps

APP = "WORKSPACE-SECRETS"
KEY = "sk-secret-0123456789"
TOKEN = base64.b64encode(f"{APP}:{KEY}".encode()).decode()
SECRETS = (KEY, TOKEN)
META = "/v1/experiences/metadata"


@pytest.fixture(autouse=True)
def _no_proxy_or_ca_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An injected session trusting the environment would take a proxy or a CA bundle from it
    (REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE even override session.verify): not here."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


# finding secrets -------------------------------------------------------------------------------


def chain(err: BaseException) -> list[BaseException]:
    """``err`` and every exception reachable through ``__cause__`` / ``__context__``."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo and len(found) < 100:
        exc = todo.pop()
        if exc is None or any(exc is f for f in found):
            continue
        found.append(exc)
        todo += [exc.__cause__, exc.__context__]
    return found


def with_locals(exc: BaseException) -> str:
    """``exc`` formatted as a traceback with each frame's locals, its chain included."""
    return "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())


def leaks(texts: dict[str, str]) -> list[str]:
    return [
        f"{secret!r} in {where}"
        for where, text in texts.items()
        for secret in SECRETS
        if secret in text
    ]


def assert_no_secret(err: BaseException, client: MoEngagePersonalize, log: str) -> None:
    texts = {
        "str(err)": str(err),
        "repr(err)": repr(err),
        "repr(client)": repr(client),
        "repr(client._transport)": repr(client._transport),
        "the log": log,
    }
    for i, exc in enumerate(chain(err)):
        where = f"chain[{i}] {type(exc).__name__}"
        texts[f"{where} with locals"] = with_locals(exc)
        texts[f"{where} str/repr"] = f"{exc} {exc!r}"
    assert not leaks(texts)


def raised_by(fn: Callable[[], object]) -> Exception:
    """What ``fn()`` raises (its traceback holds this frame and fn's, no test's locals)."""
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError(f"{fn} raised nothing")


def test_the_check_finds_a_secret_in_a_frame_local_and_headers_hide_theirs() -> None:
    """The check is not vacuous: a frame local holding the token is found; the same value in
    the transport's ``Headers`` is not (its repr is redacted)."""

    def plain() -> None:
        authorization = "Basic " + TOKEN  # noqa: F841 - the local under test
        raise RuntimeError("boom")

    def redacted() -> None:
        headers = Headers({"Authorization": "Basic " + TOKEN})  # noqa: F841
        raise RuntimeError("boom")

    for fn, expected in ((plain, True), (redacted, False)):
        text = with_locals(raised_by(fn))
        assert "boom" in text
        assert bool(leaks({"tb": text})) is expected


# servers on 127.0.0.1 --------------------------------------------------------------------------


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class RawServer:
    """Runs ``handle(conn)`` for each connection accepted on 127.0.0.1 (TLS with ``context``)."""

    def __init__(
        self, handle: Callable[[socket.socket], None], context: ssl.SSLContext | None = None
    ) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.handle = handle
        self.context = context
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        port = self.sock.getsockname()[1]
        return f"{'https' if self.context else 'http'}://127.0.0.1:{port}/v1"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            self.handle(conn)
        conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def reset_mid_answer(conn: socket.socket) -> None:
    read_request(conn)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        b'{"metadata": '
    )
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close_without_answering(conn: socket.socket) -> None:
    read_request(conn)


def reset_while_receiving(conn: socket.socket) -> None:
    """Answers metadata; resets a POST as soon as its first bytes come (the client is still
    sending its large body: the failure surfaces in the send, where the header block is)."""
    while True:
        head = conn.recv(1 << 20)
        if not head:
            return
        if head.startswith(b"POST"):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
        body = json.dumps(DEFAULT_META).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


def a_trusted_ca(tmp_path: pathlib.Path) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for 127.0.0.1 from a local CA, and that CA's file."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context, str(bundle)


class CountingAdapter(requests.adapters.HTTPAdapter):
    """A custom adapter: the client goes through ``adapter.send()``."""

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def, override]
        return super().send(request, **kwargs)


def adapter_session() -> requests.Session:
    session = requests.Session()
    session.mount("http://", CountingAdapter())
    session.mount("https://", CountingAdapter())
    return session


# the failure paths -----------------------------------------------------------------------------


class Case(NamedTuple):
    base_url: str
    kind: type[PersonalizeError]  # exactly
    code: ErrorCode
    says: tuple[str, ...]  # the message holds one of these: the failure took the path meant
    options: dict[str, Any] = {}  # noqa: RUF012 - never changed
    session: requests.Session | None = None
    attributes: dict[str, str] | None = None  # given: fetch an experience, else metadata


class Scene:
    """What a case may use; servers it starts are closed after the test."""

    def __init__(self, httpserver: HTTPServer, tmp_path: pathlib.Path) -> None:
        self.httpserver = httpserver
        self.tmp_path = tmp_path
        self.stack = contextlib.ExitStack()

    def raw(self, handle: Callable[[socket.socket], None], context: Any = None) -> str:
        server = RawServer(handle, context)
        self.stack.callback(server.close)
        return server.base_url

    def silent(self) -> str:
        server = SilentServer()
        self.stack.callback(server.close)
        return server.base_url

    def answering(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        **headers: str,
    ) -> str:
        """The service answering metadata requests with ``status`` (an error envelope)."""
        self.httpserver.expect_request(META).respond_with_data(
            body or json.dumps({"title": "nope", "description": "no"}).encode(),
            status=status,
            headers=headers,
            content_type=content_type,
        )
        return self.httpserver.url_for("/v1")

    def streamed(self, size: int) -> str:
        def handler(_request: Request) -> Response:
            return Response(iter([b"[", b"0," * (size // 2), b"0]"]), content_type="text/json")

        self.httpserver.expect_request(META).respond_with_handler(handler)
        return self.httpserver.url_for("/v1")


def _gzip_bomb(scene: Scene) -> str:
    body = gzip.compress(b"[" + b"0," * 500_000 + b"0]")  # ~1 KB, 1 MB decoded
    assert len(body) < BOMB_CAP["max_response_bytes"]
    return scene.answering(200, body, **{"Content-Encoding": "gzip"})


def _bad_certificate(scene: Scene) -> str:
    context, _ = a_trusted_ca(scene.tmp_path)  # a CA the client does not trust
    return scene.raw(close_without_answering, context)


def _missing_ca_bundle(scene: Scene) -> requests.Session:
    session = requests.Session()
    session.verify = str(scene.tmp_path / "no-such-ca.pem")
    return session


def _proxy_refusing() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": f"http://127.0.0.1:{closed_port()}"}
    return session


SMALL_CAP = {"max_response_bytes": 1000}
BOMB_CAP = {"max_response_bytes": 5000}
BIG_ATTRIBUTES = {"note": "x" * (8 << 20)}  # more than socket buffers hold
NETWORK = (NetworkError, ErrorCode.NETWORK_ERROR)
DEADLINE = (DeadlineExceededError, ErrorCode.NETWORK_ERROR, ("deadline",))
TOO_BIG = (ParseError, ErrorCode.PARSE_ERROR, ("cap",))
REFUSED = (*NETWORK, ("connection refused",))
RESET = (*NETWORK, ("connection reset",))
NO_ANSWER = (*NETWORK, ("without answering",))
# through urllib3, a reset while sending surfaces as the answer that never came
RESET_OR_NO_ANSWER = (*NETWORK, ("connection reset", "without answering"))
SILENT = {"timeout": 0.3}


def _refused(scene: Scene) -> str:
    return f"http://127.0.0.1:{closed_port()}/v1"


CASES: dict[str, Callable[[Scene], Case]] = {
    "connection refused": lambda s: Case(_refused(s), *REFUSED),
    "connection reset mid-answer": lambda s: Case(s.raw(reset_mid_answer), *RESET),
    "server closes without answering": lambda s: Case(s.raw(close_without_answering), *NO_ANSWER),
    "connection reset while sending": lambda s: Case(
        s.raw(reset_while_receiving), *RESET, attributes=BIG_ATTRIBUTES
    ),
    "401": lambda s: Case(s.answering(401), HTTPStatusError, ErrorCode.HTTP_ERROR, ("HTTP 401",)),
    "500": lambda s: Case(
        s.answering(500), HTTPStatusError, ErrorCode.UNKNOWN_SERVER_ERROR, ("HTTP 500",)
    ),
    "429": lambda s: Case(
        s.answering(429, **{"Retry-After": "0"}),
        HTTPStatusError,
        ErrorCode.HTTP_ERROR,
        ("HTTP 429",),
    ),
    "non-JSON answer": lambda s: Case(
        s.answering(200, b"<html>hi</html>", content_type="text/html"),
        ParseError,
        ErrorCode.PARSE_ERROR,
        ("not JSON",),
    ),
    "deadline on a silent server": lambda s: Case(s.silent(), *DEADLINE, options=SILENT),
    "oversize answer (declared)": lambda s: Case(
        s.answering(200, b"[" + b"0," * 5000 + b"0]"), *TOO_BIG, options=SMALL_CAP
    ),
    "oversize answer (streamed)": lambda s: Case(s.streamed(10_000), *TOO_BIG, options=SMALL_CAP),
    "oversize answer (gzip bomb)": lambda s: Case(_gzip_bomb(s), *TOO_BIG, options=BOMB_CAP),
    "bad TLS certificate": lambda s: Case(_bad_certificate(s), *NETWORK, ("TLS failed",)),
    "CA bundle file missing": lambda s: Case(
        _bad_certificate(s), *NETWORK, ("No such file",), session=_missing_ca_bundle(s)
    ),
    "adapter: connection refused": lambda s: Case(_refused(s), *REFUSED, session=adapter_session()),
    "adapter: reset mid-answer": lambda s: Case(
        s.raw(reset_mid_answer), *RESET, session=adapter_session()
    ),
    "adapter: reset while sending": lambda s: Case(
        s.raw(reset_while_receiving),
        *RESET_OR_NO_ANSWER,
        session=adapter_session(),
        attributes=BIG_ATTRIBUTES,
    ),
    "adapter: 500": lambda s: Case(
        s.answering(500),
        HTTPStatusError,
        ErrorCode.UNKNOWN_SERVER_ERROR,
        ("HTTP 500",),
        session=adapter_session(),
    ),
    "adapter: oversize answer (streamed)": lambda s: Case(
        s.streamed(10_000), *TOO_BIG, options=SMALL_CAP, session=adapter_session()
    ),
    "adapter: deadline on a silent server": lambda s: Case(
        s.silent(), *DEADLINE, options=SILENT, session=adapter_session()
    ),
    "proxy refusing": lambda s: Case(
        s.httpserver.url_for("/v1"), *REFUSED, session=_proxy_refusing()
    ),
}


@pytest.fixture
def scene(httpserver: HTTPServer, tmp_path: pathlib.Path) -> Iterator[Scene]:
    scene = Scene(httpserver, tmp_path)
    with scene.stack:
        yield scene


@pytest.mark.parametrize("retries", [1, 3], ids=["one attempt", "retried"])
@pytest.mark.parametrize("name", list(CASES))
def test_no_secret_in_a_frame_local(
    scene: Scene, caplog: pytest.LogCaptureFixture, name: str, retries: int
) -> None:
    """The failure the caller gets (retried or not) shows neither the key nor its Basic token:
    not in its message, its repr, its traceback's locals, nor anywhere down its chain; nor do
    the client's and transport's reprs, nor the debug log."""
    case = CASES[name](scene)
    sleeps = Sleeps()
    config = PersonalizeConfig(
        sleep=sleeps, retry=RetryPolicy(max_attempts=retries), **case.options
    )
    caplog.set_level(logging.DEBUG, logger="moengage_personalize")
    with MoEngagePersonalize(
        APP, api_key=KEY, base_url=case.base_url, config=config, session=case.session
    ) as client:
        if case.attributes is None:
            future = client.fetch_experiences_meta()
        else:
            future = client.fetch_experience("homepage-banner", attributes=case.attributes)
        err = future.exception(FUTURE_TIMEOUT)
        assert type(err) is case.kind, repr(err)
        assert err.code is case.code
        assert any(s in err.message for s in case.says), err.message
        if err.__traceback__ is not None:  # not the watchdog's: frames with locals to show
            assert "self = <Transport" in with_locals(err)
        assert_no_secret(err, client, caplog.text)
    assert_no_secret(err, client, caplog.text)


def test_no_secret_when_an_experience_fetch_fails(scene: Scene) -> None:
    """A fetch (metadata, then the experience) failing on a 500 shows no secret either."""
    scene.httpserver.expect_request(META).respond_with_json(DEFAULT_META)
    scene.httpserver.expect_request("/v1/experiences/fetch").respond_with_json({}, status=500)
    config = PersonalizeConfig(sleep=Sleeps())
    with MoEngagePersonalize(
        APP, api_key=KEY, base_url=scene.httpserver.url_for("/v1"), config=config
    ) as client:
        err = client.fetch_experience("homepage-banner").exception(FUTURE_TIMEOUT)
        assert isinstance(err, HTTPStatusError)
        assert_no_secret(err, client, "")


# the constructor -------------------------------------------------------------------------------


def _constructor_error() -> Exception:
    err = raised_by(lambda: MoEngagePersonalize(APP, api_key=KEY, base_url="ftp://x"))
    assert type(err) is ValueError
    return err


def _safe_locals(exc: BaseException) -> str:
    """Every frame's locals, each repr guarded (as pytest -l, Sentry and Python >= 3.12 do)."""
    lines = []
    for exc_ in chain(exc):
        for frame, _ in traceback.walk_tb(exc_.__traceback__):
            for name, value in frame.f_locals.items():
                try:
                    text = repr(value)
                except Exception as failed:
                    text = f"<repr failed: {failed!r}>"
                lines.append(f"{frame.f_code.co_name}: {name} = {text}")
    return "\n".join(lines)


def test_a_constructor_error_names_no_secret() -> None:
    """An argument error of the constructor says what is wrong without the key."""
    err = _constructor_error()
    assert "ftp://x" in str(err)
    assert not leaks({"str(err)": str(err), "repr(err)": repr(err)})


def test_a_constructor_error_formats_with_locals() -> None:
    """A half-built client's repr works: traceback's capture_locals calls repr() unguarded
    before Python 3.12, so a repr that raised would make the error unprintable with locals."""
    text = with_locals(_constructor_error())
    assert "ftp://x" in text
    assert "self = <MoEngagePersonalize" in text


def test_a_constructor_error_shows_no_secret_in_its_frames_locals() -> None:
    """``api_key`` is a parameter of the constructor: the error it raises (a bad base URL) shows
    no key in its frames' locals, formatted with capture_locals or each repr guarded (as
    pytest -l and error trackers do)."""
    err = _constructor_error()
    texts = {"capture_locals": with_locals(err), "guarded frame locals": _safe_locals(err)}
    assert "__init__: " in texts["guarded frame locals"]  # the constructor's frame is there
    assert not leaks(texts), texts["guarded frame locals"]


# deeper: what stays reachable from the error ------------------------------------------------------


def reachable(err: BaseException) -> list[BaseException]:
    """Every exception the error keeps alive: its chain, and exceptions held in ``args`` or a
    ``reason`` (urllib3 and requests wrap the original that way)."""
    found: list[BaseException] = []
    todo: list[object] = [err]
    while todo and len(found) < 200:
        exc = todo.pop()
        if not isinstance(exc, BaseException) or any(exc is f for f in found):
            continue
        found.append(exc)
        todo += [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]
    return found


DEEP_CASES = [
    "connection refused",
    "connection reset while sending",
    "bad TLS certificate",
    "adapter: connection refused",
    "adapter: reset while sending",
    "proxy refusing",
]


@pytest.mark.parametrize("name", DEEP_CASES)
def test_no_frame_with_a_secret_stays_reachable_from_the_error(scene: Scene, name: str) -> None:
    """Stricter than formatting: no frame kept alive by the error (through its chain, or an
    exception it holds in ``args`` / ``reason``) holds the key, each local's repr guarded. The
    README promises a cause "without the frames" that hold the header block."""
    case = CASES[name](scene)
    config = PersonalizeConfig(sleep=Sleeps(), retry=RetryPolicy(max_attempts=1), **case.options)
    with MoEngagePersonalize(
        APP, api_key=KEY, base_url=case.base_url, config=config, session=case.session
    ) as client:
        if case.attributes is None:
            future = client.fetch_experiences_meta()
        else:
            future = client.fetch_experience("homepage-banner", attributes=case.attributes)
        err = future.exception(FUTURE_TIMEOUT)
    assert type(err) is case.kind, repr(err)
    texts = {f"{type(e).__name__} frames": _safe_locals(e) for e in reachable(err)}
    assert not leaks(texts), [f"{type(e).__name__}" for e in reachable(err)]
