"""Experience definitions: the JSON file the local server serves, parsed and validated.

The file describes one workspace the way the MoEngage dashboard configures it (see the README's
"Local Personalize server" section for the full format). Everything is checked when the file is
loaded: a mistake is refused with :class:`DefinitionsError`, whose message names the place in the
file (``experiences[2].variations[0].weight: must be a number``), never at request time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = [
    "DATA_TYPES",
    "OPERATORS",
    "Audience",
    "Condition",
    "Definitions",
    "DefinitionsError",
    "Experience",
    "Rule",
    "RuleGroup",
    "StoredUser",
    "Variation",
    "load_definitions",
    "parse_definitions",
    "sample_definitions",
    "sample_path",
]

SAMPLE_RESOURCE = "sample_experiences.json"
DATA_TYPES = ("string", "number", "boolean", "json", "float")
STATUSES = ("Active", "Paused")
SOURCES = ("user", "session")
#: Rule operators, by the kind of ``value`` they take.
OPERATORS: Mapping[str, str] = {
    "equals": "scalar",
    "not_equals": "scalar",
    "in": "list",
    "not_in": "list",
    "contains": "string",
    "not_contains": "string",
    "starts_with": "string",
    "ends_with": "string",
    "gt": "number",
    "gte": "number",
    "lt": "number",
    "lte": "number",
    "between": "range",
    "exists": "none",
    "not_exists": "none",
}
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_CAMPAIGN_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class DefinitionsError(ValueError):
    """A definitions file (or dict) that cannot be served; ``errors`` lists every problem found,
    each naming its place in the file, e.g. ``experiences[2].variations[0].weight: must be a
    number``."""

    def __init__(self, errors: Sequence[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        shown = "; ".join(self.errors[:10])
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        super().__init__(f"{where}invalid experience definitions: {shown}{more}")


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """One test on one attribute: ``cart_value gte 500`` on the in-session attributes."""

    attribute: str
    source: str  # "user" (stored attributes of the ``users`` section) or "session" (the request)
    operator: str
    value: Any = None
    ignore_case: bool = False

    def describe(self) -> str:
        """The condition as a short readable phrase, e.g. ``session cart_value gte 500``."""
        shown = "" if self.value is None else f" {json.dumps(self.value, ensure_ascii=False)}"
        return f"{self.source} {self.attribute} {self.operator}{shown}"


@dataclass(frozen=True)
class RuleGroup:
    """``all`` (every rule holds), ``any`` (one holds) or ``not`` (the single rule fails)."""

    kind: str
    rules: tuple[Rule, ...]


Rule = Condition | RuleGroup


@dataclass(frozen=True)
class Variation:
    """One variation of an audience: its weight and the payload served."""

    id: str
    name: str
    weight: float
    payload: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Audience:
    """Who sees the experience (``rule`` is None for "All Users"), and its variations."""

    id: str
    name: str
    all_users: bool
    rule: Rule | None
    variations: tuple[Variation, ...]


@dataclass(frozen=True)
class Experience:
    """One experience (campaign) as the dashboard configures it."""

    key: str
    name: str
    status: str  # "Active" or "Paused"; Scheduled / expired come from the times
    campaign_id: str
    audiences: tuple[Audience, ...]
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    updated_time: dt.datetime | None = None
    control_group_percentage: float = 0.0

    def status_at(self, now: dt.datetime) -> str | None:
        """``Active``, ``Paused`` or ``Scheduled`` at ``now``; None once it has ended.

        ``Paused`` wins; otherwise before its start it is ``Scheduled`` and after its end it is
        gone (not in metadata, never served)."""
        if self.status == "Paused":
            return "Paused"
        if self.end_time is not None and now >= self.end_time:
            return None
        if self.start_time is not None and now < self.start_time:
            return "Scheduled"
        return "Active"


@dataclass(frozen=True)
class StoredUser:
    """A user MoEngage already knows: stored attributes and identifiers (``u_em``, ``u_mb``)."""

    customer_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    user_identifiers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Definitions:
    """A validated workspace: credentials, experiences in priority order, stored users."""

    workspace_id: str
    api_key: str = field(repr=False)
    experiences: tuple[Experience, ...]
    users: Mapping[str, StoredUser]
    global_control_group_percentage: float = 0.0
    source: str | None = None

    def experience(self, key: str) -> Experience | None:
        """The experience with ``key``, or None."""
        for experience in self.experiences:
            if experience.key == key:
                return experience
        return None

    def experience_for_cid(self, cid: str) -> Experience | None:
        """The experience whose campaign id starts ``cid`` (the attribution an event carries)."""
        campaign = cid.split("_", 1)[0]
        for experience in self.experiences:
            if experience.campaign_id == campaign:
                return experience
        return None

    def find_user(self, user_identifiers: Mapping[str, Any]) -> StoredUser | None:
        """The stored user one of whose identifiers (``u_em``, ``u_mb`` ...) matches."""
        for user in self.users.values():
            for name, value in user.user_identifiers.items():
                if user_identifiers.get(name) == value:
                    return user
        return None


# --- loading -----------------------------------------------------------------------------------


def sample_path() -> str:
    """The path of the embedded sample definitions (``sample_experiences.json``)."""
    return str(resources.files(__package__).joinpath(SAMPLE_RESOURCE))


def sample_definitions() -> Definitions:
    """The embedded sample workspace (the ``demo`` and the testing helpers' default)."""
    text = resources.files(__package__).joinpath(SAMPLE_RESOURCE).read_text(encoding="utf-8")
    return _parse_text(text, SAMPLE_RESOURCE)


def load_definitions(path: str | os.PathLike[str]) -> Definitions:
    """Read and validate a definitions file; :class:`DefinitionsError` names what is wrong.

    An unreadable file raises :class:`OSError` as usual."""
    name = os.fspath(path)
    with open(name, encoding="utf-8") as handle:
        text = handle.read()
    return _parse_text(text, name)


def _parse_text(text: str, source: str) -> Definitions:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DefinitionsError(
            [f"line {exc.lineno}, column {exc.colno}: not valid JSON: {exc.msg}"], source
        ) from None
    return parse_definitions(data, source=source)


def parse_definitions(data: Any, *, source: str | None = None) -> Definitions:
    """Validate a decoded definitions document (a dict shaped like the JSON file)."""
    parser = _Parser()
    result = parser.document(data, source)
    if parser.errors or result is None:
        raise DefinitionsError(parser.errors or ["the document is empty"], source)
    return result


class _Parser:
    """Walks the document, collecting every error with its path instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}" if path else message)

    # generic helpers ------------------------------------------------------------------------

    def obj(self, value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"must be an object, not {_kind(value)}")
            return None
        for name in value:
            if name not in allowed:
                hint = f"; allowed: {', '.join(allowed)}"
                self.fail(_join(path, name), f"unknown field{hint}")
        return value

    def string(
        self,
        parent: Mapping[str, Any],
        name: str,
        path: str,
        *,
        required: bool = True,
        pattern: re.Pattern[str] | None = None,
        default: str | None = None,
    ) -> str | None:
        where = _join(path, name)
        if name not in parent or parent[name] is None:
            if required:
                self.fail(where, "is required")
            return default
        value = parent[name]
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"must be a non-empty string, not {_kind(value)}")
            return default
        if pattern is not None and not pattern.match(value):
            self.fail(where, f"{value!r} does not match {pattern.pattern}")
            return default
        return value

    def number(
        self,
        parent: Mapping[str, Any],
        name: str,
        path: str,
        *,
        default: float,
        low: float,
        high: float,
        high_inclusive: bool = True,
    ) -> float:
        where = _join(path, name)
        if name not in parent:
            return default
        value = parent[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            self.fail(where, "must be a number")
            return default
        if value < low or value > high or (not high_inclusive and value == high):
            bound = "<=" if high_inclusive else "<"
            self.fail(where, f"must be >= {low:g} and {bound} {high:g}, got {value:g}")
            return default
        return float(value)

    def time(self, parent: Mapping[str, Any], name: str, path: str) -> dt.datetime | None:
        where = _join(path, name)
        value = parent.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(where, "must be an ISO 8601 time string such as 2025-01-31T18:30:00Z")
            return None
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            self.fail(where, f"{value!r} is not an ISO 8601 time such as 2025-01-31T18:30:00Z")
            return None
        if parsed.tzinfo is None:
            self.fail(where, f"{value!r} has no time zone; add Z or an offset such as +05:30")
            return None
        return parsed

    # the document ---------------------------------------------------------------------------

    def document(self, data: Any, source: str | None) -> Definitions | None:
        top = self.obj(
            data,
            "",
            (
                "$comment",
                "workspace_id",
                "api_key",
                "global_control_group_percentage",
                "users",
                "experiences",
            ),
        )
        if top is None:
            return None
        workspace_id = self.string(top, "workspace_id", "", pattern=re.compile(r"^\S+$"))
        api_key = self.string(top, "api_key", "", pattern=re.compile(r"^\S+$"))
        global_cg = self.number(
            top,
            "global_control_group_percentage",
            "",
            default=0.0,
            low=0,
            high=100,
            high_inclusive=False,
        )
        users = self.users(top.get("users", {}), "users")
        experiences: list[Experience] = []
        raw = top.get("experiences")
        if not isinstance(raw, list):
            self.fail("experiences", f"must be a list of experiences, not {_kind(raw)}")
            raw = []
        seen_keys: dict[str, str] = {}
        seen_campaigns: dict[str, str] = {}
        for i, item in enumerate(raw):
            path = f"experiences[{i}]"
            experience = self.experience(item, path, workspace_id or "")
            if experience is None:
                continue
            if experience.key in seen_keys:
                self.fail(
                    _join(path, "key"),
                    f"{experience.key!r} is already used by {seen_keys[experience.key]}",
                )
                continue
            if experience.campaign_id in seen_campaigns:
                self.fail(
                    _join(path, "campaign_id"),
                    f"{experience.campaign_id!r} is already "
                    f"used by {seen_campaigns[experience.campaign_id]}",
                )
                continue
            seen_keys[experience.key] = path
            seen_campaigns[experience.campaign_id] = path
            experiences.append(experience)
        if workspace_id is None or api_key is None:
            return None
        return Definitions(
            workspace_id=workspace_id,
            api_key=api_key,
            experiences=tuple(experiences),
            users=users,
            global_control_group_percentage=global_cg,
            source=source,
        )

    def users(self, data: Any, path: str) -> dict[str, StoredUser]:
        out: dict[str, StoredUser] = {}
        if not isinstance(data, dict):
            self.fail(path, f"must be an object keyed by customer_id, not {_kind(data)}")
            return out
        for customer_id, item in data.items():
            where = f"{path}[{json.dumps(customer_id)}]"
            entry = self.obj(item, where, ("attributes", "user_identifiers"))
            if entry is None:
                continue
            attributes = entry.get("attributes", {})
            if not isinstance(attributes, dict):
                self.fail(_join(where, "attributes"), f"must be an object, not {_kind(attributes)}")
                attributes = {}
            for name, value in attributes.items():
                if value is not None and not isinstance(value, (str, int, float, bool, list)):
                    self.fail(
                        f"{where}.attributes.{name}", "must be a string, number, boolean or list"
                    )
            identifiers = entry.get("user_identifiers", {})
            if not isinstance(identifiers, dict) or not all(
                isinstance(v, str) for v in identifiers.values()
            ):
                self.fail(
                    _join(where, "user_identifiers"),
                    'must be an object of strings such as {"u_em": "jane@example.com"}',
                )
                identifiers = {}
            out[customer_id] = StoredUser(customer_id, dict(attributes), dict(identifiers))
        return out

    def experience(self, data: Any, path: str, workspace_id: str) -> Experience | None:
        entry = self.obj(
            data,
            path,
            (
                "$comment",
                "key",
                "name",
                "status",
                "campaign_id",
                "start_time",
                "end_time",
                "updated_time",
                "control_group_percentage",
                "audiences",
            ),
        )
        if entry is None:
            return None
        errors_before = len(self.errors)
        key = self.string(entry, "key", path, pattern=_KEY_RE)
        name = self.string(entry, "name", path)
        status = self.string(entry, "status", path, required=False, default="Active")
        if status not in STATUSES:
            self.fail(
                _join(path, "status"),
                f"must be one of {', '.join(STATUSES)} (Scheduled "
                f"comes from start_time), got {status!r}",
            )
        campaign_id = self.string(
            entry, "campaign_id", path, required=False, pattern=_CAMPAIGN_ID_RE
        )
        start = self.time(entry, "start_time", path)
        end = self.time(entry, "end_time", path)
        updated = self.time(entry, "updated_time", path)
        if start is not None and end is not None and end <= start:
            self.fail(_join(path, "end_time"), "must be after start_time")
        cg = self.number(
            entry,
            "control_group_percentage",
            path,
            default=0.0,
            low=0,
            high=100,
            high_inclusive=False,
        )
        audiences: list[Audience] = []
        raw = entry.get("audiences")
        if not isinstance(raw, list) or not raw:
            self.fail(_join(path, "audiences"), "must be a non-empty list of audiences")
            raw = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            where = f"{path}.audiences[{i}]"
            audience = self.audience(item, where)
            if audience is None:
                continue
            if audience.id in seen:
                self.fail(_join(where, "id"), f"{audience.id!r} is used twice in this experience")
            seen.add(audience.id)
            audiences.append(audience)
        if len(self.errors) != errors_before or key is None or name is None:
            return None
        if campaign_id is None:
            digest = hashlib.sha256(f"{workspace_id}:{key}".encode()).hexdigest()
            campaign_id = digest[:24]
        return Experience(
            key=key,
            name=name,
            status=status or "Active",
            campaign_id=campaign_id,
            audiences=tuple(audiences),
            start_time=start,
            end_time=end,
            updated_time=updated,
            control_group_percentage=cg,
        )

    def audience(self, data: Any, path: str) -> Audience | None:
        entry = self.obj(data, path, ("$comment", "id", "name", "all_users", "rules", "variations"))
        if entry is None:
            return None
        audience_id = self.string(entry, "id", path, pattern=_ID_RE)
        all_users = entry.get("all_users", False)
        if not isinstance(all_users, bool):
            self.fail(_join(path, "all_users"), "must be true or false")
            all_users = False
        name = self.string(entry, "name", path, required=not all_users, default="All Users")
        rule: Rule | None = None
        if all_users:
            if "rules" in entry:
                self.fail(_join(path, "rules"), "an all_users audience takes no rules")
        elif "rules" not in entry:
            self.fail(_join(path, "rules"), 'is required (or set "all_users": true)')
        else:
            rule = self.rule(entry["rules"], _join(path, "rules"), 0)
        variations: list[Variation] = []
        raw = entry.get("variations")
        if not isinstance(raw, list) or not raw:
            self.fail(_join(path, "variations"), "must be a non-empty list of variations")
            raw = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            variation = self.variation(item, f"{path}.variations[{i}]", i)
            if variation is None:
                continue
            if variation.id in seen:
                self.fail(f"{path}.variations[{i}].id", f"{variation.id!r} is used twice")
            seen.add(variation.id)
            variations.append(variation)
        if variations and sum(v.weight for v in variations) <= 0:
            self.fail(_join(path, "variations"), "the weights must not all be 0")
        if audience_id is None or name is None:
            return None
        return Audience(audience_id, name, all_users, rule, tuple(variations))

    def rule(self, data: Any, path: str, depth: int) -> Rule | None:
        if depth > 16:
            self.fail(path, "rules are nested too deeply (at most 16 levels)")
            return None
        if isinstance(data, dict) and len(data.keys() & {"all", "any", "not"}) == 1:
            kind = next(iter(data.keys() & {"all", "any", "not"}))
            extra = set(data) - {kind, "$comment"}
            if extra:
                self.fail(path, f"a {kind!r} group takes no other fields, got {sorted(extra)}")
            if kind == "not":
                inner = self.rule(data["not"], _join(path, "not"), depth + 1)
                return None if inner is None else RuleGroup("not", (inner,))
            items = data[kind]
            if not isinstance(items, list) or not items:
                self.fail(_join(path, kind), "must be a non-empty list of rules")
                return None
            rules = [self.rule(r, f"{path}.{kind}[{i}]", depth + 1) for i, r in enumerate(items)]
            if any(r is None for r in rules):
                return None
            return RuleGroup(kind, tuple(r for r in rules if r is not None))
        entry = self.obj(
            data, path, ("$comment", "attribute", "source", "operator", "value", "ignore_case")
        )
        if entry is None:
            return None
        attribute = self.string(entry, "attribute", path)
        source = self.string(entry, "source", path)
        if source is not None and source not in SOURCES:
            self.fail(
                _join(path, "source"),
                f'must be "user" (stored attributes) or '
                f'"session" (in-session attributes of the request), got {source!r}',
            )
        operator = self.string(entry, "operator", path)
        value = entry.get("value")
        kind = OPERATORS.get(operator or "")
        if operator is not None and kind is None:
            self.fail(
                _join(path, "operator"), f"must be one of {', '.join(OPERATORS)}, got {operator!r}"
            )
        where = _join(path, "value")
        if kind == "none" and "value" in entry:
            self.fail(where, f"{operator!r} takes no value")
        elif kind == "scalar" and not _is_scalar(value):
            self.fail(where, f"{operator!r} needs a string, number or boolean")
        elif kind == "string" and not isinstance(value, str):
            self.fail(where, f"{operator!r} needs a string")
        elif kind == "number" and not _is_number(value):
            self.fail(where, f"{operator!r} needs a number")
        elif kind == "list" and (
            not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value)
        ):
            self.fail(where, f"{operator!r} needs a non-empty list of strings or numbers")
        elif kind == "range" and (
            not isinstance(value, list)
            or len(value) != 2
            or not all(_is_number(v) for v in value)
            or value[0] > value[1]
        ):
            self.fail(where, f"{operator!r} needs [low, high], two numbers with low <= high")
        ignore_case = entry.get("ignore_case", False)
        if not isinstance(ignore_case, bool):
            self.fail(_join(path, "ignore_case"), "must be true or false")
            ignore_case = False
        if attribute is None or source not in SOURCES or kind is None:
            return None
        assert source is not None
        assert operator is not None
        return Condition(attribute, source, operator, value, ignore_case)

    def variation(self, data: Any, path: str, index: int) -> Variation | None:
        entry = self.obj(data, path, ("$comment", "id", "name", "weight", "payload"))
        if entry is None:
            return None
        variation_id = self.string(
            entry, "id", path, required=False, default=str(index + 1), pattern=_ID_RE
        )
        name = self.string(entry, "name", path, required=False, default=f"Variation {index + 1}")
        weight: float = 1.0
        if "weight" in entry:
            raw = entry["weight"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                self.fail(_join(path, "weight"), "must be a number")
            elif raw < 0:
                self.fail(_join(path, "weight"), f"must be >= 0, got {raw:g}")
            else:
                weight = float(raw)
        payload = self.payload(entry.get("payload"), _join(path, "payload"))
        if variation_id is None or name is None or payload is None:
            return None
        return Variation(variation_id, name, weight, payload)

    def payload(self, data: Any, path: str) -> dict[str, dict[str, Any]] | None:
        if not isinstance(data, dict):
            self.fail(path, f"must be an object of variables, not {_kind(data)}")
            return None
        out: dict[str, dict[str, Any]] = {}
        for name, entry in data.items():
            where = f"{path}.{name}"
            item = self.obj(entry, where, ("value", "data_type"))
            if item is None:
                continue
            data_type = item.get("data_type")
            if data_type not in DATA_TYPES:
                self.fail(
                    _join(where, "data_type"),
                    f"must be one of {', '.join(DATA_TYPES)}, got {data_type!r}",
                )
                continue
            if "value" not in item:
                self.fail(_join(where, "value"), "is required")
                continue
            problem = _payload_problem(data_type, item["value"])
            if problem:
                self.fail(_join(where, "value"), problem)
                continue
            out[name] = {"value": item["value"], "data_type": data_type}
        return out


def _payload_problem(data_type: str, value: Any) -> str | None:
    """Why ``value`` cannot be a ``data_type`` variable as the dashboard stores it, or None."""
    if data_type == "string":
        return None if isinstance(value, str) else "a string variable must be a string"
    if data_type in ("number", "float"):
        if _is_number(value):
            return None
        if isinstance(value, str) and _parse_number(value) is not None:
            return None
        return f"a {data_type} variable must be a number or a string holding one, got {value!r}"
    if data_type == "boolean":
        if isinstance(value, bool) or (
            isinstance(value, str) and value.strip().lower() in ("true", "false")
        ):
            return None
        return f'a boolean variable must be true/false or "true"/"false", got {value!r}'
    if isinstance(value, (dict, list)):
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError as exc:
            return f"a json variable held as a string must hold JSON: {exc}"
        return None
    return "a json variable must be an object, an array or a string holding JSON"


def _parse_number(text: str) -> float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool)) or _is_number(value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )
