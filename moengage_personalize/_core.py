"""The blocking core: metadata cache, key resolution, the 25 rule, result assembly.

Every method takes an absolute ``deadline`` (a ``time.monotonic()`` value) and raises only
:class:`~moengage_personalize.exceptions.PersonalizeError`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs

from . import _converters
from ._config import PersonalizeConfig, User
from ._models import (
    DataSource,
    ExperienceCampaign,
    ExperienceCampaignFailure,
    ExperienceCampaignMeta,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceFailureReason,
    ExperienceStatus,
)
from ._transport import Transport
from .exceptions import DeadlineExceededError, PersonalizeError

log = logging.getLogger("moengage_personalize")

MAX_KEYS_PER_CALL = 25
META_PATH = "/experiences/metadata"
FETCH_PATH = "/experiences/fetch"
# After a failed refresh of expired metadata the stale list keeps serving; try again after this.
META_RETRY_INTERVAL = 10.0
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_INACTIVE = (ExperienceStatus.PAUSED, ExperienceStatus.SCHEDULED)


@functools.lru_cache(maxsize=4)
def _utc_day_and_hour(epoch_hour: int) -> tuple[str, str]:
    """``DAY_OF_THE_WEEK`` and ``TIME_OF_THE_DAY`` (UTC) for an hour since the epoch."""
    now = dt.datetime.fromtimestamp(epoch_hour * 3600, dt.timezone.utc)
    return _WEEKDAYS[now.weekday()], f"{now.hour:02d}"


@attrs.frozen
class _MetaSnapshot:
    experiences: tuple[ExperienceCampaignMeta, ...]
    by_key: Mapping[str, ExperienceCampaignMeta]
    fresh_until: float  # config.clock() value


class _Flight:
    """One metadata load in progress; concurrent callers wait on it instead of sending their own."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: PersonalizeError | None = None


class Core:
    """Blocking implementation behind the Future-returning facade. Thread-safe."""

    def __init__(self, transport: Transport, config: PersonalizeConfig) -> None:
        self._transport = transport
        self._config = config
        self._clock = config.clock
        self._lock = threading.Lock()
        self._meta: _MetaSnapshot | None = None
        self._flight: _Flight | None = None
        self._retry_refresh_at = 0.0

    # metadata ------------------------------------------------------------------------------

    def fetch_meta(
        self, statuses: Collection[ExperienceStatus], deadline: float
    ) -> ExperienceCampaignsMetadata:
        snapshot, source = self._metadata(deadline)
        return ExperienceCampaignsMetadata(
            source=source,
            experiences=[m for m in snapshot.experiences if m.status in statuses],
        )

    def _metadata(self, deadline: float) -> tuple[_MetaSnapshot, DataSource]:
        """The metadata snapshot, loading or refreshing it (one request for all callers)."""
        now = self._clock()
        snapshot = self._meta
        if snapshot is not None and (now < snapshot.fresh_until or now < self._retry_refresh_at):
            return snapshot, DataSource.CACHE
        with self._lock:
            snapshot = self._meta
            if snapshot is not None and now < snapshot.fresh_until:
                return snapshot, DataSource.CACHE
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = _Flight()
        if leader:
            self._load(flight, deadline)
        elif not flight.done.wait(max(0.0, deadline - time.monotonic())):
            raise DeadlineExceededError(
                f"loading metadata did not complete within the deadline of "
                f"{self._config.timeout:g} s (config.timeout)"
            )
        if flight.error is None:
            assert self._meta is not None
            return self._meta, DataSource.NETWORK
        if snapshot is not None:  # a failed refresh: the stale list keeps serving
            return snapshot, DataSource.CACHE
        raise flight.error

    def _load(self, flight: _Flight, deadline: float) -> None:
        try:
            body = self._transport.request("GET", META_PATH, None, deadline, what="metadata")
            experiences = tuple(_converters.structure_metadata(body))
        except PersonalizeError as exc:
            flight.error = exc
            with self._lock:
                stale = self._meta is not None
                if stale:
                    self._retry_refresh_at = self._clock() + META_RETRY_INTERVAL
            if stale:
                log.warning(
                    "refreshing experience metadata failed (%s); serving the cached list, "
                    "retrying in %g s",
                    exc,
                    META_RETRY_INTERVAL,
                )
        else:
            snapshot = _MetaSnapshot(
                experiences=experiences,
                by_key={m.experience_key: m for m in experiences},
                fresh_until=self._clock() + self._config.meta_ttl,
            )
            with self._lock:
                self._meta = snapshot
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()

    # experiences ---------------------------------------------------------------------------

    def fetch(
        self,
        keys: Sequence[str],
        attributes: Mapping[str, str],
        user: User | None,
        deadline: float,
    ) -> ExperienceCampaignsResult:
        snapshot, _ = self._metadata(deadline)
        failures: dict[ExperienceFailureReason, list[str]] = {}
        wanted: list[str] = []
        for key in dict.fromkeys(keys):  # duplicates asked once, request order kept
            meta = snapshot.by_key.get(key)
            if meta is None:
                failures.setdefault(ExperienceFailureReason.INVALID_EXPERIENCE_KEY, []).append(key)
            elif meta.status in _INACTIVE:
                failures.setdefault(ExperienceFailureReason.EXPERIENCE_NOT_ACTIVE, []).append(key)
            elif len(wanted) < MAX_KEYS_PER_CALL:
                wanted.append(key)
            else:
                failures.setdefault(ExperienceFailureReason.MAX_LIMIT_BREACHED, []).append(key)
        campaigns: list[ExperienceCampaign] = []
        if wanted:
            body = self.fetch_body(wanted, attributes, user)
            answer = self._transport.request("POST", FETCH_PATH, body, deadline, what="fetch")
            served = _converters.structure_fetch(answer)
            for key in wanted:
                wire = served.get(key)
                if wire is None:
                    failures.setdefault(ExperienceFailureReason.USER_NOT_IN_SEGMENT, []).append(key)
                else:
                    campaigns.append(
                        _converters.build_campaign(key, wire, user, DataSource.NETWORK)
                    )
        order: dict[str, int] = {}
        for i, key in enumerate(keys):
            order.setdefault(key, i)
        grouped = sorted(failures.items(), key=lambda item: order[item[1][0]])
        return ExperienceCampaignsResult(
            experiences=campaigns,
            failures=[ExperienceCampaignFailure(reason, ks) for reason, ks in grouped],
        )

    @staticmethod
    def fetch_body(
        keys: Sequence[str], attributes: Mapping[str, str], user: User | None
    ) -> dict[str, Any]:
        """The ``POST /experiences/fetch`` body: derived attributes first, the caller's win."""
        day, hour = _utc_day_and_hour(int(time.time()) // 3600)
        body: dict[str, Any] = {}
        if user is not None:
            identifiers = _converters.identifiers_body(user)
            if identifiers:
                body["identifiers"] = identifiers
        body["experience_key"] = list(keys)
        body["DAY_OF_THE_WEEK"] = day
        body["TIME_OF_THE_DAY"] = hour
        if user is not None:
            if user.ip_address is not None:
                body["USER_IP_ADDRESS"] = user.ip_address
            if user.user_agent is not None:
                body["USER_AGENT"] = user.user_agent
        body.update(attributes)
        return body
