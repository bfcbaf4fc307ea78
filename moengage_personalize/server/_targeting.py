"""Targeting: which variation of which experience a user gets, and why not when they get none.

Evaluation of one experience for one request:

1. status at the server's clock: unknown key, ended, paused or scheduled -> not served;
2. identity: ``identifiers.customer_id``, else a stored user matched by ``user_identifiers``;
   with neither the request is anonymous and only "All Users" audiences apply;
3. the workspace's global control group, then the first audience (in the file's order) whose rule
   holds; none -> not in segment;
4. the experience's control group, then the audience's variation by weight.

Steps 3 and 4 hash the customer id (for an anonymous visitor: ``USER_IP_ADDRESS`` and
``USER_AGENT``) with the experience key, so a user always gets the same answer.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._definitions import (
    Audience,
    Condition,
    Definitions,
    Experience,
    Rule,
    RuleGroup,
    StoredUser,
    Variation,
)

__all__ = ["Decision", "Identity", "Outcome", "bucket", "evaluate", "resolve_identity"]


class Outcome(str, enum.Enum):
    """What the server decided for one experience key, named like the mobile SDK's failure
    reasons (``SERVED`` when the experience was in the answer)."""

    SERVED = "SERVED"
    INVALID_EXPERIENCE_KEY = "INVALID_EXPERIENCE_KEY"
    EXPERIENCE_NOT_ACTIVE = "EXPERIENCE_NOT_ACTIVE"
    EXPERIENCE_EXPIRED = "EXPERIENCE_EXPIRED"
    MAX_LIMIT_BREACHED = "MAX_LIMIT_BREACHED"
    USER_NOT_IN_SEGMENT = "USER_NOT_IN_SEGMENT"
    USER_IN_CAMPAIGN_CONTROL_GROUP = "USER_IN_CAMPAIGN_CONTROL_GROUP"
    USER_IN_GLOBAL_CONTROL_GROUP = "USER_IN_GLOBAL_CONTROL_GROUP"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Identity:
    """Who a fetch is for: the customer id (None when anonymous), the stored user if known, and
    the unit hashed for control groups and variations."""

    customer_id: str | None
    user: StoredUser | None
    unit: str

    @property
    def anonymous(self) -> bool:
        """True when the request identifies nobody: only "All Users" audiences apply."""
        return self.customer_id is None


@dataclass(frozen=True)
class Decision:
    """The outcome for one experience key, with a readable ``detail`` saying why."""

    experience_key: str
    outcome: Outcome
    detail: str
    audience: Audience | None = None
    variation: Variation | None = None


def resolve_identity(
    definitions: Definitions, identifiers: Mapping[str, Any] | None, session: Mapping[str, str]
) -> Identity:
    """The :class:`Identity` of a fetch body's ``identifiers`` (already validated)."""
    identifiers = identifiers or {}
    customer_id = identifiers.get("customer_id")
    if isinstance(customer_id, str) and customer_id:
        return Identity(customer_id, definitions.users.get(customer_id), f"cid:{customer_id}")
    others = identifiers.get("user_identifiers")
    if isinstance(others, Mapping) and others:
        user = definitions.find_user(others)
        if user is not None:
            return Identity(user.customer_id, user, f"cid:{user.customer_id}")
    visitor = f"{session.get('USER_IP_ADDRESS', '')}|{session.get('USER_AGENT', '')}"
    return Identity(None, None, f"anon:{visitor}")


def bucket(*parts: str) -> float:
    """A stable number in [0, 100) for ``parts`` (SHA-256, so the same on every machine)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def evaluate(
    definitions: Definitions,
    experience: Experience,
    identity: Identity,
    session: Mapping[str, str],
) -> Decision:
    """Decide whether ``identity`` gets ``experience`` (assumed live: Active at the clock)."""
    key = experience.key
    global_cg = definitions.global_control_group_percentage
    if global_cg > 0 and not identity.anonymous:
        spot = bucket("global-control-group", definitions.workspace_id, identity.unit)
        if spot < global_cg:
            return Decision(
                key,
                Outcome.USER_IN_GLOBAL_CONTROL_GROUP,
                f"{_who(identity)} is in the workspace's {global_cg:g}% global control group "
                f"(bucket {spot:.2f})",
            )
    reasons: list[str] = []
    chosen: Audience | None = None
    for audience in experience.audiences:
        if audience.all_users:
            chosen = audience
            break
        if identity.anonymous:
            reasons.append(
                f"audience {audience.name!r} ({audience.id}) is not All Users and the request "
                "identifies no user"
            )
            continue
        failure = _first_failure(audience.rule, identity.user, session) if audience.rule else None
        if failure is None:
            chosen = audience
            break
        reasons.append(f"audience {audience.name!r} ({audience.id}): {failure}")
    if chosen is None:
        return Decision(
            key,
            Outcome.USER_NOT_IN_SEGMENT,
            f"{_who(identity)} matches no audience: " + "; ".join(reasons),
        )
    cg = experience.control_group_percentage
    if cg > 0:
        spot = bucket("control-group", key, identity.unit)
        if spot < cg:
            return Decision(
                key,
                Outcome.USER_IN_CAMPAIGN_CONTROL_GROUP,
                f"{_who(identity)} matches audience {chosen.name!r} ({chosen.id}) but is in the "
                f"experience's {cg:g}% control group (bucket {spot:.2f})",
                audience=chosen,
            )
    variation = _pick(chosen, key, identity.unit)
    return Decision(
        key,
        Outcome.SERVED,
        f"{_who(identity)} matches audience {chosen.name!r} ({chosen.id}) and gets variation "
        f"{variation.name!r} ({variation.id})",
        audience=chosen,
        variation=variation,
    )


def _who(identity: Identity) -> str:
    if identity.anonymous:
        return "the anonymous visitor"
    known = "" if identity.user is not None else " (no stored attributes)"
    return f"customer {identity.customer_id!r}{known}"


def _pick(audience: Audience, key: str, unit: str) -> Variation:
    total = sum(v.weight for v in audience.variations)
    spot = bucket("variation", key, audience.id, unit) / 100 * total
    running = 0.0
    for variation in audience.variations:
        running += variation.weight
        if spot < running and variation.weight > 0:
            return variation
    return next(v for v in reversed(audience.variations) if v.weight > 0)


# --- rules -------------------------------------------------------------------------------------


def _first_failure(rule: Rule, user: StoredUser | None, session: Mapping[str, str]) -> str | None:
    """None when ``rule`` holds, else a phrase saying which condition failed and why."""
    if isinstance(rule, RuleGroup):
        if rule.kind == "all":
            for inner in rule.rules:
                failure = _first_failure(inner, user, session)
                if failure is not None:
                    return failure
            return None
        if rule.kind == "any":
            failures = [_first_failure(inner, user, session) for inner in rule.rules]
            if any(f is None for f in failures):
                return None
            return "none of: " + " | ".join(f for f in failures if f)
        inner_failure = _first_failure(rule.rules[0], user, session)
        return "not (...) failed: the inner rule holds" if inner_failure is None else None
    return _check(rule, user, session)


def _check(cond: Condition, user: StoredUser | None, session: Mapping[str, str]) -> str | None:
    if cond.source == "session":
        actual: Any = session.get(cond.attribute)
    else:
        actual = None if user is None else user.attributes.get(cond.attribute)
    holds = _holds(cond, actual)
    if holds:
        return None
    shown = "missing" if actual is None else f"is {_show(actual)}"
    return f"{cond.describe()} failed ({cond.attribute} {shown})"


def _holds(cond: Condition, actual: Any) -> bool:
    op = cond.operator
    if op == "exists":
        return actual is not None
    if op == "not_exists":
        return actual is None
    if actual is None:
        return False
    if isinstance(actual, list):  # a stored list attribute: any element may satisfy the test
        if op in ("not_equals", "not_in", "not_contains"):
            return all(_holds(cond, item) for item in actual)
        return any(_holds(cond, item) for item in actual)
    if op in ("equals", "not_equals"):
        same = _equal(actual, cond.value, cond.ignore_case)
        return same if op == "equals" else not same
    if op in ("in", "not_in"):
        found = any(_equal(actual, v, cond.ignore_case) for v in cond.value)
        return found if op == "in" else not found
    if op in ("contains", "not_contains", "starts_with", "ends_with"):
        text, wanted = _text(actual), str(cond.value)
        if cond.ignore_case:
            text, wanted = text.casefold(), wanted.casefold()
        if op == "contains":
            return wanted in text
        if op == "not_contains":
            return wanted not in text
        return text.startswith(wanted) if op == "starts_with" else text.endswith(wanted)
    number = _number(actual)
    if number is None:
        return False
    if op == "between":
        low, high = cond.value
        return bool(low <= number <= high)
    limit = float(cond.value)
    return {
        "gt": number > limit,
        "gte": number >= limit,
        "lt": number < limit,
        "lte": number <= limit,
    }[op]


def _equal(actual: Any, wanted: Any, ignore_case: bool) -> bool:
    """Equality across the dashboard's spellings: "500" equals 500, "true" equals true."""
    if isinstance(wanted, bool):
        return _text(actual).strip().lower() == ("true" if wanted else "false")
    if isinstance(wanted, (int, float)):
        number = _number(actual)
        return number is not None and number == wanted
    text = _text(actual)
    return text.casefold() == str(wanted).casefold() if ignore_case else text == wanted


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
