"""Fuzzing the local Personalize server (issue 5, "Security"): no request makes it answer 500,
raise out of the WSGI application, read unbounded data, hang or stop serving.

- In-process: random PEP 3333 environs (methods, paths, queries, headers, credentials, lengths,
  bodies) straight into :class:`PersonalizeApp`, whose ``wsgi.input`` counts what is read.
- Real sockets: raw, malformed HTTP to a :class:`PersonalizeServer` on 127.0.0.1 (bounded
  socket timeouts); after each exchange a valid request must still be answered.
- The api key comparison: ``hmac.compare_digest`` for both Basic auth parts, always both.

Not part of the default run: it needs hypothesis (skipped without it). Profiles through
``MOENGAGE_FUZZ_PROFILE``: ``quick`` (default, seconds) and ``ci`` (the ``fuzz`` tox env,
about five minutes).
"""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis")

import ast
import base64
import contextlib
import importlib.util
import inspect
import json
import logging
import re
import socket
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import fuzz_support as fz
from hypothesis import given
from hypothesis import strategies as st

from moengage_personalize.server import PersonalizeApp, PersonalizeServer
from moengage_personalize.server import _app as app_module

# pytest-timeout (the project's 60 s per test) would cut the ci profile's long runs short
if importlib.util.find_spec("pytest_timeout") is not None:
    pytestmark = pytest.mark.timeout(1200 if fz.PROFILE == "ci" else 120)

SMALL_LIMIT = 512
MARGIN = 64  # bytes past limit + 1 that still pass (the app reads at most limit + 1)


class _Clock:
    """A clock that moves 7 s per reading (rate-limit windows come and go)."""

    def __init__(self) -> None:
        self.now = 1_725_000_000.0

    def __call__(self) -> float:
        self.now += 7.0
        return self.now


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, PersonalizeApp]]:
    """Three configurations of the sample workspace: the default body limit, a small one, and
    a rate limit of 3 a minute on a clock that moves."""
    made = {
        "default": PersonalizeApp(fz.DEFINITIONS),
        "small": PersonalizeApp(fz.DEFINITIONS, max_body_bytes=SMALL_LIMIT),
        "rate-limited": PersonalizeApp(
            fz.DEFINITIONS, max_body_bytes=4096, rate_limit=3, clock=_Clock()
        ),
    }
    yield made
    for application in made.values():
        application.close()


class _Failures(logging.Handler):
    """The exceptions the application logged as its own bugs (the cause of a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


@pytest.fixture(scope="module", autouse=True)
def _failures() -> Iterator[_Failures]:
    logger = logging.getLogger("moengage_personalize.server")
    handler = _Failures()
    logger.addHandler(handler)
    _FAILURES[:] = [handler]
    yield handler
    logger.removeHandler(handler)
    _FAILURES.clear()


_FAILURES: list[_Failures] = []


def _run(application: PersonalizeApp, request: fz.Request) -> fz.Answer:
    """One request through the app; every invariant checked. A 500 re-raises the exception
    the app logged, so hypothesis tells distinct bugs apart by where they were raised."""
    stream = fz.BoundedInput(
        request.body,
        application.max_body_bytes + 1 + MARGIN,
        endless=request.endless,
        broken_after=request.broken_after,
    )
    failures = _FAILURES[0] if _FAILURES else None
    if failures is not None:
        failures.errors.clear()
    answer = fz.call(application, request.environ(stream))
    if answer.status == 500 and failures is not None and failures.errors:
        raise failures.errors[-1]
    fz.check_answer(answer, request, stream)
    return answer


def _authenticated(method: str, path: str, body: bytes = b"", query: str = "") -> fz.Request:
    return fz.Request(
        method=method,
        path=path,
        query=query,
        headers={
            "HTTP_MOE_APPKEY": fz.WORKSPACE,
            "HTTP_AUTHORIZATION": fz.VALID_AUTH,
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
        },
        body=body,
    )


# --- in-process: the WSGI application --------------------------------------------------------


@fz.budget(quick=150, ci=20000)
@given(data=st.data())
def test_any_request_gets_a_contract_answer(apps: dict[str, PersonalizeApp], data: Any) -> None:
    """Random method, path, query, remote address, headers and body (valid credentials half
    the time): a well-formed answer from the contract's statuses, never a 500, never an
    exception, an error envelope for every 4xx, never more than the body limit read."""
    name = data.draw(st.sampled_from(sorted(apps)), label="app")
    application = apps[name]
    request = data.draw(fz.requests(application.max_body_bytes), label="request")
    _run(application, request)


@fz.budget(quick=60, ci=12000)
@given(body=st.one_of(fz.fetch_bodies().map(fz.dump), fz.wild_values.map(fz.dump)))
def test_fetch_bodies_with_valid_credentials(apps: dict[str, PersonalizeApp], body: str) -> None:
    """Near-valid and random fetch bodies, authenticated: 200, a 400 envelope (or 413 for a
    deeply nested document over the limit); and the decision log they feed stays readable
    (GET /_local/decisions answers 200)."""
    application = apps["default"]
    data = body.encode("utf-8", "surrogatepass")
    answer = _run(application, _authenticated("POST", "/v1/experiences/fetch", data))
    assert answer.status in (200, 400, 413), answer.body
    if answer.status == 200:
        assert isinstance(json.loads(answer.body)["experiences"], dict)
    decisions = _run(application, _authenticated("GET", "/_local/decisions", query="limit=30"))
    assert decisions.status == 200


@fz.budget(quick=60, ci=7000)
@given(body=st.one_of(fz.event_bodies().map(fz.dump), fz.wild_values.map(fz.dump)))
def test_event_bodies_with_valid_credentials(apps: dict[str, PersonalizeApp], body: str) -> None:
    """Near-valid and random events bodies, authenticated: 200, a 400 envelope (or 413 for a
    deeply nested document over the limit); the stored events stay readable (GET
    /_local/events and /_local/stats)."""
    application = apps["default"]
    data = body.encode("utf-8", "surrogatepass")
    answer = _run(application, _authenticated("POST", "/v1/experiences/events", data))
    assert answer.status in (200, 400, 413), answer.body
    if answer.status == 400:
        document = json.loads(answer.body)
        assert document["title"] in ("Invalid Field Value", "Malformed JSON"), document
    for path in ("/_local/events", "/_local/stats"):
        assert _run(application, _authenticated("GET", path, query="limit=5")).status == 200


@fz.budget(quick=30, ci=3000)
@given(
    path=st.sampled_from(sorted(fz.LOCAL_ROUTES)),
    limit=fz._LIMITS,
    quoted=st.booleans(),
    customer=fz.json_strings,
)
def test_local_endpoints_with_any_query(
    apps: dict[str, PersonalizeApp], path: str, limit: str, quoted: bool, customer: str
) -> None:
    """The local endpoints with any ``limit`` and filters: 200 or a 400 envelope."""
    value = fz._quote(limit) if quoted else limit
    query = f"limit={value}&customer_id={fz._quote(customer)}"
    answer = _run(apps["default"], _authenticated("GET", path, query=query))
    assert answer.status in (200, 400), answer.body


@fz.budget(quick=30, ci=3000)
@given(
    length=fz._content_lengths(b"{}"),
    path=st.sampled_from(["/v1/experiences/fetch", "/v1/experiences/events"]),
)
def test_any_content_length_with_valid_credentials(
    apps: dict[str, PersonalizeApp], length: str | None, path: str
) -> None:
    """Any Content-Length value (wrong, negative, huge, non-numeric, non-ASCII digits) on an
    authenticated POST: 200, 400 or 413, never a 500."""
    request = _authenticated("POST", path, b"{}")
    if length is None:
        del request.headers["CONTENT_LENGTH"]
    else:
        request.headers["CONTENT_LENGTH"] = length
    answer = _run(apps["small"], request)
    assert answer.status in (200, 400, 413), answer.body


@fz.budget(quick=30, ci=2000)
@given(
    name=st.sampled_from(["default", "small"]),
    declared=st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)),
    prefix=st.binary(max_size=64),
)
def test_the_body_read_is_bounded(
    apps: dict[str, PersonalizeApp], name: str, declared: int | None, prefix: bytes
) -> None:
    """A client that never stops sending (terminated input, or any declared length): the app
    reads at most its limit + 1 bytes and answers 413 when the body is over it."""
    application = apps[name]
    request = _authenticated("POST", "/v1/experiences/fetch", prefix)
    request.endless = True
    request.terminated = True
    if declared is None:
        del request.headers["CONTENT_LENGTH"]
    else:
        request.headers["CONTENT_LENGTH"] = str(declared)
    answer = _run(application, request)
    if declared is None or declared > application.max_body_bytes:
        assert answer.status == 413, answer.body


# --- known reproducers (found by this fuzzer; each must pass once its bug is fixed) ----------

_SURROGATE_ACTION = {"action": fz.SHOWN, "moe_event_uuid": "u-1", "attributes": fz.CONTEXT}
KNOWN_BODIES = {
    "fetch-enum-lone-surrogate": ("/v1/experiences/fetch", '{"DAY_OF_THE_WEEK": "\\ud800"}'),
    "fetch-hour-lone-surrogate": ("/v1/experiences/fetch", '{"TIME_OF_THE_DAY": "\\udfff"}'),
    "fetch-customer-lone-surrogate": (
        "/v1/experiences/fetch",
        '{"identifiers": {"customer_id": "\\ud800"}}',
    ),
    "fetch-huge-int-session-attribute": (
        "/v1/experiences/fetch",
        '{"cart_value": 1' + "0" * 400 + "}",
    ),
    "events-customer-lone-surrogate": (
        "/v1/experiences/events",
        fz.dump({"elements": [{"customer_id": "\ud800", "actions": [_SURROGATE_ACTION]}]}),
    ),
}


@pytest.mark.parametrize("case", sorted(KNOWN_BODIES))
def test_known_bodies(apps: dict[str, PersonalizeApp], case: str) -> None:
    """Bodies the fuzzer found answering 500 or raising out of the app: 200 or 400."""
    path, body = KNOWN_BODIES[case]
    answer = _run(apps["default"], _authenticated("POST", path, body.encode()))
    assert answer.status in (200, 400), answer.body


def test_known_decision_log_poisoning() -> None:
    """A fetch for an unknown key with a lone-surrogate customer id was answered 200 and
    logged; every later read of the decision log raised out of the app. It must answer 200."""
    application = PersonalizeApp(fz.DEFINITIONS)
    try:
        body = b'{"identifiers": {"customer_id": "\\ud800"}, "experience_key": ["nope"]}'
        fetched = _run(application, _authenticated("POST", "/v1/experiences/fetch", body))
        assert fetched.status in (200, 400)  # refusing the lone surrogate is a fix too
        answer = _run(application, _authenticated("GET", "/_local/decisions"))
        assert answer.status == 200
    finally:
        application.close()


@pytest.mark.parametrize(
    ("path", "query", "length"),
    [
        ("/_local/events", "limit=%C2%B2", "0"),
        ("/_local/decisions", "limit=" + "9" * 4301, "0"),
        ("/_local/events", "limit=" + "9" * 30, "0"),
        ("/v1/experiences/fetch", "", "\xb2"),
        ("/v1/experiences/events", "", "9" * 4301),
    ],
    ids=[
        "limit-superscript",
        "limit-4301-digits",
        "limit-over-int64",
        "length-superscript",
        "length-4301-digits",
    ],
)
def test_known_numbers(apps: dict[str, PersonalizeApp], path: str, query: str, length: str) -> None:
    """``str.isdigit()`` accepts what ``int()`` refuses ("²", over 4300 digits) and SQLite
    cannot bind (over 2**63 - 1): a 400 (or 413), not a 500."""
    method = "GET" if path.startswith("/_local/") else "POST"
    request = _authenticated(method, path, b"{}", query=query)
    request.headers["CONTENT_LENGTH"] = length
    answer = _run(apps["default"], request)
    assert answer.status in (200, 400, 413), answer.body


# --- real sockets: PersonalizeServer on 127.0.0.1 ------------------------------------------------

SOCKET_TIMEOUT = 5.0


class _Crashes(logging.Handler):
    """Records what the server logs when a connection's handler raised (``handle_error``)
    or the application failed (a 500); a client that went away (OSError) is not a crash."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        crashed = record.msg.startswith("error on the connection")
        if crashed and record.exc_info and isinstance(record.exc_info[1], OSError):
            return
        if crashed or "a bug in the local server" in record.msg:
            self.records.append(self.format(record))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[PersonalizeServer, _Crashes]]:
    """The sample workspace on an ephemeral loopback port (small body limit), with a handler
    recording handler crashes; stopped at the end of the module."""
    logger = logging.getLogger("moengage_personalize.server")
    crashes = _Crashes()
    crashes.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(crashes)
    server = PersonalizeServer(host="127.0.0.1", port=0, max_body_bytes=4096)
    try:
        server.start()
        yield server, crashes
    finally:
        server.stop()
        logger.removeHandler(crashes)
        logger.setLevel(level)


def _exchange(
    port: int, pieces: list[bytes], *, pause: float = 0.0, shut_write: bool = True
) -> bytes:
    """Send ``pieces`` (pausing between them), optionally half-close, and read until the
    server closes or one full answer (by Content-Length) arrived. A timeout fails the test."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(piece)
            if shut_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early and closed: read what it said
        received = b""
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while time.monotonic() < deadline:
            head, sep, rest = received.partition(b"\r\n\r\n")
            if sep:
                match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
                if len(rest) >= (int(match.group(1)) if match else 0):
                    return received
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            except TimeoutError:
                pytest.fail(f"no answer and no close within {SOCKET_TIMEOUT}s: {received[:300]!r}")
            if not chunk:
                return received
            received += chunk
        pytest.fail(f"the answer did not end within {SOCKET_TIMEOUT}s: {received[:300]!r}")


_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*")


def _check_raw(raw: bytes) -> None:
    """An answer (or nothing: the server closed): never a 500; an error envelope for 4xx."""
    if not raw.startswith(b"HTTP/"):
        return  # closed without answering, or an HTTP/0.9 exchange: allowed
    line, _, rest = raw.partition(b"\r\n")
    match = _STATUS.fullmatch(line)
    assert match, line
    status = int(match.group(1))
    assert status != 500, raw[:2000]
    if status == 100:
        return  # an interim answer; the client stopped there
    head, _, body = rest.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^x-request-id: [0-9a-f]{32}\r?$", head), head
    match = re.search(rb"(?im)^content-length:\s*(\d+)\r?$", head)
    body = body[: int(match.group(1))] if match else body  # a pipelined second answer may follow
    if status >= 400 and body:
        document = json.loads(body)
        assert {"title", "description"} <= set(document) <= {"title", "description", "code"}


def _still_serving(server: PersonalizeServer, crashes: _Crashes) -> None:
    """A valid request on a fresh connection is answered 200; no handler crashed."""
    raw = _exchange(
        server.port,
        [b"GET /_local/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"],
    )
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]
    assert not crashes.records, crashes.records
    assert server._thread is not None
    assert server._thread.is_alive()


_CREDENTIALS = f"MOE-APPKEY: {fz.WORKSPACE}\r\nAuthorization: {fz.VALID_AUTH}\r\n".encode("ascii")
request_lines = st.one_of(
    st.sampled_from(
        [
            b"POST /v1/experiences/fetch HTTP/1.1",
            b"POST /v1/experiences/events HTTP/1.1",
            b"GET /v1/experiences/metadata?status=Active HTTP/1.1",
            b"GET /_local/decisions?limit=%C2%B2 HTTP/1.1",
            b"GET /v1/experiences/metadata HTTP/1.0",
            b"GET /",
            b"GET / HTTP/9.9",
            b"GET / HTTP/1.1 extra",
            b"GET\t/\tHTTP/1.1",
            b"get /v1/experiences/metadata http/1.1",
            b"POST /%ff%fe%00 HTTP/1.1",
            b"POST /v1/experiences/fetch HTTP/2.0",
            b"PRI * HTTP/2.0",
            b"",
            b" ",
        ]
    ),
    st.binary(max_size=80).filter(lambda b: b"\n" not in b),
    st.integers(min_value=60000, max_value=70000).map(lambda n: b"GET /" + b"a" * n + b" HTTP/1.1"),
)
header_lines = st.one_of(
    st.sampled_from(
        [
            b"Content-Type: application/json",
            b"Expect: 100-continue",
            b"Connection: keep-alive",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Content-Length: -1",
            b"Content-Length: \xb2",
            b"Content-Length: " + b"9" * 4301,
            b"Content-Length: 1, 2",
            b"MOE-APPKEY: " + fz.WORKSPACE.encode(),
            b"Authorization: Basic !!!",
            b" folded continuation",
            b"no colon here",
            b": empty name",
        ]
    ),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
    st.integers(min_value=1, max_value=70000).map(lambda n: b"X-Long: " + b"v" * n),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[list[bytes], float, bool]:
    """Malformed HTTP: a request line, headers (floods included), a body that may be short
    of its declared length, sent in pieces; and whether the client half-closes."""
    line = draw(request_lines)
    headers = [b"Host: 127.0.0.1"] if draw(st.booleans()) else []
    if draw(st.booleans()):
        headers.append(_CREDENTIALS.rstrip(b"\r\n"))
    headers += draw(st.lists(header_lines, max_size=6))
    if draw(st.integers(min_value=0, max_value=6)) == 0:
        headers += [b"X-Flood-%d: x" % i for i in range(draw(st.integers(90, 300)))]
    body = draw(
        st.one_of(
            st.binary(max_size=200),
            fz.fetch_bodies().map(lambda d: fz.dump(d).encode("utf-8", "surrogatepass")),
            st.integers(min_value=4000, max_value=10000).map(lambda n: b"[" + b" " * n + b"]"),
            st.sampled_from([b"5\r\n{}\r\n0\r\n\r\n", b"2\r\n{}\r\n0\r\n\r\n", b"zz\r\n"]),
        )
    )
    shape = draw(st.sampled_from(["exact", "short", "long", "none", "given"]))
    if shape == "exact":
        headers.append(b"Content-Length: %d" % len(body))
    elif shape == "short":  # the client sends less than it declared, then stops
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 10**6))))
    elif shape == "long":
        headers.append(b"Content-Length: %d" % draw(st.integers(0, max(0, len(body) - 1))))
    data = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    pause = draw(st.sampled_from([0.0, 0.0, 0.01, 0.05]))
    # A body declared chunked is never "exact": the server waits for its chunks as for any slow
    # body (up to its idle timeout, 30 s, past this test's 5 s), so such a client half-closes.
    chunked = any(b"transfer-encoding" in h.lower() and b"chunked" in h.lower() for h in headers)
    shut_write = shape != "exact" or chunked or draw(st.booleans())
    return [p for p in pieces if p] or [b""], pause, shut_write


@fz.budget(quick=40, ci=2500)
@given(raw=raw_requests())
def test_malformed_http_on_a_real_socket(
    served: tuple[PersonalizeServer, _Crashes], raw: tuple[list[bytes], float, bool]
) -> None:
    """Garbage request lines, header floods, long headers, wrong lengths, partial and slow
    bodies: the server answers (never 500) or closes within the timeout, no handler crashes,
    and it keeps serving a valid request afterwards."""
    server, crashes = served
    pieces, pause, shut_write = raw
    crashes.records.clear()
    _check_raw(_exchange(server.port, pieces, pause=pause, shut_write=shut_write))
    _still_serving(server, crashes)


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: \xb2\r\n\r\n{}",
        b"Content-Length: " + b"9" * 4301 + b"\r\n\r\n{}",
        b'Content-Length: 29\r\n\r\n{"DAY_OF_THE_WEEK": "\\ud800"}',
    ],
    ids=["length-superscript", "length-4301-digits", "enum-lone-surrogate"],
)
def test_known_socket_reproducers(served: tuple[PersonalizeServer, _Crashes], head: bytes) -> None:
    """Requests the fuzzer found dropping the connection unanswered (the handler raised):
    each must get an answer (400 or 413), not a closed connection."""
    server, crashes = served
    crashes.records.clear()
    raw = _exchange(
        server.port,
        [b"POST /v1/experiences/fetch HTTP/1.1\r\nHost: x\r\n" + _CREDENTIALS + head],
    )
    assert raw.startswith(b"HTTP/1.1 4"), raw[:300]
    _check_raw(raw)
    _still_serving(server, crashes)


def test_a_slow_body_is_read_and_answered(served: tuple[PersonalizeServer, _Crashes]) -> None:
    """A body sent a few bytes at a time (within the socket timeout) is still answered 200."""
    server, crashes = served
    crashes.records.clear()
    body = b'{"identifiers": {"customer_id": "user_8821"}, "experience_key": ["homepage-banner"]}'
    head = (
        b"POST /v1/experiences/fetch HTTP/1.1\r\nHost: x\r\n"
        + _CREDENTIALS
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    pieces = [head] + [body[i : i + 8] for i in range(0, len(body), 8)]
    raw = _exchange(server.port, pieces, pause=0.01, shut_write=False)
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]
    _still_serving(server, crashes)


def test_many_open_connections_do_not_stop_the_server(
    served: tuple[PersonalizeServer, _Crashes],
) -> None:
    """Fifty connections that send half a request and wait: a fresh client is still served."""
    server, crashes = served
    crashes.records.clear()
    with contextlib.ExitStack() as stack:
        for _ in range(50):
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT)
            )
            sock.sendall(b"POST /v1/experiences/fetch HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        _still_serving(server, crashes)
    _still_serving(server, crashes)


# --- the api key comparison ------------------------------------------------------------------


def test_the_credentials_are_compared_with_hmac_compare_digest() -> None:
    """In ``_authenticate`` the app key, the Basic user and the api key go through
    ``hmac.compare_digest``, and no ``==`` / ``!=`` / ``in`` touches them."""
    source = textwrap.dedent(inspect.getsource(PersonalizeApp._authenticate))
    tree = ast.parse(source)
    compared: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "hmac.compare_digest":
            compared.update(ast.unparse(arg) for arg in node.args)
        if isinstance(node, ast.Compare):
            text = ast.unparse(node)
            for secret in ("self._key", "self._user", "password", "user", "app_key"):
                assert not re.search(rf"\b{re.escape(secret)}\b", text), text
    assert {"self._key", "self._user", "password", "user"} <= compared, compared
    assert app_module.hmac.compare_digest is __import__("hmac").compare_digest


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (fz.WORKSPACE, fz.API_KEY),
        (fz.WORKSPACE, fz.API_KEY[:-1] + "X"),
        ("someone-else", fz.API_KEY),
        ("someone-else", "wrong"),
    ],
)
def test_both_basic_parts_are_always_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, user: str, password: str
) -> None:
    """Behaviourally: every request with a valid MOE-APPKEY compares the user and the api key
    with ``hmac.compare_digest`` (both, whatever is wrong), and the answer follows them."""
    import hmac

    seen: list[tuple[bytes, bytes]] = []

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return hmac.compare_digest(a, b)

    class _Hmac:
        compare_digest = staticmethod(spy)

    monkeypatch.setattr(app_module, "hmac", _Hmac)
    application = PersonalizeApp(fz.DEFINITIONS)
    try:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request = _authenticated("GET", "/v1/experiences/metadata")
        request.headers["HTTP_AUTHORIZATION"] = f"Basic {token}"
        answer = _run(application, request)
    finally:
        application.close()
    assert (user.encode(), fz.WORKSPACE.encode()) in seen
    assert (password.encode(), fz.API_KEY.encode()) in seen
    valid = (user, password) == (fz.WORKSPACE, fz.API_KEY)
    assert answer.status == (200 if valid else 401)


# --- the harness itself ------------------------------------------------------------------------


def test_the_harness_catches_an_unbounded_reader() -> None:
    """A WSGI app that reads ``wsgi.input`` without a bound (or past its limit) and answers
    500 fails the checks: the fuzz tests above would notice such a regression."""

    def greedy(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        body = b'{"title":"Internal Server Error","description":"x"}'
        start_response(
            "500 Internal Server Error",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("x-request-id", "0" * 32),
            ],
        )
        return [body]

    request = _authenticated("POST", "/v1/experiences/fetch", b"{}")
    request.endless = True
    stream = fz.BoundedInput(request.body, 100, endless=True)
    answer = fz.call(greedy, request.environ(stream))
    assert stream.violations == [
        "unbounded read() on wsgi.input",
        "read 101 bytes, over the cap of 100",
    ]
    assert stream.consumed == 101
    with pytest.raises(AssertionError):
        fz.check_answer(answer, request, stream)
    stream.violations.clear()
    with pytest.raises(AssertionError, match="Internal Server Error"):
        fz.check_answer(answer, request, stream)
