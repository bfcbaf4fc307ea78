"""Value objects and enums handed to callers. No I/O; imports nothing internal at run time.

Field and enum names are fixed by the mobile SDKs (see the README's Flutter mapping). REST names
and spellings live in ``_converters``, not here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._config import User

__all__ = [
    "DataSource",
    "ExperienceCampaign",
    "ExperienceCampaignFailure",
    "ExperienceCampaignMeta",
    "ExperienceCampaignsMetadata",
    "ExperienceCampaignsResult",
    "ExperienceFailureReason",
    "ExperienceStatus",
    "FlushReport",
    "Offering",
    "PersonalizeStats",
]


class ExperienceStatus(str, enum.Enum):
    """Status of an experience campaign; unknown input falls back to ``ACTIVE`` (as on mobile)."""

    ACTIVE = "active"
    PAUSED = "paused"
    SCHEDULED = "scheduled"

    @classmethod
    def _missing_(cls, value: object) -> ExperienceStatus:
        if isinstance(value, str):
            for member in cls:
                if member.value == value.lower():
                    return member
        return cls.ACTIVE

    def __str__(self) -> str:
        return self.value


class DataSource(str, enum.Enum):
    """Where a result came from; unknown input falls back to ``NETWORK``."""

    CACHE = "CACHE"
    NETWORK = "NETWORK"

    @classmethod
    def _missing_(cls, value: object) -> DataSource:
        return cls.NETWORK

    def __str__(self) -> str:
        return self.value


class ExperienceFailureReason(str, enum.Enum):
    """Why a requested experience key is not in the result (value = name).

    Over REST only ``INVALID_EXPERIENCE_KEY``, ``EXPERIENCE_NOT_ACTIVE``, ``MAX_LIMIT_BREACHED`` and
    ``USER_NOT_IN_SEGMENT`` can be known; the others exist so code written against the mobile enum
    runs. Unknown input falls back to ``PERSONALIZATION_FAILED``.
    """

    USER_IN_CAMPAIGN_CONTROL_GROUP = "USER_IN_CAMPAIGN_CONTROL_GROUP"
    USER_IN_GLOBAL_CONTROL_GROUP = "USER_IN_GLOBAL_CONTROL_GROUP"
    USER_NOT_IN_SEGMENT = "USER_NOT_IN_SEGMENT"
    INVALID_EXPERIENCE_KEY = "INVALID_EXPERIENCE_KEY"
    MAX_LIMIT_BREACHED = "MAX_LIMIT_BREACHED"
    EXPERIENCE_NOT_ACTIVE = "EXPERIENCE_NOT_ACTIVE"
    EXPERIENCE_EXPIRED = "EXPERIENCE_EXPIRED"
    PERSONALIZATION_FAILED = "PERSONALIZATION_FAILED"

    @classmethod
    def _missing_(cls, value: object) -> ExperienceFailureReason:
        return cls.PERSONALIZATION_FAILED

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class ExperienceCampaignMeta:
    """One experience of the workspace as the metadata lists it."""

    experience_key: str
    experience_name: str
    status: ExperienceStatus


@attrs.frozen
class ExperienceCampaignsMetadata:
    """The workspace's experiences (filtered by the requested statuses) and where they came from."""

    source: DataSource
    experiences: list[ExperienceCampaignMeta]


class Offering(dict[str, Any]):
    """An offering found in a campaign payload: the dict as received, plus its parent campaign.

    It is a real ``dict`` (read it, JSON-serialise it, compare it as the dict it is); pass it back
    unchanged to the offering tracking calls so the SDK knows which experience it belongs to.
    """

    __slots__ = ("_campaign",)

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._campaign: ExperienceCampaign | None = None

    @property
    def campaign(self) -> ExperienceCampaign | None:
        """The campaign whose payload carried this offering (``None`` only while it is built)."""
        return self._campaign

    @property
    def offering_id(self) -> str | None:
        """``dp_offering_id`` of the offering."""
        value = self.get("dp_offering_id")
        return None if value is None else str(value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as a plain dict: the campaign link does not cross processes.
        return (dict, (dict(self),))


@attrs.frozen
class ExperienceCampaign:
    """One experience served to a user.

    ``payload`` holds the bare values typed by ``data_type``; ``raw_payload`` the envelopes as
    received; ``experience_context`` the attribution to send back with impressions and clicks;
    ``user`` the user it was fetched for; ``offerings`` the offerings found in the payload.
    Treat the dicts as read-only: with the experience cache on, one campaign serves every hit.
    """

    experience_key: str
    payload: dict[str, Any]
    experience_context: dict[str, str]
    source: DataSource
    raw_payload: dict[str, Any] = attrs.field(factory=dict, repr=False)
    user: User | None = None
    offerings: list[Offering] = attrs.field(factory=list, repr=False)

    def __attrs_post_init__(self) -> None:
        for offering in self.offerings:
            if offering.campaign is None:
                offering._campaign = self


@attrs.frozen
class ExperienceCampaignFailure:
    """The keys that failed for one reason, in request order."""

    reason: ExperienceFailureReason
    experience_keys: list[str]


@attrs.frozen
class ExperienceCampaignsResult:
    """Campaigns served, in request order, and the keys that were not, grouped by reason."""

    experiences: list[ExperienceCampaign]
    failures: list[ExperienceCampaignFailure]

    def get(self, experience_key: str) -> ExperienceCampaign | None:
        """The campaign for ``experience_key``, or ``None`` if it was not served."""
        for campaign in self.experiences:
            if campaign.experience_key == experience_key:
                return campaign
        return None


@attrs.frozen(kw_only=True)
class FlushReport:
    """What ``flush()`` (or ``close()``) saw when it returned.

    ``sent``, ``dropped`` and ``failed`` (rejected by the service) are totals since the client
    started; ``pending`` is what is still queued or in flight; ``completed`` is True when every
    event queued before the call was delivered or given up.
    """

    sent: int
    dropped: int
    failed: int
    pending: int
    completed: bool


@attrs.frozen(kw_only=True)
class PersonalizeStats:
    """A snapshot of the client's counters.

    Fetch path: ``requests`` (HTTP requests sent, events included), ``retries``, ``failures``
    (errors handed to callers, by code), ``cache_hits`` / ``cache_misses`` (experience cache, per
    key), ``stale_served`` (cached values served after a failure, ``stale_if_error``),
    ``coalesced`` (calls that shared an identical one in flight), ``circuit_state`` (``closed``,
    ``open``, ``half_open`` or ``disabled``) and ``circuit_opened`` (times it opened).
    Events: ``events_queued`` (accepted by tracking calls), ``events_sent`` (accepted by the
    service), ``events_retried`` (event sends retried), ``events_failed`` (rejected by the
    service), ``events_pending`` (queued or in flight), ``events_dropped`` (by cause:
    ``queue_full``, ``closed`` (tracked after close), ``disabled``, ``store_full``,
    ``undelivered`` (not accepted by the service when ``close()`` gave up)).
    """

    requests: int = 0
    retries: int = 0
    failures: Mapping[str, int] = attrs.field(factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    stale_served: int = 0
    coalesced: int = 0
    circuit_state: str = "closed"
    circuit_opened: int = 0
    events_queued: int = 0
    events_sent: int = 0
    events_retried: int = 0
    events_failed: int = 0
    events_pending: int = 0
    events_dropped: Mapping[str, int] = attrs.field(factory=dict)
