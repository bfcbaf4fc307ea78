"""The WSGI application: MoEngage's Personalize REST contract, plus a few local-only endpoints.

REST endpoints (``personalize-api.yaml``; every answer is JSON and carries ``x-request-id``)::

    GET  /v1/experiences/metadata   the workspace's experiences (``status`` filter, case-sensitive)
    POST /v1/experiences/fetch      targeting for one user
    POST /v1/experiences/events     impressions and clicks

Checks run in this order: the route (404/405), the optional rate limit (429), ``MOE-APPKEY``
(400 'Request Error'), Basic auth (401), the body size (413, decided from ``Content-Length``
before reading), the body (400 'Malformed JSON'), the fields (400 'Invalid Field Value').
Anything unexpected is a 500 with the same envelope; no request can crash the server.

Local-only endpoints (not MoEngage's; answered to loopback clients only, 404 to others)::

    GET /_local/health      {"status": "ok", "workspace_id": ...}
    GET /_local/stats       impressions, clicks and CTR per experience and variation
    GET /_local/events      the stored events (?experience_key= &customer_id= &limit=)
    GET /_local/decisions   why each recent fetch served or did not serve each key
                            (?customer_id= &experience_key= &limit=)
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import hmac
import ipaddress
import json
import logging
import math
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qs

from ._definitions import Definitions
from ._store import CLICKED, SHOWN, EventStore
from ._targeting import Decision, Identity, Outcome, evaluate, resolve_identity

__all__ = ["DEFAULT_MAX_BODY_BYTES", "PersonalizeApp", "WSGIEnviron"]

log = logging.getLogger("moengage_personalize.server")

WSGIEnviron: TypeAlias = dict[str, Any]
StartResponse: TypeAlias = Callable[..., Any]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_KEYS = 25
MAX_ELEMENTS = 100
MAX_TZ_OFFSET = 54_000
WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
HOURS = tuple(f"{h:02d}" for h in range(24))
ACTIONS = (SHOWN, CLICKED)
REQUIRED_EVENT_ATTRIBUTES = (
    "cid",
    "experience",
    "moe_locale_id",
    "moe_variation_id",
    "audience_name",
    "audience_id",
)

# The contract's strings (personalize-api.yaml). Codes: GvHogFKc and NwRqMltB are MoEngage's;
# LOCALTYP (a field of the wrong type) is this server's own, for cases MoEngage documents no code.
REQUEST_ERROR = "Request Error"
CLIENT_NOT_FOUND = (
    "MoEngage Client not found. Please check values for headers - MOE-APPKEY or MOE-DBNAME"
)
AUTH_REQUIRED = "Authentication required"
INVALID_API_KEY = "Invalid API_KEY used in Authentication Header"
MALFORMED_JSON = "Malformed JSON"
UNDECODABLE_BODY = (
    "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8."
)
INVALID_FIELD = "Invalid Field Value"
ENUM_CODE = "GvHogFKc"
EVENTS_CODE = "NwRqMltB"
TYPE_CODE = "LOCALTYP"
EVENTS_SUCCESS = "Your request has been accepted and will be processed soon."

_ROUTES: Mapping[str, str] = {
    "/v1/experiences/metadata": "GET",
    "/v1/experiences/fetch": "POST",
    "/v1/experiences/events": "POST",
    "/_local/health": "GET",
    "/_local/stats": "GET",
    "/_local/events": "GET",
    "/_local/decisions": "GET",
}
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_READ_CHUNK = 64 * 1024


class _Reply(Exception):
    """Raised by a check to answer at once with ``status`` and ``body``."""

    def __init__(self, status: int, body: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = list(headers)


def _error(
    status: int,
    title: str,
    description: str,
    code: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> _Reply:
    body = {"title": title, "description": description}
    if code is not None:
        body["code"] = code
    return _Reply(status, body, headers)


class _RateLimiter:
    """A fixed one-minute window per workspace, aligned to the clock's minutes (as MoEngage's
    ``x-ratelimit-reset`` names the end of the current window in epoch seconds)."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.limit = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._window = -1
        self._used = 0

    def take(self) -> tuple[bool, int, int]:
        """Count one request: (allowed, remaining after it, window reset in epoch seconds)."""
        with self._lock:
            window = int(self._clock() // 60)
            if window != self._window:
                self._window, self._used = window, 0
            allowed = self._used < self.limit
            if allowed:
                self._used += 1
            return allowed, self.limit - self._used, (window + 1) * 60


class PersonalizeApp:
    """The local Personalize server as a WSGI application (serve it with any WSGI server).

    ``definitions`` is the workspace (see :func:`load_definitions`); ``store`` keeps the events
    (an in-memory :class:`EventStore` when None); ``max_body_bytes`` bounds request bodies (413
    past it); ``rate_limit`` is requests per minute (None: off); ``clock`` gives epoch seconds
    (for schedules, the rate limit window and the ``DAY_OF_THE_WEEK`` / ``TIME_OF_THE_DAY`` a fetch
    that omits them is evaluated at); the last ``decision_log_size`` decisions are kept.
    """

    def __init__(
        self,
        definitions: Definitions,
        *,
        store: EventStore | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        rate_limit: int | None = None,
        clock: Callable[[], float] = time.time,
        decision_log_size: int = 1000,
    ) -> None:
        if not isinstance(definitions, Definitions):
            raise TypeError(f"definitions must be Definitions, not {type(definitions).__name__}")
        if (
            isinstance(max_body_bytes, bool)
            or not isinstance(max_body_bytes, int)
            or (max_body_bytes < 1)
        ):
            raise ValueError(f"max_body_bytes must be an int >= 1, got {max_body_bytes!r}")
        if rate_limit is not None and (
            isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or rate_limit < 1
        ):
            raise ValueError(f"rate_limit must be None or an int >= 1, got {rate_limit!r}")
        self.definitions = definitions
        self.owns_store = store is None
        self.store = store if store is not None else EventStore()
        self.max_body_bytes = max_body_bytes
        self.rate_limit = rate_limit
        self._clock = clock
        self._limiter = None if rate_limit is None else _RateLimiter(rate_limit, clock)
        self._decisions: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=decision_log_size
        )
        self._decisions_lock = threading.Lock()
        # Events requests are decoded, checked and stored one at a time (their bodies are read
        # before): two of them sharing the interpreter would both end late (see _dispatch).
        self._ingest_lock = threading.Lock()
        self._user = definitions.workspace_id.encode("utf-8")
        self._key = definitions.api_key.encode("utf-8")

    def __repr__(self) -> str:
        return f"<PersonalizeApp workspace_id={self.definitions.workspace_id!r}>"

    def close(self) -> None:
        """Close the event store if this app created it."""
        if self.owns_store:
            self.store.close()

    # what the server knows -----------------------------------------------------------------

    def decisions(
        self,
        *,
        customer_id: str | None = None,
        experience_key: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Recent fetch decisions, oldest first: for each key asked (or served), the
        ``outcome`` (an :class:`Outcome` value such as ``USER_IN_CAMPAIGN_CONTROL_GROUP``) and a
        readable ``detail``; optionally only one customer's or one key's."""
        with self._decisions_lock:
            items = list(self._decisions)
        if customer_id is not None:
            items = [d for d in items if d["customer_id"] == customer_id]
        if experience_key is not None:
            items = [d for d in items if d["experience_key"] == experience_key]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    def now(self) -> dt.datetime:
        """The server's clock as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self._clock(), dt.timezone.utc)

    # WSGI ----------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        request_id = uuid.uuid4().hex
        headers: list[tuple[str, str]] = []
        try:
            status, body = self._dispatch(environ, request_id, headers)
        except _Reply as reply:
            status, body = reply.status, reply.body
            headers.extend(reply.headers)
        except Exception:
            log.exception("request %s failed (a bug in the local server)", request_id)
            status, body = (
                500,
                {
                    "title": "Internal Server Error",
                    "description": f"The local server failed on this request (a bug; its log names "
                    f"request {request_id}). Retry after a short delay.",
                },
            )
        if status >= 400:
            log.info(
                "%s %s -> %d %s (request %s)",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                status,
                body.get("description", ""),
                request_id,
            )
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("x-request-id", request_id),
            *headers,
        ]
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        return [data]

    def _dispatch(
        self, environ: WSGIEnviron, request_id: str, headers: list[tuple[str, str]]
    ) -> tuple[int, Any]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO", "") or "/")
        allowed = _ROUTES.get(path)
        if allowed is None or (path.startswith("/_local/") and not _is_loopback(environ)):
            raise _error(
                404,
                "Not Found",
                f"No such endpoint: {method} {path}. This server "
                "serves GET /v1/experiences/metadata, POST /v1/experiences/fetch and "
                "POST /v1/experiences/events.",
            )
        if method != allowed:
            raise _error(
                405,
                "Method Not Allowed",
                f"{method} is not allowed on {path}; use {allowed}.",
                headers=[("Allow", allowed)],
            )
        query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        if path.startswith("/_local/"):
            return 200, self._local(path, query)
        if self._limiter is not None:
            allowed_now, remaining, reset = self._limiter.take()
            headers.extend(
                [
                    ("x-ratelimit-limit", str(self._limiter.limit)),
                    ("x-ratelimit-remaining", str(remaining)),
                    ("x-ratelimit-reset", str(reset)),
                ]
            )
            if not allowed_now:
                raise _error(
                    429,
                    "Too Many Requests",
                    f"Rate limit of {self._limiter.limit} "
                    f"requests per minute exceeded; retry after {reset} (epoch seconds, "
                    "x-ratelimit-reset).",
                )
        self._authenticate(environ)
        if path == "/v1/experiences/metadata":
            return 200, self._metadata(query)
        if path == "/v1/experiences/fetch":
            return 200, self._fetch(self._json_body(environ), request_id)
        data = self._read_body(environ)
        with self._ingest_lock:
            return 200, self._events(self._decode(data), request_id)

    # checks --------------------------------------------------------------------------------

    def _authenticate(self, environ: WSGIEnviron) -> None:
        app_key = environ.get("HTTP_MOE_APPKEY")
        if not isinstance(app_key, str) or not hmac.compare_digest(
            app_key.strip().encode("utf-8", "surrogateescape"), self._user
        ):
            raise _error(400, REQUEST_ERROR, CLIENT_NOT_FOUND)
        user, password = _basic_credentials(environ.get("HTTP_AUTHORIZATION"))
        # both compared in constant time, always both, so timing does not tell which was wrong
        user_ok = hmac.compare_digest(user, self._user)
        key_ok = hmac.compare_digest(password, self._key)
        if not (user_ok and key_ok):
            raise _error(
                401,
                AUTH_REQUIRED,
                INVALID_API_KEY,
                headers=[("WWW-Authenticate", 'Basic realm="MoEngage Personalize"')],
            )

    def _json_body(self, environ: WSGIEnviron) -> Any:
        return self._decode(self._read_body(environ))

    @staticmethod
    def _decode(data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
            document = json.loads(text, parse_constant=_refuse_constant)
            if "\\u" in text:  # an escaped lone surrogate decodes but can never be stored or
                json.dumps(document, ensure_ascii=False).encode("utf-8")  # echoed: a 400
            return document
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _error(400, MALFORMED_JSON, UNDECODABLE_BODY) from None

    def _read_body(self, environ: WSGIEnviron) -> bytes:
        """The body, never reading more than ``max_body_bytes`` (+1 to detect an overrun)."""
        limit = self.max_body_bytes
        too_large = _error(
            413,
            "Request Entity Too Large",
            f"The request body is over this server's limit of {limit} bytes.",
        )
        stream = environ.get("wsgi.input")
        declared = str(environ.get("CONTENT_LENGTH") or "").strip()
        if declared:
            if not (declared.isascii() and declared.isdigit()):
                raise _error(400, REQUEST_ERROR, f"Invalid Content-Length header: {declared!r}.")
            if len(declared.lstrip("0")) > len(str(limit)) or int(declared) > limit:
                raise too_large
            wanted = int(declared)
        elif environ.get("wsgi.input_terminated"):
            wanted = limit + 1  # read to EOF, but never past the limit
        else:
            return b""  # PEP 3333: no Content-Length and no terminated input means no body
        if stream is None:
            return b""
        chunks: list[bytes] = []
        total = 0
        while total < wanted:
            try:
                chunk = stream.read(min(_READ_CHUNK, wanted - total))
            except (
                Exception
            ) as exc:  # the client's fault (a broken chunk, a disconnect), any server
                raise _error(
                    400, REQUEST_ERROR, f"The request body could not be read: {exc}."
                ) from exc
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise too_large
        return b"".join(chunks)

    # endpoints -----------------------------------------------------------------------------

    def _metadata(self, query: Mapping[str, list[str]]) -> dict[str, Any]:
        wanted: set[str] | None = None
        if "status" in query:
            wanted = {s.strip() for v in query["status"] for s in v.split(",")}
        now = self.now()
        experiences = []
        for experience in self.definitions.experiences:
            status = experience.status_at(now)
            if status is None or (wanted is not None and status not in wanted):
                continue
            experiences.append(
                {
                    "experience_name": experience.name,
                    "experience_key": experience.key,
                    "status": status,
                }
            )
        return {"metadata": {"count": len(experiences), "experiences": experiences}}

    def _fetch(self, body: Any, request_id: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _error(
                400,
                INVALID_FIELD,
                f"The request body must be a JSON object, not {_json_kind(body)}.",
                TYPE_CODE,
            )
        identifiers = _check_identifiers(body.get("identifiers"))
        raw_keys = body.get("experience_key")
        if raw_keys is not None and (
            not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys)
        ):
            raise _error(
                400, INVALID_FIELD, "experience_key - must be an array of strings", TYPE_CODE
            )
        _check_enum(body, "DAY_OF_THE_WEEK", WEEKDAYS)
        _check_enum(body, "TIME_OF_THE_DAY", HOURS)
        session: dict[str, str] = {}
        for name, value in body.items():
            text = _session_text(value)
            if text is not None and name not in ("identifiers", "experience_key"):
                session[name] = text
        now = self.now()
        session.setdefault("DAY_OF_THE_WEEK", WEEKDAYS[(now.weekday() + 1) % 7])
        session.setdefault("TIME_OF_THE_DAY", f"{now.hour:02d}")
        identity = resolve_identity(self.definitions, identifiers, session)
        decisions: list[Decision] = []
        if raw_keys:
            asked = list(dict.fromkeys(raw_keys[:MAX_KEYS]))
            for key in dict.fromkeys(k for k in raw_keys[MAX_KEYS:] if k not in asked):
                decisions.append(
                    Decision(
                        key,
                        Outcome.MAX_LIMIT_BREACHED,
                        f"only the first {MAX_KEYS} keys of a request are answered",
                    )
                )
        else:
            asked = [e.key for e in self.definitions.experiences]
        answered: dict[str, Any] = {}
        for key in asked:
            decision = self._decide(key, identity, session, now, bool(raw_keys))
            if decision is None:
                continue
            decisions.append(decision)
            if decision.outcome is Outcome.SERVED:
                answered[key] = self._served(decision)
        self._log(decisions, identity.customer_id, request_id)
        return {"experiences": answered}

    def _decide(
        self,
        key: str,
        identity: Identity,
        session: Mapping[str, str],
        now: dt.datetime,
        asked: bool,
    ) -> Decision | None:
        experience = self.definitions.experience(key)
        if experience is None:
            return Decision(key, Outcome.INVALID_EXPERIENCE_KEY, "no experience has this key")
        status = experience.status_at(now)
        if status != "Active" and not asked:
            return None  # "every experience for the user" means the live ones
        if status is None:
            return Decision(
                key, Outcome.EXPERIENCE_EXPIRED, f"the experience ended at {experience.end_time}"
            )
        if status != "Active":
            since = "" if status == "Paused" else f" until {experience.start_time}"
            return Decision(
                key, Outcome.EXPERIENCE_NOT_ACTIVE, f"the experience is {status}{since}"
            )
        return evaluate(self.definitions, experience, identity, session)

    def _served(self, decision: Decision) -> dict[str, Any]:
        experience = self.definitions.experience(decision.experience_key)
        assert experience is not None
        assert decision.audience is not None
        assert decision.variation is not None
        audience, variation = decision.audience, decision.variation
        cid = f"{experience.campaign_id}_F_T_WP_AB_{len(audience.variations)}_P_0_AU_{audience.id}"
        return {
            "payload": json.loads(json.dumps(variation.payload)),  # a copy nobody can alter
            "experience_context": {
                "cid": cid,
                "experience": experience.name,
                "moe_locale_id": "0",
                "moe_variation_id": variation.id,
                "audience_name": audience.name,
                "audience_id": audience.id,
                "type": "Web Personalization",
                "experience_type": "API based Experience",
            },
        }

    def _log(self, decisions: list[Decision], customer_id: str | None, request_id: str) -> None:
        stamp = self._clock()
        entries = [
            {
                "time": stamp,
                "request_id": request_id,
                "customer_id": customer_id,
                "experience_key": d.experience_key,
                "outcome": d.outcome.value,
                "detail": d.detail,
                "audience_id": None if d.audience is None else d.audience.id,
                "moe_variation_id": None if d.variation is None else d.variation.id,
            }
            for d in decisions
        ]
        with self._decisions_lock:
            self._decisions.extend(entries)

    def _events(self, body: Any, request_id: str) -> dict[str, Any]:
        problem = _events_problem(body)
        if problem is not None:
            field, detail = problem
            log.info("events request %s refused: %s", request_id, detail)
            validator = "Element"
            if field == "elements":
                validator, _, _ = detail.partition(":")
            raise _error(
                400,
                INVALID_FIELD,
                f"elements - Validators Failed : Validator: {validator}, Errored Field: {field}",
                EVENTS_CODE,
            )
        definitions = self.definitions

        def key_for(cid: str) -> str | None:
            experience = definitions.experience_for_cid(cid)
            return None if experience is None else experience.key

        stored, duplicates = self.store.record(body["elements"], request_id, key_for)
        log.debug("events request %s: %d stored, %d duplicates", request_id, stored, duplicates)
        return {"status": "success", "message": EVENTS_SUCCESS, "req_id": _req_id()}

    def _local(self, path: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        limit_text = one("limit")
        limit: int | None = None
        if limit_text is not None:
            if not (limit_text.isascii() and limit_text.isdigit()) or len(limit_text) > 18:
                raise _error(
                    400, REQUEST_ERROR, f"limit must be a whole number, got {limit_text!r}."
                )
            limit = int(limit_text)
        if path == "/_local/health":
            return {
                "status": "ok",
                "workspace_id": self.definitions.workspace_id,
                "events": self.store.count(),
            }
        if path == "/_local/stats":
            return {"stats": self.store.stats()}
        if path == "/_local/events":
            return {
                "events": self.store.events(
                    experience_key=one("experience_key"),
                    customer_id=one("customer_id"),
                    limit=limit,
                )
            }
        return {
            "decisions": self.decisions(
                customer_id=one("customer_id"),
                experience_key=one("experience_key"),
                limit=limit,
            )
        }


# --- helpers -----------------------------------------------------------------------------------


def _basic_credentials(header: Any) -> tuple[bytes, bytes]:
    """(user, password) of a ``Basic`` Authorization header; empty values when absent/invalid."""
    if not isinstance(header, str):
        return b"", b""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return b"", b""
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else (b"", b"")


def _is_loopback(environ: WSGIEnviron) -> bool:
    try:
        return ipaddress.ip_address(str(environ.get("REMOTE_ADDR", ""))).is_loopback
    except ValueError:
        return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number"


def _check_identifiers(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _error(400, INVALID_FIELD, "identifiers - must be an object", TYPE_CODE)
    customer_id = value.get("customer_id")
    if customer_id is not None and not isinstance(customer_id, str):
        raise _error(400, INVALID_FIELD, "identifiers.customer_id - must be a string", TYPE_CODE)
    others = value.get("user_identifiers")
    if others is not None and (
        not isinstance(others, dict) or not all(isinstance(v, str) for v in others.values())
    ):
        raise _error(
            400,
            INVALID_FIELD,
            "identifiers.user_identifiers - must be an object of strings",
            TYPE_CODE,
        )
    return value


def _check_enum(body: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    if name not in body:
        return
    value = body[name]
    if isinstance(value, str) and value in allowed:
        return
    shown = value if isinstance(value, str) else json.dumps(value)
    raise _error(
        400,
        INVALID_FIELD,
        f"{name} - Enum doesnt allow value: {shown}, allowed values: [{', '.join(allowed)}]",
        ENUM_CODE,
    )


def _session_text(value: Any) -> str | None:
    """An in-session attribute as the string it is on the wire (numbers and booleans, which a
    client should not send, are read as their JSON text; objects and arrays are ignored)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return json.dumps(value)
    return None


def _events_problem(body: Any) -> tuple[str, str] | None:
    """(errored field, detail) for the first problem of an events body, or None."""
    if not isinstance(body, dict):
        return (
            "elements",
            f"Required: the body must be an object with elements, not {_json_kind(body)}",
        )
    if "elements" not in body:
        return "elements", "Required: the body has no elements"
    elements = body["elements"]
    if not isinstance(elements, list):
        return "elements", "Type: elements must be an array"
    if not elements:
        return "elements", "MinItems(1): elements is empty"
    if len(elements) > MAX_ELEMENTS:
        return "elements", f"MaxItems({MAX_ELEMENTS}): {len(elements)} elements sent"
    for i, element in enumerate(elements):
        where = f"elements[{i}]"
        if not isinstance(element, dict):
            return "elements", f"Element: {where} must be an object"
        customer_id = element.get("customer_id")
        if not isinstance(customer_id, str) or not customer_id.strip():
            return "customer_id", f"{where}.customer_id must be a non-empty string"
        attributes = element.get("user_attributes")
        if attributes is not None and not isinstance(attributes, dict):
            return "user_attributes", f"{where}.user_attributes must be an object"
        offset = element.get("user_timezone_offset")
        if offset is not None and (
            isinstance(offset, bool)
            or not isinstance(offset, int)
            or not -MAX_TZ_OFFSET <= offset <= MAX_TZ_OFFSET
        ):
            return "user_timezone_offset", (
                f"{where}.user_timezone_offset must be whole seconds in "
                f"[-{MAX_TZ_OFFSET}, {MAX_TZ_OFFSET}], got {offset!r}"
            )
        actions = element.get("actions")
        if not isinstance(actions, list) or not actions:
            return "actions", f"{where}.actions must be a non-empty array"
        for j, action in enumerate(actions):
            detail = _action_problem(action)
            if detail is not None:
                return "actions", f"{where}.actions[{j}]{detail}"
    return None


def _action_problem(action: Any) -> str | None:
    if not isinstance(action, dict):
        return " must be an object"
    name = action.get("action")
    if name not in ACTIONS:
        return f".action {name!r} is not one of {', '.join(ACTIONS)} (case-sensitive)"
    event_uuid = action.get("moe_event_uuid")
    if not isinstance(event_uuid, str) or not event_uuid.strip() or len(event_uuid) > 128:
        return ".moe_event_uuid must be a non-empty string (the event's unique id)"
    event_time = action.get("event_time")
    if event_time is not None and (
        isinstance(event_time, bool)
        or not isinstance(event_time, int)
        or not 0 <= event_time < 10_000_000_000
    ):
        return f".event_time must be epoch seconds (a whole number), got {event_time!r}"
    platform = action.get("platform")
    if platform is not None and not isinstance(platform, str):
        return ".platform must be a string"
    attributes = action.get("attributes")
    if not isinstance(attributes, dict):
        return ".attributes must be an object (the experience_context)"
    for name in REQUIRED_EVENT_ATTRIBUTES:
        if not isinstance(attributes.get(name), str):
            return f".attributes.{name} is required (a string from the experience_context)"
    return None


_REQ_ID_ALPHABET = string.ascii_letters


def _req_id() -> str:
    return "".join(secrets.choice(_REQ_ID_ALPHABET) for _ in range(8))
