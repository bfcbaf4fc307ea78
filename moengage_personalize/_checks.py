"""Argument checks of the public calls: at the call, a ``TypeError``/``ValueError`` naming the
argument, and nothing sent or queued."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from ._config import check_text
from ._models import ExperienceStatus

RESERVED_ATTRIBUTES = frozenset({"identifiers", "experience_key"})
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEEKDAYS = frozenset(WEEKDAYS)
_HOURS = frozenset(f"{h:02d}" for h in range(24))
_STATUS_VALUES = {s.value: s for s in ExperienceStatus}


def check_attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping of str to str, not {attributes!r}")
    out: dict[str, str] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"attributes keys must be non-empty str, got {name!r}")
        if name in RESERVED_ATTRIBUTES:
            raise ValueError(
                f"attributes[{name!r}] is reserved (the SDK sets {sorted(RESERVED_ATTRIBUTES)})"
            )
        if not isinstance(value, str):
            raise TypeError(
                f"attributes[{name!r}] must be a str (in-session attributes are strings), "
                f"not {type(value).__name__}"
            )
        check_text(name, "attributes key")
        out[name] = check_text(value, f"attributes[{name!r}]")
    day = out.get("DAY_OF_THE_WEEK")
    if day is not None and day not in _WEEKDAYS:
        raise ValueError(
            f"attributes['DAY_OF_THE_WEEK'] must be a day such as 'Monday', got {day!r}"
        )
    hour = out.get("TIME_OF_THE_DAY")
    if hour is not None and hour not in _HOURS:
        raise ValueError(
            f"attributes['TIME_OF_THE_DAY'] must be a UTC hour '00'..'23', got {hour!r}"
        )
    return out


def check_key(key: object, name: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, not {type(key).__name__}")
    if not key or key.strip() != key:
        raise ValueError(f"{name} must be a non-empty key without surrounding spaces, got {key!r}")
    return check_text(key, name)


def check_keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        raise TypeError(f"experience_keys must be a list of str, not {type(keys).__name__}")
    checked = [check_key(k, f"experience_keys[{i}]") for i, k in enumerate(keys)]
    if not checked:
        raise ValueError("experience_keys must not be empty")
    return checked


def check_statuses(
    statuses: Iterable[ExperienceStatus | str] | None,
) -> frozenset[ExperienceStatus]:
    if statuses is None:
        return frozenset(ExperienceStatus)
    if isinstance(statuses, (str, ExperienceStatus)) or not isinstance(statuses, Iterable):
        raise TypeError(f"statuses must be a list of ExperienceStatus, not {statuses!r}")
    out: set[ExperienceStatus] = set()
    for item in statuses:
        if isinstance(item, ExperienceStatus):
            out.add(item)
        elif isinstance(item, str) and item.lower() in _STATUS_VALUES:
            out.add(_STATUS_VALUES[item.lower()])
        else:
            raise ValueError(
                f"statuses items must be ExperienceStatus ('active', 'paused', 'scheduled'), "
                f"got {item!r}"
            )
    if not out:
        raise ValueError("statuses must not be empty (pass None for every status)")
    return frozenset(out)


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be seconds (int or float), not {timeout!r}")
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a finite number >= 0, got {timeout!r}")
    return float(timeout)
