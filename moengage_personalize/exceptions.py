"""Errors raised by moengage-personalize.

Every failure that reaches a caller through a Future is a :class:`PersonalizeError`; no exception of
``requests``, ``urllib3``, ``tenacity``, ``cattrs`` or the standard library ever escapes. The
``code`` attribute keeps the mobile SDKs' error codes (:class:`ErrorCode`); the subclasses exist for
Pythonic ``except`` clauses::

    PersonalizeError                 code: ErrorCode, message: str
    ├── NetworkError                 NETWORK_ERROR: refused, reset, name not resolved, timed out
    │   └── DeadlineExceededError    NETWORK_ERROR: the call's deadline (config.timeout) passed
    ├── HTTPStatusError              HTTP_ERROR (4xx, 429), UNKNOWN_SERVER_ERROR (5xx),
    │                                FEATURE_DISABLED (403); carries status_code, title,
    │                                description, service_code, request_id, retry_after
    ├── ParseError                   PARSE_ERROR: not JSON, wrong shape, over the size cap
    ├── ClientClosedError            SDK_NOT_INITIALIZED: the client is closed
    └── SDKDisabledError             SDK_DISABLED: the client was built with enabled=False

Argument errors are not ``PersonalizeError``: they raise ``TypeError`` / ``ValueError`` at the call.
"""

from __future__ import annotations

import enum

__all__ = [
    "ClientClosedError",
    "DeadlineExceededError",
    "ErrorCode",
    "HTTPStatusError",
    "NetworkError",
    "ParseError",
    "PersonalizeError",
    "SDKDisabledError",
]


class ErrorCode(str, enum.Enum):
    """The mobile SDKs' error codes; ``.value`` is the exact mobile string."""

    NETWORK_ERROR = "NETWORK_ERROR"
    HTTP_ERROR = "HTTP_ERROR"
    UNKNOWN_SERVER_ERROR = "UNKNOWN_SERVER_ERROR"
    PARSE_ERROR = "PARSE_ERROR"
    SDK_NOT_INITIALIZED = "SDK_NOT_INITIALIZED"
    SDK_DISABLED = "SDK_DISABLED"
    FEATURE_DISABLED = "FEATURE_DISABLED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


class PersonalizeError(Exception):
    """A system-level failure of an SDK call (network, HTTP status, parse, lifecycle).

    ``code`` is an :class:`ErrorCode` (a ``str``, so ``err.code == "NETWORK_ERROR"`` holds) and
    ``message`` a human-readable sentence. The HTTP fields are ``None`` unless the service answered.
    """

    default_code: ErrorCode = ErrorCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        status_code: int | None = None,
        title: str | None = None,
        description: str | None = None,
        service_code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code: ErrorCode = code if code is not None else self.default_code
        self.message = message
        self.status_code = status_code
        self.title = title
        self.description = description
        self.service_code = service_code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message}"

    def __repr__(self) -> str:
        fields = [f"code={self.code.value!r}", f"message={self.message!r}"]
        for name in ("status_code", "service_code", "request_id", "retry_after"):
            value = getattr(self, name)
            if value is not None:
                fields.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep every field across pickling (multiprocessing, Celery result backends).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(
    cls: type[PersonalizeError], message: str, state: dict[str, object]
) -> PersonalizeError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class NetworkError(PersonalizeError):
    """The service could not be reached or did not answer in time (``NETWORK_ERROR``)."""

    default_code = ErrorCode.NETWORK_ERROR


class DeadlineExceededError(NetworkError):
    """The call's deadline (``config.timeout``) passed before it completed (``NETWORK_ERROR``)."""


class HTTPStatusError(PersonalizeError):
    """The service answered with an error status.

    ``code`` is ``HTTP_ERROR`` for 4xx (and 429 still refused when retries run out),
    ``FEATURE_DISABLED`` for 403 and ``UNKNOWN_SERVER_ERROR`` for 5xx.
    """

    default_code = ErrorCode.HTTP_ERROR


class ParseError(PersonalizeError):
    """The answer was not JSON, not the documented shape, or over the size cap (``PARSE_ERROR``)."""

    default_code = ErrorCode.PARSE_ERROR


class ClientClosedError(PersonalizeError):
    """The client is closed (``SDK_NOT_INITIALIZED``)."""

    default_code = ErrorCode.SDK_NOT_INITIALIZED


class SDKDisabledError(PersonalizeError):
    """The client was built with ``enabled=False`` (``SDK_DISABLED``)."""

    default_code = ErrorCode.SDK_DISABLED
