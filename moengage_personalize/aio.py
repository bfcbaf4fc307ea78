"""asyncio: :class:`AsyncMoEngagePersonalize`, the client's methods as coroutines.

It is a view over the same client, not a second HTTP stack: every fetch still runs on the
client's worker threads and its ``concurrent.futures.Future`` is awaited through
:func:`asyncio.wrap_future`, so the cache, coalescing, circuit breaker, deadlines and stats are
shared with the synchronous API::

    from moengage_personalize.aio import AsyncMoEngagePersonalize

    async def main() -> None:
        async with AsyncMoEngagePersonalize("WORKSPACE_ID", api_key="...") as personalize:
            result = await personalize.fetch_experience("homepage-banner", user="user_8821")
            for campaign in result.experiences:
                personalize.experience_shown(campaign)     # tracking never blocks: plain calls

- The fetches are coroutines; argument errors (``TypeError`` / ``ValueError``) are raised when
  they are awaited, everything else is a :class:`~moengage_personalize.PersonalizeError`. Each
  await is bounded by ``config.timeout`` (plus a small margin as a safety net). Cancelling the
  awaiting task cancels the call if it has not started yet.
- The six tracking calls and :meth:`~AsyncMoEngagePersonalize.stats` stay synchronous: they only
  queue an event or read counters and never wait for the network.
- :meth:`~AsyncMoEngagePersonalize.flush` and :meth:`~AsyncMoEngagePersonalize.aclose` wait for
  delivery, so they run in a worker thread (:func:`asyncio.to_thread`) and never block the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, TypeVar

from ._client import MoEngagePersonalize
from ._config import PersonalizeConfig, User
from ._models import (
    ExperienceCampaign,
    ExperienceCampaignsMetadata,
    ExperienceCampaignsResult,
    ExperienceStatus,
    FlushReport,
    Offering,
    PersonalizeStats,
)
from .exceptions import DeadlineExceededError

if TYPE_CHECKING:
    import requests

__all__ = ["AsyncMoEngagePersonalize"]

T = TypeVar("T")

# The sync client completes every Future within config.timeout (its deadline thread does); this
# margin only bounds the await should that ever fail.
_AWAIT_MARGIN = 1.0


class AsyncMoEngagePersonalize:
    """The :class:`~moengage_personalize.MoEngagePersonalize` API for asyncio code.

    Built with the same arguments as the synchronous client (it then owns that client and
    :meth:`aclose` closes it), or around an existing client with :meth:`from_client` (a view:
    :meth:`aclose` leaves a borrowed client open, so sync and async code of one process can share
    one client). ``async with`` closes an owned client on exit.
    """

    def __init__(
        self,
        app_id: str,
        *,
        api_key: str,
        data_center: str = "01",
        base_url: str | None = None,
        config: PersonalizeConfig | None = None,
        session: requests.Session | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._client = MoEngagePersonalize(
            app_id,
            api_key=api_key,
            data_center=data_center,
            base_url=base_url,
            config=config,
            session=session,
            executor=executor,
        )
        self._owns_client = True

    @classmethod
    def from_client(cls, client: MoEngagePersonalize) -> AsyncMoEngagePersonalize:
        """An async view of ``client``; closing the view leaves ``client`` open (its owner closes
        it)."""
        if not isinstance(client, MoEngagePersonalize):
            raise TypeError(f"client must be a MoEngagePersonalize, not {type(client).__name__}")
        view = cls.__new__(cls)
        view._client = client
        view._owns_client = False
        return view

    # introspection -------------------------------------------------------------------------

    @property
    def sync(self) -> MoEngagePersonalize:
        """The synchronous client underneath (same caches, threads and event queue)."""
        return self._client

    @property
    def app_id(self) -> str:
        """The workspace ID."""
        return self._client.app_id

    @property
    def base_url(self) -> str:
        """The API prefix in use (ends in ``/v1``)."""
        return self._client.base_url

    @property
    def config(self) -> PersonalizeConfig:
        """The client's configuration."""
        return self._client.config

    @property
    def closed(self) -> bool:
        """True once the underlying client is closed."""
        return self._client.closed

    def __repr__(self) -> str:
        owner = "owned" if self._owns_client else "borrowed"
        return f"<AsyncMoEngagePersonalize {owner} {self._client!r}>"

    # fetches -------------------------------------------------------------------------------

    async def fetch_experiences_meta(
        self, statuses: Iterable[ExperienceStatus | str] | None = None
    ) -> ExperienceCampaignsMetadata:
        """The workspace's experiences with one of ``statuses`` (all when ``None``); see
        :meth:`MoEngagePersonalize.fetch_experiences_meta`. [Flutter: ``fetchExperiencesMeta``]"""
        return await self._wait(self._client.fetch_experiences_meta(statuses))

    async def fetch_experience(
        self,
        experience_key: str,
        *,
        attributes: Mapping[str, str] | None = None,
        user: User | str | None = None,
    ) -> ExperienceCampaignsResult:
        """One experience for ``user``; see :meth:`MoEngagePersonalize.fetch_experience`.
        [Flutter: ``fetchExperience``]"""
        return await self._wait(
            self._client.fetch_experience(experience_key, attributes=attributes, user=user)
        )

    async def fetch_experiences(
        self,
        experience_keys: Iterable[str],
        *,
        attributes: Mapping[str, str] | None = None,
        user: User | str | None = None,
    ) -> ExperienceCampaignsResult:
        """Several experiences in one request; see :meth:`MoEngagePersonalize.fetch_experiences`.
        [Flutter: ``fetchExperiences``]"""
        return await self._wait(
            self._client.fetch_experiences(experience_keys, attributes=attributes, user=user)
        )

    async def _wait(self, future: Future[T]) -> T:
        if future.done():  # a cache hit or a fast failure: no hop through the loop
            return future.result()
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self._client.config.timeout + _AWAIT_MARGIN
            )
        except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on
            raise DeadlineExceededError(
                f"the call did not complete within config.timeout "
                f"({self._client.config.timeout:g} s) plus {_AWAIT_MARGIN:g} s"
            ) from None

    # tracking: synchronous, they only queue ------------------------------------------------

    def experiences_shown(
        self, campaigns: Iterable[ExperienceCampaign], *, user: User | str | None = None
    ) -> None:
        """Record an impression of each campaign (queued, never blocks). [Flutter:
        ``experiencesShown``]"""
        self._client.experiences_shown(campaigns, user=user)

    def experience_shown(
        self, campaign: ExperienceCampaign, *, user: User | str | None = None
    ) -> None:
        """Record an impression of ``campaign`` (queued, never blocks). [Flutter:
        ``experienceShown``]"""
        self._client.experience_shown(campaign, user=user)

    def experience_clicked(
        self,
        campaign: ExperienceCampaign,
        *,
        b_id: str | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record a click on ``campaign`` (queued, never blocks). [Flutter:
        ``experienceClicked``]"""
        self._client.experience_clicked(campaign, b_id=b_id, user=user)

    def offerings_shown(
        self,
        offering_payloads: Iterable[Offering | Mapping[str, Any]],
        *,
        campaign: ExperienceCampaign | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record an impression of each offering (queued, never blocks). [Flutter:
        ``offeringsShown``]"""
        self._client.offerings_shown(offering_payloads, campaign=campaign, user=user)

    def offering_shown(
        self,
        offering_payload: Offering | Mapping[str, Any],
        *,
        campaign: ExperienceCampaign | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record an impression of one offering (queued, never blocks). [Flutter:
        ``offeringShown``]"""
        self._client.offering_shown(offering_payload, campaign=campaign, user=user)

    def offering_clicked(
        self,
        campaign: ExperienceCampaign,
        offering_payload: Offering | Mapping[str, Any],
        *,
        user: User | str | None = None,
    ) -> None:
        """Record ONE click on ``campaign`` carrying the offering (it counts as the experience
        click too). [Flutter: ``offeringClicked``]"""
        self._client.offering_clicked(campaign, offering_payload, user=user)

    def stats(self) -> PersonalizeStats:
        """A snapshot of the client's counters (reads memory only)."""
        return self._client.stats()

    # waiting: off the event loop -----------------------------------------------------------

    async def flush(self, timeout: float = 5.0) -> FlushReport:
        """Deliver the events queued so far, waiting at most ``timeout`` seconds in a worker
        thread (the loop keeps running), and report what happened."""
        return await asyncio.to_thread(self._client.flush, timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close an owned client within ``timeout`` seconds, in a worker thread (queued events
        are flushed first). A view made by :meth:`from_client` leaves its client open.
        Idempotent."""
        if self._owns_client and not self._client.closed:
            await asyncio.to_thread(self._client.close, timeout)

    async def __aenter__(self) -> AsyncMoEngagePersonalize:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
