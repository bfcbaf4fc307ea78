"""The REST wire format: one private cattrs converter, and the payload typing rules.

REST names and spellings live here, not in the models: statuses are ``Active``/``Paused``/
``Scheduled`` on the wire; payload variables arrive wrapped as ``{"value": ..., "data_type": ...}``.
Unknown fields are ignored; a body of the wrong shape raises :class:`ParseError`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._config import User
from ._models import (
    DataSource,
    ExperienceCampaign,
    ExperienceCampaignMeta,
    ExperienceStatus,
    Offering,
)
from .exceptions import ParseError

if TYPE_CHECKING:
    import cattrs

log = logging.getLogger("moengage_personalize")

T = TypeVar("T")

_OFFERING_KEYS = frozenset({"dp_offering_id", "offering_content", "offering_context"})
_MAX_OFFERING_DEPTH = 8


@attrs.frozen
class _WireMetadata:
    experiences: list[ExperienceCampaignMeta]
    count: int | None = None


@attrs.frozen
class _WireMetadataResponse:
    metadata: _WireMetadata


@attrs.frozen
class _WireExperience:
    payload: dict[str, Any] = attrs.field(factory=dict)
    experience_context: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class _WireFetchResponse:
    experiences: dict[str, _WireExperience]


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _status(value: Any, _type: Any) -> ExperienceStatus:
    if not isinstance(value, str):
        raise TypeError(f"expected a status string, got {type(value).__name__}")
    return ExperienceStatus(value)  # REST spelling; unknown falls back to ACTIVE


def _plain_dict(value: Any, _type: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def identifiers_body(user: User) -> dict[str, Any]:
    """The fetch body's ``identifiers`` object for ``user`` (empty for an anonymous user)."""
    out: dict[str, Any] = {}
    if user.customer_id is not None:
        out["customer_id"] = user.customer_id
    if user.user_identifiers:
        out["user_identifiers"] = dict(user.user_identifiers)
    return out


@functools.cache
def _converter() -> cattrs.Converter:
    """The converter, made on the first answer to structure (cattrs takes a while to import)."""
    import cattrs  # noqa: PLC0415

    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(ExperienceStatus, _status)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _plain_dict)
    return conv


def _structure(data: Any, cls: type[T], what: str) -> T:
    if not isinstance(data, dict):
        raise ParseError(
            f"the {what} response does not have the documented shape: "
            f"expected a JSON object, got {type(data).__name__}"
        )
    converter = _converter()
    import cattrs  # noqa: PLC0415 - loaded by _converter() already

    try:
        result: T = converter.structure(data, cls)
        return result
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        detail = "; ".join(_describe(exc))
        raise ParseError(
            f"the {what} response does not have the documented shape: {detail}"
        ) from exc


def _describe(exc: BaseException) -> Iterable[str]:
    import cattrs  # noqa: PLC0415 - loaded by _converter() already

    if isinstance(exc, cattrs.BaseValidationError):
        yield from cattrs.transform_error(exc)
    else:
        yield str(exc) or type(exc).__name__


def structure_metadata(data: Any) -> list[ExperienceCampaignMeta]:
    """The full experience list of a ``GET /experiences/metadata`` body."""
    return _structure(data, _WireMetadataResponse, "metadata").metadata.experiences


def structure_fetch(data: Any) -> dict[str, _WireExperience]:
    """The ``experiences`` object of a ``POST /experiences/fetch`` body, by key."""
    return _structure(data, _WireFetchResponse, "fetch").experiences


def build_campaign(
    key: str, wire: _WireExperience, user: User | None, source: DataSource
) -> ExperienceCampaign:
    """An :class:`ExperienceCampaign` from one wire entry: payload typed, offerings found."""
    offerings: list[Offering] = []
    payload = {
        name: _find_offerings(_typed_value(key, name, entry), offerings, 0)
        for name, entry in wire.payload.items()
    }
    return ExperienceCampaign(
        experience_key=key,
        payload=payload,
        experience_context=wire.experience_context,
        source=source,
        raw_payload=wire.payload,
        user=user,
        offerings=offerings,
    )


def _to_number(value: Any) -> int | float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    number = float(value)
    return int(number) if number.is_integer() else number


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a float")
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"not a boolean: {value!r}")


def _to_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


_TYPERS: dict[str, Callable[[Any], Any]] = {
    "number": _to_number,
    "float": _to_float,
    "boolean": _to_bool,
    "json": _to_json,
}


def _typed_value(key: str, name: str, entry: Any) -> Any:
    if not isinstance(entry, dict) or "value" not in entry:
        return entry
    value = entry["value"]
    kind = entry.get("data_type")
    typer = _TYPERS.get(kind) if isinstance(kind, str) else None
    if typer is None:  # "string" and unknown kinds stay as received
        return value
    try:
        return typer(value)
    except (TypeError, ValueError, RecursionError) as exc:
        log.debug(
            "experience %r: payload %r kept as received (%s as %s failed: %s)",
            key,
            name,
            type(value).__name__,
            entry.get("data_type"),
            exc,
        )
        return value


def _find_offerings(value: Any, found: list[Offering], depth: int) -> Any:
    if depth > _MAX_OFFERING_DEPTH:
        return value
    if isinstance(value, dict):
        if value.keys() >= _OFFERING_KEYS:
            offering = Offering(value)
            found.append(offering)
            return offering
        return {k: _find_offerings(v, found, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_find_offerings(v, found, depth + 1) for v in value]
    return value
