"""What an event is, from the tracking call to the wire.

A tracking call builds an :class:`EventRecord` (cheap: no uuid, no JSON) from the campaign it
was handed; the dispatcher turns records into :class:`Item`s (uuid fixed, action JSON built) and
items into request bodies within the service's limits.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from ._config import User
from ._models import ExperienceCampaign, Offering

log = logging.getLogger("moengage_personalize")

ACTION_SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"
ACTION_CLICKED = "MOE_PERSONALIZATION_MESSAGE_CLICKED"
REQUIRED_CONTEXT = (
    "cid",
    "experience",
    "moe_locale_id",
    "moe_variation_id",
    "audience_name",
    "audience_id",
)
MAX_USERS_PER_REQUEST = 100
MAX_BYTES_PER_REQUEST = 512 * 1024


class EventRecord(NamedTuple):
    """An event as the caller's thread records it (cheap: no uuid, no JSON yet)."""

    action: str
    context: Mapping[str, Any]
    under: Mapping[str, Any] | None  # merged below the context (offering attribution)
    over: Mapping[str, Any] | None  # merged above the context (b_id)
    customer_id: str
    timezone_offset: int | None
    event_time: int


class Item(NamedTuple):
    """An event ready for the wire: its user and the action's JSON (uuid fixed)."""

    customer_id: str
    timezone_offset: int | None
    action_json: str
    row_id: int | None = None  # in the outbox


def check_context(context: object, where: str) -> Mapping[str, Any]:
    """The campaign attribution to send back, or a ValueError naming what is missing."""
    if not isinstance(context, Mapping):
        raise TypeError(f"{where} has no usable experience_context (got {type(context).__name__})")
    missing = [k for k in REQUIRED_CONTEXT if not isinstance(context.get(k), str)]
    if missing:
        raise ValueError(
            f"{where}.experience_context lacks {', '.join(missing)} (required to attribute events)"
        )
    return context


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant nibble


def _uuid4s(count: int) -> list[str]:
    """``count`` random (version 4) UUID strings from one ``os.urandom`` call: the version and
    variant nibbles are set in the hex text (122 random bits each, as ``uuid.uuid4``)."""
    h = os.urandom(16 * count).hex()
    return [
        f"{h[o : o + 8]}-{h[o + 8 : o + 12]}-4{h[o + 13 : o + 16]}-"
        f"{_VARIANT[h[o + 16]]}{h[o + 17 : o + 20]}-{h[o + 20 : o + 32]}"
        for o in range(0, 32 * count, 32)
    ]


def to_items(records: Sequence[EventRecord], platform: str) -> tuple[list[Item], int]:
    """Wire-ready events: each gets its ``moe_event_uuid`` here, once, kept across retries.

    The action JSON is assembled from pre-encoded parts; a campaign context shared by many
    events is encoded once per batch.
    """
    platform_json = _encode(platform)
    unencodable = 0
    encoded: dict[int, str] = {}  # id(context) -> JSON, for contexts alive during this call
    items = []
    for record, event_uuid in zip(records, _uuid4s(len(records)), strict=True):
        try:
            if record.under is None and record.over is None:
                attributes = encoded.get(id(record.context))
                if attributes is None:
                    attributes = encoded[id(record.context)] = _encode(record.context)
            else:
                merged = {**(record.under or {}), **record.context, **(record.over or {})}
                attributes = _encode(merged)
        except (TypeError, ValueError) as exc:  # changed after the call checked it
            log.error("moengage-personalize: an event could not be encoded (%s); dropped", exc)
            unencodable += 1
            continue
        items.append(
            Item(
                record.customer_id,
                record.timezone_offset,
                f'{{"action":"{record.action}","moe_event_uuid":"{event_uuid}",'
                f'"event_time":{record.event_time},"platform":{platform_json},'
                f'"attributes":{attributes}}}',
            )
        )
    return items, unencodable


def body(items: Sequence[Item]) -> bytes:
    """The events request body: one element per user, its actions batched under it."""
    groups: dict[tuple[str, int | None], list[str]] = {}
    for item in items:
        groups.setdefault((item.customer_id, item.timezone_offset), []).append(item.action_json)
    elements = []
    for (customer_id, offset), actions in groups.items():
        head = '{"customer_id":' + json.dumps(customer_id, ensure_ascii=False)
        if offset is not None:
            head += ',"user_timezone_offset":' + str(offset)
        elements.append(head + ',"actions":[' + ",".join(actions) + "]}")
    return ('{"elements":[' + ",".join(elements) + "]}").encode()


def fits(items: Iterable[Item], limit_actions: int) -> list[Item]:
    """The longest prefix of ``items`` within the per-request limits."""
    out: list[Item] = []
    users: set[tuple[str, int | None]] = set()
    size = 20
    for item in items:
        key = (item.customer_id, item.timezone_offset)
        extra = (
            len(item.action_json.encode()) + 1 + (0 if key in users else 80 + len(item.customer_id))
        )
        if out and (
            len(out) >= limit_actions
            or size + extra > MAX_BYTES_PER_REQUEST
            or (key not in users and len(users) >= MAX_USERS_PER_REQUEST)
        ):
            break
        out.append(item)
        users.add(key)
        size += extra
    return out


def campaign_context(campaign: object, name: str) -> tuple[Mapping[str, Any], User | None]:
    """The attribution and fetch-time user of ``campaign`` (an ExperienceCampaign, or a mapping
    with ``experience_context`` re-read from the app's own cache)."""
    if isinstance(campaign, ExperienceCampaign):
        return check_context(campaign.experience_context, name), campaign.user
    if isinstance(campaign, Mapping) and "experience_context" in campaign:
        context = check_context(campaign["experience_context"], name)
        if not all(type(k) is str for k in context):  # JSON-decoded contexts always pass
            raise TypeError(f"{name}.experience_context keys must all be str")
        return context, None
    raise TypeError(
        f"{name} must be an ExperienceCampaign from this SDK (or a mapping with its "
        f"experience_context), not {type(campaign).__name__}"
    )


def resolve_user(fetched: User | None, override: User | None, name: str) -> tuple[str, int | None]:
    """The customer id and timezone offset to send: ``user=`` wins over the fetch's user."""
    user = override if override is not None else fetched
    if user is None or user.customer_id is None:
        raise ValueError(
            f"{name} was fetched without a customer id; pass user= with one (for an anonymous "
            "visitor, a session identifier): the events API needs a customer_id"
        )
    offset = user.timezone_offset
    if offset is None and fetched is not None and fetched.customer_id == user.customer_id:
        offset = fetched.timezone_offset
    return user.customer_id, offset


def offering_attribution(
    offering: object, campaign: object | None, name: str
) -> tuple[Mapping[str, Any], object]:
    """An offering's attribution (``dp_offering_id`` + ``offering_context``) and its campaign."""
    if not isinstance(offering, Mapping):
        raise TypeError(
            f"{name} must be an offering dict as returned, not {type(offering).__name__}"
        )
    offering_id = offering.get("dp_offering_id")
    context = offering.get("offering_context")
    if offering_id is None or (isinstance(offering_id, str) and not offering_id):
        raise ValueError(f"{name} has no dp_offering_id: it cannot be attributed")
    if not isinstance(context, Mapping):
        raise ValueError(f"{name} has no offering_context object: it cannot be attributed")
    if campaign is None:
        campaign = offering.campaign if isinstance(offering, Offering) else None
        if campaign is None:
            raise ValueError(
                f"{name} is a plain dict: pass campaign= (the campaign whose payload carried it)"
            )
    return {**context, "dp_offering_id": offering_id}, campaign
