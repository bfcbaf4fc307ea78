"""Helpers for the local server's fuzz tests: profiles, PEP 3333 environs, a bounded body
stream, hypothesis strategies for requests and bodies, and the checks every answer must pass.

Imported only after ``pytest.importorskip("hypothesis")`` in the test module.

Profiles (``MOENGAGE_FUZZ_PROFILE``): ``quick`` (default, a few seconds for the folder) and
``ci`` (the dedicated tox env: about five minutes for the folder).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from moengage_personalize.server import sample_definitions

# --- profiles ----------------------------------------------------------------------------------

PROFILE_ENV = "MOENGAGE_FUZZ_PROFILE"
_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,  # nothing written into the checkout (.hypothesis/)
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
}
settings.register_profile("quick", max_examples=50, **_COMMON)
settings.register_profile("ci", max_examples=5000, **_COMMON)
PROFILE = os.environ.get(PROFILE_ENV, "quick")
if PROFILE not in ("quick", "ci"):
    raise RuntimeError(f"{PROFILE_ENV} must be 'quick' or 'ci', not {PROFILE!r}")
settings.load_profile(PROFILE)


def budget(quick: int, ci: int) -> settings:
    """The active profile with this test's number of examples (sized from measured rates:
    the ci numbers add up to about five minutes for the folder, the quick ones to seconds)."""
    return settings(max_examples=ci if PROFILE == "ci" else quick)


# --- the workspace -----------------------------------------------------------------------------

DEFINITIONS = sample_definitions()
WORKSPACE = DEFINITIONS.workspace_id
API_KEY = DEFINITIONS.api_key
VALID_TOKEN = base64.b64encode(f"{WORKSPACE}:{API_KEY}".encode()).decode("ascii")
VALID_AUTH = f"Basic {VALID_TOKEN}"
EXPERIENCE_KEYS = [e.key for e in DEFINITIONS.experiences]
USERS = list(DEFINITIONS.users)
REAL_ROUTES = {
    "/v1/experiences/metadata": "GET",
    "/v1/experiences/fetch": "POST",
    "/v1/experiences/events": "POST",
}
LOCAL_ROUTES = dict.fromkeys(("/_local/health", "/_local/stats", "/_local/events"), "GET")
LOCAL_ROUTES["/_local/decisions"] = "GET"
ROUTES = {**REAL_ROUTES, **LOCAL_ROUTES}
WEEKDAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
HOURS = [f"{h:02d}" for h in range(24)]
SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"
CLICKED = "MOE_PERSONALIZATION_MESSAGE_CLICKED"
CONTEXT = {
    "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
    "experience": "Homepage Banner — Free Shipping",
    "moe_locale_id": "0",
    "moe_variation_id": "2",
    "audience_name": "High Intent Users",
    "audience_id": "42D",
    "type": "Web Personalization",
    "experience_type": "API based Experience",
}
ALLOWED_STATUSES = {200, 400, 401, 404, 405, 413, 429}


# --- wsgi.input that counts ----------------------------------------------------------------------


class BoundedInput:
    """``wsgi.input`` that counts what the application reads and records every read past
    ``cap`` bytes, every unbounded read (``read()``, ``readline()`` without a size) and, with
    ``endless``, serves ``data`` followed by an endless stream of filler bytes (a client that
    never stops sending). ``broken_after`` raises OSError once that many bytes were served (a
    client that disconnects in the middle of the body)."""

    def __init__(
        self,
        data: bytes,
        cap: int,
        *,
        endless: bool = False,
        broken_after: int | None = None,
    ) -> None:
        self._data = data
        self._pos = 0
        self.cap = cap
        self.endless = endless
        self.broken_after = broken_after
        self.consumed = 0
        self.violations: list[str] = []

    def _take(self, size: int) -> bytes:
        if self.broken_after is not None and self.consumed >= self.broken_after:
            raise OSError("fuzz: the client went away")
        if self.consumed >= self.cap:
            self.violations.append(f"read({size}) after {self.consumed} bytes (cap {self.cap})")
            return b""  # stop feeding an application that does not stop reading
        size = min(size, self.cap + 1 - self.consumed)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        if self.endless and len(chunk) < size:
            chunk += b" " * (size - len(chunk))
        self.consumed += len(chunk)
        if self.consumed > self.cap:
            self.violations.append(f"read {self.consumed} bytes, over the cap of {self.cap}")
        return chunk

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self.violations.append("unbounded read() on wsgi.input")
            size = self.cap + 1
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            self.violations.append("unbounded readline() on wsgi.input")
            size = self.cap + 1
        return self._take(size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        self.violations.append("readlines() on wsgi.input")
        return [self._take(self.cap + 1)]

    def __iter__(self) -> Iterator[bytes]:
        self.violations.append("iteration over wsgi.input")
        yield self._take(self.cap + 1)


# --- requests --------------------------------------------------------------------------------


@dataclass
class Request:
    """One request for the WSGI application, as hypothesis drew it."""

    method: str
    path: str
    query: str = ""
    remote: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)  # CGI names (HTTP_..., CONTENT_...)
    body: bytes = b""
    terminated: bool = False
    endless: bool = False
    broken_after: int | None = None

    def environ(self, stream: BoundedInput) -> dict[str, Any]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": self.path,
            "QUERY_STRING": self.query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8181",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": self.remote,
            "REMOTE_PORT": "50000",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": stream,
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if self.terminated:
            environ["wsgi.input_terminated"] = True
        environ.update(self.headers)
        return environ

    @property
    def authenticated(self) -> bool:
        """What the contract says about these credentials (an oracle independent of the app):
        MOE-APPKEY is the workspace id and Basic auth carries exactly workspace:key."""
        app_key = self.headers.get("HTTP_MOE_APPKEY")
        if app_key is None or app_key.strip() != WORKSPACE:
            return False
        scheme, _, token = self.headers.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip().encode("ascii"), validate=True)
        except ValueError:  # binascii.Error and UnicodeEncodeError are ValueErrors
            return False
        return decoded == f"{WORKSPACE}:{API_KEY}".encode()


@dataclass
class Answer:
    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line[:3])

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def call(app: Callable[..., Any], environ: dict[str, Any]) -> Answer:
    """Run one request through the WSGI ``app`` as a strict gateway would; any exception out
    of the application propagates (the test fails with it)."""
    calls: list[tuple[Any, Any, Any]] = []

    def start_response(status: Any, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        calls.append((status, headers, exc_info))

        def write(_data: bytes) -> None:
            raise AssertionError("the legacy write() callable was used")

        return write

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert len(calls) == 1, f"start_response called {len(calls)} times"
    status, headers, exc_info = calls[0]
    assert exc_info is None
    assert isinstance(status, str), status
    assert isinstance(headers, list), headers
    return Answer(status, list(headers), body)


_STATUS_LINE = re.compile(r"[1-5][0-9][0-9] [\x20-\x7e]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


def check_answer(answer: Answer, request: Request, stream: BoundedInput) -> None:
    """The invariants every answer of the application must hold."""
    # the body stream: never more than the limit (+1 to detect an overrun), never unbounded
    assert not stream.violations, stream.violations
    # a well-formed status line and headers (PEP 3333)
    assert _STATUS_LINE.fullmatch(answer.status_line), repr(answer.status_line)
    for item in answer.headers:
        assert isinstance(item, tuple), item
        assert len(item) == 2, item
        name, value = item
        assert isinstance(name, str), item
        assert isinstance(value, str), item
        assert _TOKEN.fullmatch(name), item
        assert name.lower() not in _HOP_BY_HOP, item
        value.encode("latin-1")  # PEP 3333: latin-1 native strings
        assert not any(ord(c) < 32 or ord(c) == 127 for c in value), item
    # never a 500, only the contract's statuses
    assert answer.status != 500, answer.body[:2000]
    assert answer.status in ALLOWED_STATUSES, answer.status_line
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Content-Length") == str(len(answer.body))
    assert re.fullmatch(r"[0-9a-f]{32}", answer.header("x-request-id") or ""), answer.headers
    document = json.loads(answer.body.decode("utf-8"))  # strict UTF-8, strict JSON
    assert isinstance(document, dict), document
    if answer.status >= 400:
        assert set(document) <= {"title", "description", "code"}, document
        assert {"title", "description"} <= set(document), document
        assert all(isinstance(v, str) and v for v in document.values()), document
    if answer.status == 405:
        assert answer.header("Allow") == ROUTES[request.path]
    if answer.status == 401:
        assert (answer.header("WWW-Authenticate") or "").startswith("Basic ")
    # no way around the credentials: a 200 from a /v1 route only with valid ones
    if request.path in REAL_ROUTES and answer.status == 200:
        assert request.authenticated, request.headers
    # the local endpoints answer loopback clients only
    if request.path in LOCAL_ROUTES and answer.status == 200:
        assert request.remote in ("127.0.0.1", "::1", "127.5.6.7"), request.remote


# --- strategies: text ----------------------------------------------------------------------------

latin1 = st.characters(min_codepoint=0, max_codepoint=255)
latin1_text = st.text(alphabet=latin1, max_size=60)
# strings a JSON body can carry, including lone surrogates (JSON's "\ud800" escapes)
surrogates = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
json_strings = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.one_of(st.characters(), surrogates), max_size=12),
    st.sampled_from(["", " ", "\x00", "\u2028", "\ufeff", "null", "0", "-1", "1e309"]),
)
huge_number_texts = st.one_of(
    st.integers(min_value=1, max_value=12000).map(lambda n: "9" * n),
    st.integers(min_value=1, max_value=5000).map(lambda n: "-" + "1" * n),
    st.sampled_from(
        ["1e999999", "-1e999999", "1E-999999", "1.7976931348623157e309", "-0", "0.0e0", "1" * 4301]
    ),
)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON document (NaN and infinities included: the app must refuse them)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        json_strings,
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(json_strings, children, max_size=6),
        ),
        max_leaves=max_leaves,
    )


def deep_text(depth: int, kind: str) -> str:
    """A JSON value nested ``depth`` levels deep (arrays, objects, or both)."""
    if kind == "array":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2)


deep_values = st.builds(
    deep_text,
    st.one_of(
        st.integers(min_value=1, max_value=1200), st.integers(min_value=1, max_value=200_000)
    ),
    st.sampled_from(["array", "object", "mixed"]),
)


class Raw(str):
    """JSON text to splice into a document as it is (deep nesting, huge numbers)."""


def dump(value: Any) -> str:
    """``value`` as JSON text; ``Raw`` parts are spliced in verbatim."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


wild_values = st.one_of(
    json_values(),
    deep_values.map(Raw),
    huge_number_texts.map(Raw),
)


# --- strategies: near-valid bodies ---------------------------------------------------------------


def _containers(node: Any) -> list[Any]:
    """Every object and array of a document (the document first), for ``mutated``."""
    found: list[Any] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list)):
            found.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return found


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with a few fields replaced by wild values, deleted, or added."""
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        containers = _containers(document)
        if not containers:
            return draw(wild_values)
        target = draw(st.sampled_from(containers))
        how = draw(st.sampled_from(["replace", "delete", "add"]))
        if isinstance(target, dict):
            if target and how != "add":
                key = draw(st.sampled_from(sorted(target)))
                if how == "delete":
                    del target[key]
                else:
                    target[key] = draw(wild_values)
            else:
                target[draw(json_strings)] = draw(wild_values)
        elif target and how != "add":
            index = draw(st.integers(min_value=0, max_value=len(target) - 1))
            if how == "delete":
                del target[index]
            else:
                target[index] = draw(wild_values)
        else:
            target.append(draw(wild_values))
    return document


@st.composite
def fetch_bodies(draw: st.DrawFn) -> Any:
    body: dict[str, Any] = {}
    who = draw(st.sampled_from(["customer", "identifiers", "anonymous", "random"]))
    if who == "customer":
        body["identifiers"] = {"customer_id": draw(st.sampled_from(USERS) | json_strings)}
    elif who == "identifiers":
        body["identifiers"] = {
            "user_identifiers": {
                "u_em": draw(st.sampled_from(["jane@example.com", "x@y"]) | json_strings)
            }
        }
    elif who == "random":
        body["identifiers"] = {"customer_id": draw(json_strings)}
    if draw(st.booleans()):
        keys = st.sampled_from([*EXPERIENCE_KEYS, "unknown-key"]) | json_strings
        body["experience_key"] = draw(st.lists(keys, max_size=30))
    if draw(st.booleans()):
        body["DAY_OF_THE_WEEK"] = draw(st.sampled_from(WEEKDAYS) | json_strings)
    if draw(st.booleans()):
        body["TIME_OF_THE_DAY"] = draw(st.sampled_from(HOURS) | json_strings)
    for name in draw(
        st.lists(
            st.sampled_from(
                ["cart_value", "current_page", "utm_source", "utm_campaign", "USER_AGENT"]
            ),
            max_size=5,
        )
    ):
        body[name] = draw(
            st.one_of(
                json_strings,
                st.integers(),
                st.floats(),
                st.sampled_from(["cart", "email", "winback-1", "Android", "iPhone", "750"]),
            )
        )
    return draw(mutated(body))


@st.composite
def event_bodies(draw: st.DrawFn) -> Any:
    def action() -> dict[str, Any]:
        item: dict[str, Any] = {
            "action": draw(st.sampled_from([SHOWN, CLICKED])),
            "moe_event_uuid": draw(st.uuids().map(str) | json_strings),
            "attributes": dict(CONTEXT),
        }
        if draw(st.booleans()):
            item["event_time"] = draw(st.integers(min_value=-1, max_value=10_000_000_001))
        if draw(st.booleans()):
            item["platform"] = draw(st.sampled_from(["web", "ANDROID", "ios", "tv", "fridge"]))
        return item

    elements = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        element: dict[str, Any] = {
            "customer_id": draw(st.sampled_from(USERS) | json_strings),
            "actions": [action() for _ in range(draw(st.integers(min_value=0, max_value=3)))],
        }
        if draw(st.booleans()):
            element["user_timezone_offset"] = draw(st.integers(min_value=-60000, max_value=60000))
        if draw(st.booleans()):
            element["user_attributes"] = draw(st.dictionaries(json_strings, json_values(5)))
        elements.append(element)
    if draw(st.integers(min_value=0, max_value=20)) == 0:
        elements = elements * 40  # past MaxItems(100) when not empty
    return draw(mutated({"elements": elements}))


def _mangle(data: bytes, draw: st.DrawFn) -> bytes:
    """Byte-level damage: insert, delete or overwrite a few bytes (invalid UTF-8 included)."""
    bad = st.sampled_from(
        [b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\x80"]
    )
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        how = draw(st.sampled_from(["insert", "delete", "overwrite"]))
        if how == "insert":
            data = data[:at] + draw(bad | st.binary(max_size=4)) + data[at:]
        elif how == "delete":
            data = data[:at] + data[at + draw(st.integers(min_value=1, max_value=4)) :]
        else:
            data = data[:at] + draw(bad) + data[at + 1 :]
    return data


@st.composite
def bodies(draw: st.DrawFn, limit: int) -> bytes:
    """A request body: random bytes, random JSON, near-valid fetch/events bodies (mutated),
    deep nesting, huge numbers, invalid UTF-8, other encodings, sizes around ``limit``."""
    kind = draw(
        st.sampled_from(
            [
                "empty",
                "bytes",
                "json",
                "fetch",
                "events",
                "deep",
                "number",
                "mangled",
                "encoded",
                "padded",
            ]
        )
    )
    if kind == "empty":
        return b""
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return dump(draw(wild_values)).encode("utf-8", "surrogatepass")
    if kind == "fetch":
        return dump(draw(fetch_bodies())).encode("utf-8", "surrogatepass")
    if kind == "events":
        return dump(draw(event_bodies())).encode("utf-8", "surrogatepass")
    if kind == "deep":
        document = draw(
            st.sampled_from(
                [
                    "%s",
                    '{"DAY_OF_THE_WEEK": %s}',
                    '{"identifiers": %s}',
                    '{"elements": [{"customer_id": "c", "user_attributes": {"x": %s}, '
                    '"actions": []}]}',
                ]
            )
        )
        return (document % draw(deep_values)).encode()
    if kind == "number":
        document = draw(st.sampled_from(["%s", '{"TIME_OF_THE_DAY": %s}', '{"cart_value": %s}']))
        return (document % draw(huge_number_texts)).encode()
    if kind == "mangled":
        source = draw(st.one_of(fetch_bodies(), event_bodies()))
        return _mangle(dump(source).encode("utf-8", "surrogatepass"), draw)
    if kind == "encoded":
        text = dump(draw(fetch_bodies()))
        codec = draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32", "utf-8-sig", "latin-1"]))
        return text.encode(codec, "replace")
    # padded: a valid fetch body padded with whitespace to just under, at or over the limit
    size = limit + draw(st.integers(min_value=-3, max_value=3))
    core = b'{"identifiers":{"customer_id":"user_8821"}}'
    return core + b" " * max(0, size - len(core))


# --- strategies: requests ------------------------------------------------------------------------

_TRAVERSAL = [
    "/v1/experiences/../experiences/fetch",
    "/v1/experiences/./fetch",
    "//v1/experiences/fetch",
    "/v1/experiences/fetch/",
    "/v1/experiences/fetch/..",
    "/v1/experiences/fetch%00",
    "/v1/experiences/fetch\x00",
    "/V1/EXPERIENCES/FETCH",
    "/../../../../etc/passwd",
    "/_local/../v1/experiences/fetch",
    "/_local/%2e%2e/health",
    "/_local//health",
    "/_local/health/",
    "/_local/",
    "/_local",
    "\\..\\..\\windows\\win.ini",
    "/%2e%2e/%2e%2e/",
    "",
    "/",
    "*",
    "http://example.com/v1/experiences/fetch",
]


def _mojibake(text: str) -> str:
    """A UTF-8 path as a WSGI server hands it over (bytes decoded as latin-1)."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


paths = st.one_of(
    st.sampled_from(list(ROUTES)),
    st.sampled_from(list(ROUTES)),
    st.sampled_from(_TRAVERSAL),
    st.sampled_from(list(ROUTES)).map(lambda p: p + "/"),
    st.builds(lambda n: "/" + "a" * n, st.integers(min_value=1000, max_value=200_000)),
    st.builds(lambda n: "/v1/experiences/" * n, st.integers(min_value=1, max_value=5000)),
    st.text(alphabet=latin1, max_size=80).map(lambda t: "/" + t),
    st.text(max_size=30).map(lambda t: _mojibake("/v1/" + t)),
    st.sampled_from(["/_local/héalth", _mojibake("/_local/héalth"), "/v1/experiences/fetch\xff"]),
)

_LIMITS = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(
        [
            "",
            "-1",
            "+1",
            " 5",
            "1.5",
            "0x10",
            "1e3",
            "\xb2",
            "\xb3",
            "\xb9",
            "\u0663",
            "\u0661\u0660",
        ]
    ),
    st.integers(min_value=4290, max_value=20000).map(lambda n: "9" * n),
    latin1_text,
)


@st.composite
def queries(draw: st.DrawFn, path: str) -> str:
    if draw(st.booleans()):
        return draw(st.text(alphabet=latin1, max_size=80))
    parts = []
    if path.startswith("/_local/"):
        limit = draw(_LIMITS)
        parts.append("limit=" + draw(st.sampled_from([limit, _quote(limit)])))
        if draw(st.booleans()):
            parts.append("customer_id=" + _quote(draw(json_strings)))
        if draw(st.booleans()):
            parts.append("experience_key=" + _quote(draw(st.sampled_from(EXPERIENCE_KEYS))))
    else:
        parts.append(
            "status="
            + draw(st.sampled_from(["Active", "Paused", "Scheduled", "Active,Paused", ""]))
        )
    if draw(st.booleans()):
        parts.append("%ZZ=%C3%28&&=&a=" + "b" * draw(st.integers(min_value=0, max_value=10000)))
    return "&".join(parts)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _basic(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode("ascii")


app_keys = st.one_of(
    st.just(WORKSPACE),
    st.sampled_from(
        [
            f" {WORKSPACE} ",
            f"{WORKSPACE},{WORKSPACE}",  # a duplicated header, as a gateway joins it
            WORKSPACE.lower(),
            WORKSPACE + "\x00",
            "",
            "ö" * 3,
        ]
    ),
    latin1_text,
)
authorizations = st.one_of(
    st.just(VALID_AUTH),
    st.sampled_from(
        [
            f"basic {VALID_TOKEN}",
            f"BASIC   {VALID_TOKEN}  ",
            f"Basic {VALID_TOKEN[:-2]}",
            f"Basic {VALID_TOKEN}=",
            f"Basic {VALID_TOKEN},Basic {VALID_TOKEN}",
            "Basic",
            "Basic ",
            "Basic =",
            "Basic !!!!",
            "Bearer " + API_KEY,
            API_KEY,
            _basic(WORKSPACE.encode(), b""),
            _basic(b"", API_KEY.encode()),
            _basic(WORKSPACE.encode(), API_KEY.encode() + b"x"),
            _basic(WORKSPACE.encode(), API_KEY.encode()[:-1]),
            _basic(WORKSPACE.encode() + b"x", API_KEY.encode()),
            _basic(WORKSPACE.encode(), API_KEY.encode() + b"\x00"),
            _basic(WORKSPACE.encode(), API_KEY.encode() + b":"),
            "Basic " + base64.b64encode(f"{WORKSPACE}{API_KEY}".encode()).decode(),
        ]
    ),
    st.binary(max_size=60).map(lambda b: "Basic " + base64.b64encode(b).decode("ascii")),
    st.tuples(st.binary(max_size=20), st.binary(max_size=30)).map(lambda t: _basic(*t)),
    latin1_text.map(lambda t: "Basic " + t),
    latin1_text,
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
            "",
        ]
    ),
    latin1_text,
)
transfer_encodings = st.one_of(
    st.sampled_from(["chunked", "gzip, chunked", "identity", "chunked, chunked", "deflate"]),
    latin1_text,
)
methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"]),
    st.sampled_from(["get", "post", "CONNECT", "PROPFIND", ""]),
    st.text(alphabet=latin1, min_size=1, max_size=20),
)


def _content_lengths(body: bytes) -> st.SearchStrategy[str | None]:
    n = len(body)
    return st.one_of(
        st.just(str(n)),
        st.just(str(n)),
        st.none(),
        st.integers(min_value=0, max_value=n + 10).map(str),  # shorter or longer than sent
        st.sampled_from(
            [
                "-1",
                "-0",
                "+5",
                f" {n} ",
                f"{n} ",
                "0x10",
                "1e3",
                "1.0",
                "abc",
                "",
                " ",
                "\xb2",
                "\u0663",
            ]
        ),
        st.sampled_from(["9" * 20, "99999999999999999999999999", "9" * 4300, "9" * 4301]),
        st.integers(min_value=2**20, max_value=2**64).map(str),
        latin1_text,
    )


@st.composite
def requests(draw: st.DrawFn, limit: int) -> Request:
    """A request for the WSGI app: method, path, query, remote address, headers and body;
    valid credentials half the time, the route's own method most of the time."""
    path = draw(paths)
    if path in ROUTES and draw(st.integers(min_value=0, max_value=3)) > 0:
        method = ROUTES[path]
    else:
        method = draw(methods)
    request = Request(method=method, path=path)
    request.query = draw(queries(path))
    request.remote = draw(
        st.sampled_from(["127.0.0.1", "127.0.0.1", "::1", "127.5.6.7", "10.1.2.3", "", "x", "::"])
    )
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["HTTP_MOE_APPKEY"] = WORKSPACE
        headers["HTTP_AUTHORIZATION"] = VALID_AUTH
    else:
        if draw(st.integers(min_value=0, max_value=4)) > 0:
            headers["HTTP_MOE_APPKEY"] = draw(app_keys)
        if draw(st.integers(min_value=0, max_value=4)) > 0:
            headers["HTTP_AUTHORIZATION"] = draw(authorizations)
    if draw(st.booleans()):
        headers["CONTENT_TYPE"] = draw(content_types)
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        headers["HTTP_TRANSFER_ENCODING"] = draw(transfer_encodings)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        name = draw(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", max_size=20))
        headers["HTTP_" + name] = draw(latin1_text)
    body = draw(bodies(limit))
    request.body = body
    mode = draw(st.sampled_from(["normal", "normal", "normal", "endless", "broken"]))
    if mode == "endless":  # no length, terminated input, a client that never stops
        request.endless = True
        request.terminated = True
    else:
        length = draw(_content_lengths(body))
        if length is not None:
            headers["CONTENT_LENGTH"] = length
        request.terminated = draw(st.booleans())
        if mode == "broken":
            request.broken_after = draw(st.integers(min_value=0, max_value=len(body)))
    request.headers = headers
    return request
