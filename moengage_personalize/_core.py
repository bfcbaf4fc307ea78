"""The blocking core: metadata cache, key resolution, the 25 rule, result assembly.

Every method takes the call's :class:`~moengage_personalize._deadline.Deadline` (passed on to the
transport) and raises only :class:`~moengage_personalize.exceptions.PersonalizeError`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from . import _converters
from ._checks import WEEKDAYS
from ._config import PersonalizeConfig, User
from ._deadline import Deadline
from ._http import Transport
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
from ._resilience import CircuitBreaker, Counter, LRUCache, SingleFlight
from .exceptions import ErrorCode, PersonalizeError

log = logging.getLogger("moengage_personalize")

MAX_KEYS_PER_CALL = 25
META_PATH = "/experiences/metadata"
FETCH_PATH = "/experiences/fetch"
# After a failed refresh of expired metadata the stale list keeps serving; try again after this.
META_RETRY_INTERVAL = 10.0
_INACTIVE = (ExperienceStatus.PAUSED, ExperienceStatus.SCHEDULED)


@functools.lru_cache(maxsize=4)
def _utc_day_and_hour(epoch_hour: int) -> tuple[str, str]:
    """``DAY_OF_THE_WEEK`` and ``TIME_OF_THE_DAY`` (UTC) for an hour since the epoch."""
    now = dt.datetime.fromtimestamp(epoch_hour * 3600, dt.timezone.utc)
    return WEEKDAYS[now.weekday()], f"{now.hour:02d}"


@attrs.frozen
class _MetaSnapshot:
    experiences: tuple[ExperienceCampaignMeta, ...]
    by_key: Mapping[str, ExperienceCampaignMeta]
    refresh_at: float  # config.clock() value: a background refresh starts from here


UserKey = tuple[Any, ...] | None
CacheKey = tuple[UserKey, str, tuple[tuple[str, str], ...]]
_STALE_OK = (ErrorCode.NETWORK_ERROR, ErrorCode.UNKNOWN_SERVER_ERROR)


def user_key(user: User | None) -> UserKey:
    """The identity part of cache and single-flight keys."""
    if user is None:
        return None
    ids = tuple(sorted(user.user_identifiers.items())) if user.user_identifiers else None
    # every field: a campaign remembers the User it was fetched for (tracking reads it)
    return (user.customer_id, ids, user.ip_address, user.user_agent, user.timezone_offset)


class Core:
    """Blocking implementation behind the Future-returning facade. Thread-safe.

    ``background`` runs a function off the caller's thread (the facade's executor) and says whether
    it could; metadata refreshes use it so that no caller waits for them after the first load.
    ``watch`` has the deadline of such a refresh enforced (the client's watchdog).
    """

    def __init__(
        self,
        transport: Transport,
        config: PersonalizeConfig,
        background: Callable[[Callable[[], None]], bool],
        watch: Callable[[Deadline], bool],
    ) -> None:
        self._transport = transport
        self._watch = watch
        self._config = config
        self._clock = config.clock
        self._background = background
        self._lock = threading.Lock()
        self._meta: _MetaSnapshot | None = None
        self._refreshing = False
        self._retry_refresh_at = 0.0
        self._flights = SingleFlight()
        self._breaker = (
            CircuitBreaker(config.circuit_breaker) if config.circuit_breaker is not None else None
        )
        self._cache: LRUCache[CacheKey, ExperienceCampaign | None] | None = None
        if config.cache_ttl > 0 or config.stale_if_error > 0:
            self._cache = LRUCache(config.cache_size, config.clock)
        self.cache_hits = Counter()
        self.cache_misses = Counter()
        self.stale_served = Counter()

    def after_fork(self, watch: Callable[[Deadline], bool]) -> None:
        """In a forked child: locks and in-flight state of the parent's threads are void, and
        deadlines go to the child's own watchdog."""
        self._watch = watch
        self._lock = threading.Lock()
        self._refreshing = False
        self._flights.reset()
        if self._cache is not None:
            self._cache.reset_lock()
        if self._breaker is not None:
            self._breaker.after_fork()
        self.cache_hits = Counter()
        self.cache_misses = Counter()
        self.stale_served = Counter()

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    @property
    def coalesced(self) -> int:
        return self._flights.coalesced.value

    # metadata ------------------------------------------------------------------------------

    def fetch_meta(
        self, statuses: Collection[ExperienceStatus], deadline: Deadline
    ) -> ExperienceCampaignsMetadata:
        snapshot, source = self._metadata(deadline)
        return ExperienceCampaignsMetadata(
            source=source,
            experiences=[m for m in snapshot.experiences if m.status in statuses],
        )

    def _metadata(self, deadline: Deadline) -> tuple[_MetaSnapshot, DataSource]:
        """The metadata snapshot. Once loaded it is always served from memory; from 90% of
        ``meta_ttl`` on, one background refresh replaces it (stale-while-revalidate)."""
        snapshot = self._meta
        if snapshot is not None and self._config.meta_ttl > 0:
            self._maybe_refresh(snapshot)
            return snapshot, DataSource.CACHE
        try:
            loaded, _ = self._flights.do("metadata", lambda: self._load_meta(deadline), deadline)
        except PersonalizeError:
            if snapshot is not None:  # meta_ttl=0 and the reload failed: the last list serves
                return snapshot, DataSource.CACHE
            raise
        return loaded, DataSource.NETWORK

    def _maybe_refresh(self, snapshot: _MetaSnapshot) -> None:
        """Start one background refresh from 90% of ``meta_ttl`` on (not while a failed one
        waits its retry interval)."""
        now = self._clock()
        if now >= snapshot.refresh_at and now >= self._retry_refresh_at:
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        if not self._background(self._refresh):
            with self._lock:
                self._refreshing = False

    def _refresh(self) -> None:
        deadline = Deadline(self._config.timeout)
        self._watch(deadline)  # (unwatched when closing: the transport then bounds each read)
        try:
            self._flights.do("metadata", lambda: self._load_meta(deadline), deadline)
        except PersonalizeError as exc:
            self._retry_refresh_at = self._clock() + META_RETRY_INTERVAL
            log.warning(
                "refreshing experience metadata failed (%s); serving the cached list, "
                "retrying in %g s",
                exc,
                META_RETRY_INTERVAL,
            )
        finally:
            deadline.done = True
            with self._lock:
                self._refreshing = False

    def _load_meta(self, deadline: Deadline) -> _MetaSnapshot:
        body = self._guarded_request("GET", META_PATH, None, deadline, "metadata")
        experiences = tuple(_converters.structure_metadata(body))
        snapshot = _MetaSnapshot(
            experiences=experiences,
            by_key={m.experience_key: m for m in experiences},
            refresh_at=self._clock() + 0.9 * self._config.meta_ttl,
        )
        self._meta = snapshot
        return snapshot

    def _guarded_request(
        self, method: str, path: str, body: Any, deadline: Deadline, what: str
    ) -> Any:
        """A request through the circuit breaker. Whatever happens, a half-open trial ends."""
        breaker = self._breaker
        if breaker is None:
            return self._transport.request(method, path, body, deadline, what=what)
        refused = breaker.check()
        if refused is not None:
            raise refused
        try:
            answer = self._transport.request(method, path, body, deadline, what=what)
        except PersonalizeError as exc:
            breaker.failure(exc)
            raise
        except BaseException:
            breaker.inconclusive()  # said nothing of the service: the next call tries again
            raise
        breaker.success()
        return answer

    # experiences ---------------------------------------------------------------------------

    def cached_result(
        self, keys: Sequence[str], attributes: Mapping[str, str], user: User | None
    ) -> ExperienceCampaignsResult | None:
        """The whole result from memory (metadata and every fetchable key fresh in the cache),
        or None: the caller's thread calls this before handing the call to a worker."""
        if self._cache is None or self._config.cache_ttl <= 0:
            return None
        snapshot = self._meta
        if snapshot is None or self._config.meta_ttl <= 0:
            return None
        wanted, failures = _resolve(keys, snapshot)
        ukey, akey = user_key(user), tuple(sorted(attributes.items()))
        found: dict[str, ExperienceCampaign | None] = {}
        for key in wanted:
            hit, value = self._cache.get((ukey, key, akey), self._config.cache_ttl)
            if not hit:
                return None
            found[key] = value
        self._maybe_refresh(snapshot)
        self.cache_hits.add(len(wanted))
        return _assemble(keys, wanted, found, failures)

    def fetch(
        self,
        keys: Sequence[str],
        attributes: Mapping[str, str],
        user: User | None,
        deadline: Deadline,
    ) -> ExperienceCampaignsResult:
        snapshot, _ = self._metadata(deadline)
        wanted, failures = _resolve(keys, snapshot)
        ukey, akey = user_key(user), tuple(sorted(attributes.items()))
        found: dict[str, ExperienceCampaign | None] = {}
        ask = wanted
        cache = self._cache
        if cache is not None and self._config.cache_ttl > 0:
            ask = []
            for key in wanted:
                hit, value = cache.get((ukey, key, akey), self._config.cache_ttl)
                if hit:
                    found[key] = value
                else:
                    ask.append(key)
            self.cache_hits.add(len(wanted) - len(ask))
            self.cache_misses.add(len(ask))
        if ask:
            try:  # identical calls in flight were coalesced by the facade, before a thread
                served = self._ask(ask, attributes, user, deadline)
            except PersonalizeError as exc:
                stale = self._stale(ask, ukey, akey, exc)
                if stale is None:
                    raise
                found.update(stale)
            else:
                for key in ask:
                    wire = served.get(key)
                    campaign = (
                        None
                        if wire is None
                        else _converters.build_campaign(key, wire, user, DataSource.NETWORK)
                    )
                    found[key] = campaign
                    if cache is not None:
                        cached = None if campaign is None else _as_cached(campaign)
                        cache.put((ukey, key, akey), cached)
        return _assemble(keys, wanted, found, failures)

    def _ask(
        self, keys: list[str], attributes: Mapping[str, str], user: User | None, deadline: Deadline
    ) -> dict[str, Any]:
        body = self.fetch_body(keys, attributes, user)
        answer = self._guarded_request("POST", FETCH_PATH, body, deadline, "fetch")
        return _converters.structure_fetch(answer)

    def _stale(
        self,
        keys: list[str],
        ukey: UserKey,
        akey: tuple[tuple[str, str], ...],
        error: PersonalizeError,
    ) -> dict[str, ExperienceCampaign | None] | None:
        """Cached values up to ``stale_if_error`` old for every key, when the network failed."""
        cache = self._cache
        max_age = self._config.stale_if_error
        if cache is None or max_age <= 0:
            return None
        if error.code not in _STALE_OK and error.status_code != 429:
            return None
        found: dict[str, ExperienceCampaign | None] = {}
        for key in keys:
            hit, value = cache.get((ukey, key, akey), max_age)
            if not hit:
                return None
            found[key] = value
        self.stale_served.add(len(keys))
        log.warning("serving %d cached experiences after a failure: %s", len(keys), error)
        return found

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


def _as_cached(campaign: ExperienceCampaign) -> ExperienceCampaign:
    return attrs.evolve(campaign, source=DataSource.CACHE)


def _resolve(
    keys: Sequence[str], snapshot: _MetaSnapshot
) -> tuple[list[str], dict[ExperienceFailureReason, list[str]]]:
    """The keys to fetch (active, first 25, duplicates once) and failures known from metadata."""
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
    return wanted, failures


def _assemble(
    keys: Sequence[str],
    wanted: list[str],
    found: Mapping[str, ExperienceCampaign | None],
    failures: dict[ExperienceFailureReason, list[str]],
) -> ExperienceCampaignsResult:
    """Campaigns in request order; a key asked and not served fails ``USER_NOT_IN_SEGMENT``."""
    campaigns: list[ExperienceCampaign] = []
    for key in wanted:
        campaign = found.get(key)
        if campaign is None:
            failures.setdefault(ExperienceFailureReason.USER_NOT_IN_SEGMENT, []).append(key)
        else:
            campaigns.append(campaign)
    order: dict[str, int] = {}
    for i, key in enumerate(keys):
        order.setdefault(key, i)
    grouped = sorted(failures.items(), key=lambda item: order[item[1][0]])
    return ExperienceCampaignsResult(
        experiences=campaigns,
        failures=[ExperienceCampaignFailure(reason, ks) for reason, ks in grouped],
    )
