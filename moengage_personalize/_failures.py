"""THE error boundary of the transport: whatever ``http.client``, ``ssl``, ``socket`` or
``requests`` raise becomes a :class:`PersonalizeError`, and an HTTP error answer an
:class:`HTTPStatusError`.

The cause attached to an error is a copy without a traceback: the frames of ``http.client`` hold
the request's header block (the Basic token) in their locals.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .exceptions import (
    DeadlineExceededError,
    ErrorCode,
    HTTPStatusError,
    NetworkError,
    ParseError,
    PersonalizeError,
)

if TYPE_CHECKING:
    from ._http import Answer, Request

_REQUEST_ID_HEADERS = ("x-request-id", "x-moe-request-id", "x-amzn-requestid", "request-id")


def deadline_error(request: Request) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"{request.what} did not complete within {request.deadline.describe()}"
    )


def failure(exc: Exception, request: Request, base_url: str) -> PersonalizeError:
    """THE boundary: a dependency's exception becomes a PersonalizeError. Its cause is a copy
    without a traceback: the frames of http.client hold the request's header block."""
    error = _classify(exc, request, base_url)
    error.__cause__ = _scrubbed(exc)
    return error


def _classify(exc: Exception, request: Request, base_url: str) -> PersonalizeError:
    where = f"{request.what} ({request.method} {base_url}{request.path})"
    if request.deadline.expired:
        return deadline_error(request)
    if _caused_by(exc, socket.gaierror):
        host = urlsplit(base_url).hostname
        return NetworkError(f"{where}: host name {host!r} could not be resolved")
    if _caused_by(exc, ConnectionRefusedError):
        return NetworkError(f"{where}: connection refused")
    requests = sys.modules.get("requests")
    timed_out = _caused_by(exc, TimeoutError) or (
        requests is not None and isinstance(exc, requests.Timeout)
    )
    if timed_out:
        if request.deadline.remaining() <= 0.005:
            return deadline_error(request)
        connect = requests is not None and isinstance(exc, requests.ConnectTimeout)
        return NetworkError(
            f"{where}: {'connect' if connect or requests is None else 'read'} timed out"
        )
    if _caused_by(exc, ssl.SSLError) or _caused_by(exc, ssl.CertificateError):
        return NetworkError(f"{where}: TLS failed: {_short(exc)}")
    if _caused_by(exc, http.client.RemoteDisconnected):  # (a ConnectionResetError too)
        return NetworkError(f"{where}: the server closed the connection without answering")
    if _caused_by(exc, ConnectionResetError) or _caused_by(exc, BrokenPipeError):
        return NetworkError(f"{where}: connection reset by the server")
    if isinstance(exc, http.client.IncompleteRead):
        return NetworkError(f"{where}: the connection broke before the whole answer came")
    if isinstance(exc, http.client.HTTPException):
        return NetworkError(f"{where}: the answer is not valid HTTP: {_short(exc)}")
    if requests is not None and isinstance(exc, requests.exceptions.ContentDecodingError):
        return ParseError(f"{where}: the answer could not be decoded: {_short(exc)}")
    if isinstance(exc, OSError) or (
        requests is not None and isinstance(exc, requests.RequestException)
    ):
        return NetworkError(f"{where}: connection failed: {_short(exc)}")
    return PersonalizeError(
        f"{where} failed unexpectedly: {type(exc).__name__}: {_short(exc)}",
        code=ErrorCode.UNKNOWN,
    )


def _scrubbed(exc: BaseException) -> BaseException:
    """The same kind of exception with the same message, and no traceback."""
    args = tuple(_short(a) if isinstance(a, BaseException) else a for a in exc.args)
    try:  # (an exception among the args keeps its own frames: only its text is kept)
        copy = type(exc)(*args)
    except Exception:
        copy = RuntimeError(f"{type(exc).__name__}: {_short(exc)}")
    copy.__traceback__ = None
    return copy


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


def status_error(answer: Answer, what: str) -> HTTPStatusError:
    from ._retry import retry_after

    status = answer.status
    envelope: Mapping[str, Any] = {}
    try:
        decoded = json.loads(answer.body) if answer.body else {}
        if isinstance(decoded, dict):
            envelope = decoded
    except (ValueError, RecursionError):
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
        retry_after=retry_after(headers) if status in (429, 503) else None,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
