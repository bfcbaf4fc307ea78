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
import email.utils
import ipaddress
import json
import logging
import math
import platform
import random
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import requests
import requests.adapters
import requests.structures
import tenacity

from ._config import PersonalizeConfig, RetryPolicy
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


@attrs.frozen
class _Call:
    method: str
    url: str
    body: bytes | None
    deadline: float  # time.monotonic() value
    what: str
    budget: float  # the whole call's time budget in seconds, for messages
    budget_name: str
    expect_json: bool = True


class Transport:
    """Sends one logical request with retries within a deadline; returns the decoded JSON body.

    Thread-safe: a call only reads what ``__init__`` resolved and uses the adapter's connection
    pool (urllib3's, which is thread-safe). The :class:`requests.Session` itself is used only at
    construction (to read its headers, proxies, verify and cert settings and find its adapter).
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
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(
                pool_connections=1, pool_maxsize=config.max_workers, max_retries=0
            )
            session.mount("https://", adapter)
            session.mount("http://", adapter)
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
        self._retrying = _build_retrying(config.retry, config.sleep)

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session:
            self._session.close()

    def request(self, method: str, path: str, body: Any, deadline: float, *, what: str) -> Any:
        """Send ``body`` (JSON-encoded) and return the decoded JSON answer, retrying as the policy
        says until ``deadline`` (a ``time.monotonic()`` value). Raises only PersonalizeError."""
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        call = _Call(
            method, self.base_url + path, data, deadline, what, self._timeout, "config.timeout"
        )
        return self._guarded(self._retrying, self._attempt, call)

    def send_once(
        self, method: str, path: str, data: bytes, deadline: float, *, what: str, budget: float
    ) -> Any:
        """One attempt, no retries, for callers with their own retry rules (the event pipeline):
        returns on any 2xx, whatever its body. Raises only PersonalizeError."""
        call = _Call(
            method, self.base_url + path, data, deadline, what, budget, "attempt timeout", False
        )
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
        prepared = requests.PreparedRequest()
        prepared.method = call.method
        prepared.url = call.url
        headers = self._post_headers if call.body is not None else self._get_headers
        prepared.headers = requests.structures.CaseInsensitiveDict(headers)
        if call.body is not None:
            prepared.headers["Content-Length"] = str(len(call.body))
        prepared.body = call.body
        try:
            response = self._adapter.send(
                prepared, timeout=(remaining, remaining), **self._send_kwargs
            )
            try:
                content = self._read(response, call)
            finally:
                response.close()
        except PersonalizeError:
            raise
        except Exception as exc:
            raise self._map_exception(exc, call) from exc
        status = response.status_code
        if 200 <= status < 300:
            if not call.expect_json:
                return None
            try:
                return json.loads(content)
            except ValueError as exc:
                ctype = response.headers.get("Content-Type", "no content type")
                raise ParseError(
                    f"the {call.what} answer is not JSON ({ctype}, {len(content)} bytes)"
                ) from exc
        raise _status_error(response, content, call.what)

    def _read(self, response: requests.Response, call: _Call) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise ParseError(
                f"the {call.what} answer declares {declared} bytes, over the "
                f"{self._max_bytes}-byte cap (config.max_response_bytes)"
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(_CHUNK):
            total += len(chunk)
            if total > self._max_bytes:
                raise ParseError(
                    f"the {call.what} answer is over the {self._max_bytes}-byte cap "
                    "(config.max_response_bytes)"
                )
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _deadline_error(call: _Call) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"{call.what} did not complete within its deadline of {call.budget:g} s "
            f"({call.budget_name})"
        )

    def _map_exception(self, exc: Exception, call: _Call) -> PersonalizeError:
        """THE boundary: a dependency's exception becomes a PersonalizeError."""
        where = f"{call.what} ({call.method} {call.url})"
        if isinstance(exc, requests.Timeout) or _caused_by(exc, TimeoutError):
            if time.monotonic() >= call.deadline - 0.005:
                return self._deadline_error(call)
            kind = "connect" if isinstance(exc, requests.ConnectTimeout) else "read"
            return NetworkError(f"{where}: {kind} timed out")
        if _caused_by(exc, socket.gaierror):
            host = urlsplit(call.url).hostname
            return NetworkError(f"{where}: host name {host!r} could not be resolved")
        if isinstance(exc, requests.exceptions.SSLError):
            return NetworkError(f"{where}: TLS failed: {_short(exc)}")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return NetworkError(f"{where}: the connection broke while reading the answer")
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            return ParseError(f"{where}: the answer could not be decoded: {_short(exc)}")
        if isinstance(exc, requests.ConnectionError):
            if _caused_by(exc, ConnectionRefusedError):
                return NetworkError(f"{where}: connection refused")
            if _caused_by(exc, ConnectionResetError):
                return NetworkError(f"{where}: connection reset by the server")
            return NetworkError(f"{where}: connection failed: {_short(exc)}")
        if isinstance(exc, (requests.RequestException, OSError)):
            return NetworkError(f"{where}: {_short(exc)}")
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


def _status_error(response: requests.Response, content: bytes, what: str) -> HTTPStatusError:
    status = response.status_code
    envelope: Mapping[str, Any] = {}
    try:
        decoded = json.loads(content) if content else {}
        if isinstance(decoded, dict):
            envelope = decoded
    except ValueError:
        pass
    title = _str_or_none(envelope.get("title"))
    description = _str_or_none(envelope.get("description"))
    headers = response.headers
    request_id = next((headers[h] for h in _REQUEST_ID_HEADERS if h in headers), None)
    if status == 403:
        code = ErrorCode.FEATURE_DISABLED
    elif status >= 500:
        code = ErrorCode.UNKNOWN_SERVER_ERROR
    else:
        code = ErrorCode.HTTP_ERROR
    summary = ": ".join(p for p in (title, description) if p) or (response.reason or "no details")
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
