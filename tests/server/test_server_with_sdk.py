"""The SDK against the local server: the two independent readings of the contract agree."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moengage_personalize import (
    ExperienceFailureReason,
    ExperienceStatus,
    HTTPStatusError,
    MoEngagePersonalize,
    User,
)
from moengage_personalize.server import PersonalizeServer


@pytest.fixture
def client(server: PersonalizeServer) -> Iterator[MoEngagePersonalize]:
    """An SDK client pointed at the sample server."""
    with MoEngagePersonalize(
        server.workspace_id, api_key=server.api_key, base_url=server.base_url
    ) as personalize:
        yield personalize


def test_sdk_reads_metadata_statuses(client: MoEngagePersonalize) -> None:
    """The SDK maps the server's Active/Paused/Scheduled to its enum."""
    meta = client.fetch_experiences_meta().result(10)
    statuses = {m.experience_key: m.status for m in meta.experiences}
    assert statuses["cart-upsell"] is ExperienceStatus.PAUSED
    assert statuses["christmas-sale-strip"] is ExperienceStatus.SCHEDULED


def test_sdk_types_every_payload_kind(client: MoEngagePersonalize) -> None:
    """number, float, boolean and json (object or string) payloads arrive typed in the SDK."""
    result = client.fetch_experience("loyalty-points", user="user_8821").result(10)
    payload = result.experiences[0].payload
    assert isinstance(payload["MaxPoints"], int)
    assert isinstance(payload["Multiplier"], float)
    assert isinstance(payload["ShowBadge"], bool)
    assert isinstance(payload["Tiers"], dict)


def test_sdk_finds_offerings_in_a_stringified_array(client: MoEngagePersonalize) -> None:
    """The offerings the server stores as a JSON string come out as the SDK's Offerings."""
    result = client.fetch_experience("product-recommendations", user="user_8821").result(10)
    campaign = result.experiences[0]
    assert [o["dp_offering_id"] for o in campaign.offerings] == ["off_101", "off_205"]


def test_control_group_is_user_not_in_segment_for_the_sdk(
    client: MoEngagePersonalize, server: PersonalizeServer
) -> None:
    """The SDK sees USER_NOT_IN_SEGMENT where the server knows it is the control group."""
    result = client.fetch_experience("homepage-banner", user="user_4401").result(10)
    assert result.failures[0].reason is ExperienceFailureReason.USER_NOT_IN_SEGMENT
    assert server.decisions(customer_id="user_4401")[-1]["outcome"] == (
        "USER_IN_CAMPAIGN_CONTROL_GROUP"
    )


def test_sdk_events_are_accepted_and_attributed(
    client: MoEngagePersonalize, server: PersonalizeServer
) -> None:
    """Impressions, a click with b_id and an offering click from the SDK are stored in full."""
    user = User(customer_id="user_8821", timezone_offset=19800)
    result = client.fetch_experiences(
        ["homepage-banner", "product-recommendations"], user=user
    ).result(10)
    banner, recommendations = result.experiences
    client.experiences_shown(result.experiences)
    client.experience_clicked(banner, b_id="Grab it")
    client.offering_clicked(recommendations, recommendations.offerings[0])
    report = client.flush(timeout=10)
    assert report.completed
    events = server.events()
    assert len(events) == 4
    assert {e["experience_key"] for e in events} == {"homepage-banner", "product-recommendations"}
    click = next(e for e in events if e["b_id"] == "Grab it")
    assert click["attributes"]["cid"] == banner.experience_context["cid"]
    assert click["user_timezone_offset"] == 19800
    offering = next(e for e in events if e["dp_offering_id"] == "off_101")
    assert offering["attributes"]["rank"] == "1"  # offering_context merged flat
    assert offering["action"] == "MOE_PERSONALIZATION_MESSAGE_CLICKED"


def test_sdk_http_errors_carry_the_servers_envelope_and_request_id(
    server: PersonalizeServer,
) -> None:
    """A 401 from the server reaches the SDK with its title, description and x-request-id."""
    with (
        MoEngagePersonalize(
            server.workspace_id, api_key="wrong", base_url=server.base_url
        ) as personalize,
        pytest.raises(HTTPStatusError) as caught,
    ):
        personalize.fetch_experiences_meta().result(10)
    error = caught.value
    assert error.status_code == 401
    assert error.title == "Authentication required"
    assert error.description == "Invalid API_KEY used in Authentication Header"
    assert error.request_id
