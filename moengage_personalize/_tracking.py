"""The tracking calls (impressions and clicks) with the mobile SDKs' names.

Each checks its arguments on the caller's thread, builds cheap records and hands them to the
client's event pipeline: never a network wait, never an exception for delivery problems.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from ._config import User, check_text, coerce_user
from ._events import (
    ACTION_CLICKED,
    ACTION_SHOWN,
    EventRecord,
    campaign_context,
    offering_attribution,
    resolve_user,
)
from ._models import ExperienceCampaign, Offering


class TrackingCalls:
    """Mixed into :class:`~moengage_personalize.MoEngagePersonalize`, which provides
    ``_enqueue`` (queue the records, or count them dropped)."""

    def _enqueue(self, records: list[EventRecord]) -> None:
        raise NotImplementedError

    def experiences_shown(
        self, campaigns: Iterable[ExperienceCampaign], *, user: User | str | None = None
    ) -> None:
        """Record an impression of each campaign, in order. [Flutter: ``experiencesShown``]

        Never blocks on the network and never raises for delivery problems; invalid input raises
        ``TypeError``/``ValueError`` at once and nothing is queued.
        """
        if isinstance(campaigns, (ExperienceCampaign, Mapping)) or not isinstance(
            campaigns, Iterable
        ):
            raise TypeError(
                f"campaigns must be a list of campaigns, not {type(campaigns).__name__}"
            )
        who = coerce_user(user)
        self._enqueue(
            [self._record(ACTION_SHOWN, c, f"campaigns[{i}]", who) for i, c in enumerate(campaigns)]
        )

    def experience_shown(
        self, campaign: ExperienceCampaign, *, user: User | str | None = None
    ) -> None:
        """Record an impression of ``campaign``. [Flutter: ``experienceShown``]"""
        self._enqueue([self._record(ACTION_SHOWN, campaign, "campaign", coerce_user(user))])

    def experience_clicked(
        self,
        campaign: ExperienceCampaign,
        *,
        b_id: str | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record a click on ``campaign``; ``b_id`` names the clicked element (e.g. "Add to
        Cart"). [Flutter: ``experienceClicked``]"""
        over = None
        if b_id is not None:
            if not isinstance(b_id, str) or not b_id:
                raise TypeError(f"b_id must be a non-empty str or None, not {b_id!r}")
            over = {"b_id": check_text(b_id, "b_id")}
        self._enqueue(
            [self._record(ACTION_CLICKED, campaign, "campaign", coerce_user(user), over=over)]
        )

    def offerings_shown(
        self,
        offering_payloads: Iterable[Offering | Mapping[str, Any]],
        *,
        campaign: ExperienceCampaign | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record an impression of each offering, in order (the dicts exactly as returned; plain
        dicts need ``campaign=``). [Flutter: ``offeringsShown``]"""
        if isinstance(offering_payloads, Mapping) or not isinstance(offering_payloads, Iterable):
            raise TypeError(
                f"offering_payloads must be a list of offerings, not "
                f"{type(offering_payloads).__name__}"
            )
        who = coerce_user(user)
        self._enqueue(
            [
                self._offering_record(ACTION_SHOWN, o, campaign, f"offering_payloads[{i}]", who)
                for i, o in enumerate(offering_payloads)
            ]
        )

    def offering_shown(
        self,
        offering_payload: Offering | Mapping[str, Any],
        *,
        campaign: ExperienceCampaign | None = None,
        user: User | str | None = None,
    ) -> None:
        """Record an impression of one offering. [Flutter: ``offeringShown``]"""
        self._enqueue(
            [
                self._offering_record(
                    ACTION_SHOWN, offering_payload, campaign, "offering_payload", coerce_user(user)
                )
            ]
        )

    def offering_clicked(
        self,
        campaign: ExperienceCampaign,
        offering_payload: Offering | Mapping[str, Any],
        *,
        user: User | str | None = None,
    ) -> None:
        """Record ONE click on ``campaign`` carrying the offering: it counts as the experience
        click too (do not also call :meth:`experience_clicked`). [Flutter: ``offeringClicked``]"""
        if campaign is None:
            raise TypeError("campaign must be the campaign whose payload carried the offering")
        self._enqueue(
            [
                self._offering_record(
                    ACTION_CLICKED,
                    offering_payload,
                    campaign,
                    "offering_payload",
                    coerce_user(user),
                )
            ]
        )

    @staticmethod
    def _record(
        action: str,
        campaign: object,
        name: str,
        user: User | None,
        *,
        under: Mapping[str, Any] | None = None,
        over: Mapping[str, Any] | None = None,
    ) -> EventRecord:
        context, fetched_for = campaign_context(campaign, name)
        customer_id, offset = resolve_user(fetched_for, user, name)
        return EventRecord(action, context, under, over, customer_id, offset, int(time.time()))

    def _offering_record(
        self, action: str, offering: object, campaign: object | None, name: str, user: User | None
    ) -> EventRecord:
        attribution, parent = offering_attribution(offering, campaign, name)
        return self._record(action, parent, name, user, under=attribution)
