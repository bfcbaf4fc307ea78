"""Targeting over HTTP: rules on stored and in-session attributes, audiences, control groups,
variations, schedules, and the reasons the server records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from moengage_personalize.server import PersonalizeServer

SATURDAY_18H = dt.datetime(2026, 11, 28, 18, 5, tzinfo=dt.timezone.utc).timestamp()


def _workspace(*experiences: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {
        "workspace_id": "W1",
        "api_key": "k1",
        "users": {
            "gold": {
                "attributes": {
                    "tier": "gold",
                    "orders": 12,
                    "interests": ["yoga", "run"],
                    "vip": True,
                }
            },
            "plain": {"attributes": {"tier": "silver", "orders": "3"}},
        },
        "experiences": list(experiences),
        **top,
    }


def _experience(key: str, rules: Any = None, **extra: Any) -> dict[str, Any]:
    audience: dict[str, Any] = {
        "id": "A1",
        "name": "Target",
        "variations": [{"payload": {"T": {"value": "x", "data_type": "string"}}}],
    }
    if rules is None:
        audience["all_users"] = True
    else:
        audience["rules"] = rules
    return {"key": key, "name": key.title(), "audiences": [audience], **extra}


class Client:
    """Fetches from one server and tells which keys were served."""

    def __init__(self, server: PersonalizeServer) -> None:
        self.server = server
        self.session = requests.Session()

    def post(self, body: dict[str, Any]) -> requests.Response:
        return self.session.post(
            self.server.base_url + "/experiences/fetch",
            json=body,
            headers={"MOE-APPKEY": self.server.workspace_id},
            auth=(self.server.workspace_id, self.server.api_key),
            timeout=10,
        )

    def served(
        self, customer_id: str | None = None, keys: list[str] | None = None, **session: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = dict(session)
        if customer_id is not None:
            body["identifiers"] = {"customer_id": customer_id}
        if keys is not None:
            body["experience_key"] = keys
        response = self.post(body)
        assert response.status_code == 200, response.text
        served: dict[str, Any] = response.json()["experiences"]
        return served

    def meta(self) -> dict[str, str]:
        response = self.session.get(
            self.server.base_url + "/experiences/metadata",
            headers={"MOE-APPKEY": self.server.workspace_id},
            auth=(self.server.workspace_id, self.server.api_key),
            timeout=10,
        )
        return {
            e["experience_key"]: e["status"] for e in response.json()["metadata"]["experiences"]
        }


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start servers for given definitions; all stopped at the end of the test."""
    started: list[Client] = []

    def start(document: dict[str, Any], **options: Any) -> Client:
        client = Client(PersonalizeServer(document, port=0, **options).start())
        started.append(client)
        return client

    yield start
    for client in started:
        client.session.close()
        client.server.stop()


def _rule(
    attribute: str, operator: str, value: Any = None, source: str = "session", **extra: Any
) -> dict[str, Any]:
    rule = {"attribute": attribute, "source": source, "operator": operator, **extra}
    if value is not None:
        rule["value"] = value
    return rule


@pytest.mark.parametrize(
    ("rule", "session", "expected"),
    [
        (_rule("current_page", "equals", "cart"), {"current_page": "cart"}, True),
        (_rule("current_page", "equals", "cart"), {"current_page": "Cart"}, False),
        (_rule("current_page", "equals", "cart", ignore_case=True), {"current_page": "CART"}, True),
        (_rule("current_page", "not_equals", "cart"), {"current_page": "home"}, True),
        (_rule("cart_value", "gte", 500), {"cart_value": "500"}, True),
        (_rule("cart_value", "gte", 500), {"cart_value": "499.99"}, False),
        (_rule("cart_value", "gte", 500), {"cart_value": "lots"}, False),
        (_rule("cart_value", "gt", 500), {"cart_value": " 640 "}, True),
        (_rule("cart_value", "lt", 10), {"cart_value": "9"}, True),
        (_rule("cart_value", "lte", 10), {"cart_value": "NaN"}, False),
        (_rule("cart_value", "equals", 500), {"cart_value": "500.0"}, True),
        (_rule("cart_value", "between", [100, 200]), {"cart_value": "150"}, True),
        (_rule("utm_source", "in", ["email", "sms"]), {"utm_source": "sms"}, True),
        (_rule("utm_source", "not_in", ["email", "sms"]), {"utm_source": "push"}, True),
        (_rule("utm_campaign", "starts_with", "winback"), {"utm_campaign": "winback_q1"}, True),
        (_rule("utm_campaign", "ends_with", "_q1"), {"utm_campaign": "winback_q1"}, True),
        (
            _rule("USER_AGENT", "contains", "Android"),
            {"USER_AGENT": "Mozilla (Linux; Android 14)"},
            True,
        ),
        (_rule("USER_AGENT", "not_contains", "Android"), {"USER_AGENT": "iPhone"}, True),
        (_rule("referrer", "exists"), {"referrer": "https://news.example"}, True),
        (_rule("referrer", "exists"), {}, False),
        (_rule("referrer", "not_exists"), {}, True),
        (_rule("current_page", "equals", "cart"), {}, False),
        (_rule("is_member", "equals", True), {"is_member": "TRUE"}, True),
    ],
)
def test_session_rules(
    serve: Any, rule: dict[str, Any], session: dict[str, str], expected: bool
) -> None:
    """Each operator on in-session attributes (which arrive as strings) decides the audience."""
    client = serve(_workspace(_experience("e", rule)))
    assert ("e" in client.served("gold", ["e"], **session)) is expected


@pytest.mark.parametrize(
    ("rule", "customer", "expected"),
    [
        (_rule("tier", "equals", "gold", source="user"), "gold", True),
        (_rule("tier", "equals", "gold", source="user"), "plain", False),
        (_rule("tier", "equals", "gold", source="user"), "stranger", False),
        (_rule("orders", "gte", 10, source="user"), "gold", True),
        (_rule("orders", "gte", 3, source="user"), "plain", True),  # a number stored as a string
        (_rule("interests", "equals", "yoga", source="user"), "gold", True),  # a list attribute
        (_rule("interests", "not_in", ["chess"], source="user"), "gold", True),
        (_rule("vip", "equals", True, source="user"), "gold", True),
    ],
)
def test_user_attribute_rules(
    serve: Any, rule: dict[str, Any], customer: str, expected: bool
) -> None:
    """Rules on stored attributes of the users section; unknown customers have none."""
    client = serve(_workspace(_experience("e", rule)))
    assert ("e" in client.served(customer, ["e"])) is expected


def test_all_any_and_not_groups_combine(serve: Any) -> None:
    """all / any / not groups nest: gold AND (cart >= 500 OR page = cart) AND NOT utm = sms."""
    rules = {
        "all": [
            _rule("tier", "equals", "gold", source="user"),
            {"any": [_rule("cart_value", "gte", 500), _rule("current_page", "equals", "cart")]},
            {"not": _rule("utm_source", "equals", "sms")},
        ]
    }
    client = serve(_workspace(_experience("e", rules)))
    assert "e" in client.served("gold", ["e"], current_page="cart")
    assert "e" not in client.served("gold", ["e"], current_page="home", cart_value="10")
    assert "e" not in client.served("gold", ["e"], current_page="cart", utm_source="sms")
    assert "e" not in client.served("plain", ["e"], current_page="cart")


def test_day_and_hour_come_from_the_body(serve: Any) -> None:
    """DAY_OF_THE_WEEK / TIME_OF_THE_DAY rules read the values the request sends."""
    rules = {
        "all": [
            _rule("DAY_OF_THE_WEEK", "in", ["Saturday", "Sunday"]),
            _rule("TIME_OF_THE_DAY", "between", [17, 21]),
        ]
    }
    client = serve(_workspace(_experience("e", rules)))
    assert "e" in client.served("gold", ["e"], DAY_OF_THE_WEEK="Sunday", TIME_OF_THE_DAY="17")
    assert "e" not in client.served("gold", ["e"], DAY_OF_THE_WEEK="Monday", TIME_OF_THE_DAY="17")
    assert "e" not in client.served("gold", ["e"], DAY_OF_THE_WEEK="Sunday", TIME_OF_THE_DAY="09")


def test_day_and_hour_default_to_the_server_clock(serve: Any) -> None:
    """Without DAY_OF_THE_WEEK / TIME_OF_THE_DAY the server's UTC clock decides."""
    rules = {
        "all": [
            _rule("DAY_OF_THE_WEEK", "equals", "Saturday"),
            _rule("TIME_OF_THE_DAY", "equals", "18"),
        ]
    }
    document = _workspace(_experience("e", rules))
    assert "e" in serve(document, clock=lambda: SATURDAY_18H).served("gold", ["e"])
    assert "e" not in serve(document, clock=lambda: SATURDAY_18H + 86400).served("gold", ["e"])


def test_first_matching_audience_wins(serve: Any, sample_doc: dict[str, Any]) -> None:
    """Audiences are tried in order: a high-intent user gets 42D, others fall to All Users."""
    client = serve(sample_doc)
    rich = client.served("user_8821", ["homepage-banner"])["homepage-banner"]
    poor = client.served("user_1002", ["homepage-banner"])["homepage-banner"]
    assert rich["experience_context"]["audience_id"] == "42D"
    assert poor["experience_context"]["audience_id"] == "5A"


def test_control_group_user_is_not_served_and_the_server_says_why(
    serve: Any, sample_doc: dict[str, Any]
) -> None:
    """user_4401 is in the homepage banner's 20% control group: absent, recorded as such."""
    client = serve(sample_doc)
    assert client.served("user_4401", ["homepage-banner"]) == {}
    (decision,) = client.server.decisions(customer_id="user_4401")
    assert decision["outcome"] == "USER_IN_CAMPAIGN_CONTROL_GROUP"
    assert "20% control group" in decision["detail"]


def test_the_decisions_endpoint_explains_a_missing_segment(
    serve: Any, sample_doc: dict[str, Any]
) -> None:
    """GET /_local/decisions names the failing condition and the attribute's value."""
    client = serve(sample_doc)
    client.served("user_1002", ["cart-free-delivery"], current_page="cart", cart_value="120")
    response = requests.get(
        client.server.url + "/_local/decisions", params={"customer_id": "user_1002"}, timeout=10
    )
    (decision,) = response.json()["decisions"]
    assert decision["outcome"] == "USER_NOT_IN_SEGMENT"
    assert "cart_value gte 500 failed (cart_value is '120')" in decision["detail"]


def test_control_group_size_matches_the_percentage(serve: Any) -> None:
    """About 30% of 400 customers land in a 30% control group."""
    client = serve(_workspace(_experience("e", control_group_percentage=30)))
    held_out = sum(not client.served(f"c{n}", ["e"]) for n in range(400))
    assert 90 <= held_out <= 150


def test_assignment_is_deterministic_across_servers(serve: Any, sample_doc: dict[str, Any]) -> None:
    """Two servers give the same 50 customers the same variation and control-group outcome."""
    first, second = serve(sample_doc), serve(sample_doc)

    def outcome(client: Client, n: int) -> Any:
        served = client.served(f"c{n}", ["homepage-banner"], cart_value="900")
        entry = served.get("homepage-banner")
        return None if entry is None else entry["experience_context"]["moe_variation_id"]

    assert [outcome(first, n) for n in range(50)] == [outcome(second, n) for n in range(50)]


def test_variations_follow_their_weights(serve: Any) -> None:
    """Weights 3:1 split 400 customers about 75/25; a weight 0 variation is never served."""
    audience = {
        "id": "A",
        "all_users": True,
        "variations": [
            {"id": "1", "weight": 3, "payload": {}},
            {"id": "2", "weight": 1, "payload": {}},
            {"id": "3", "weight": 0, "payload": {}},
        ],
    }
    client = serve(_workspace({"key": "e", "name": "E", "audiences": [audience]}))
    counts = {"1": 0, "2": 0, "3": 0}
    for n in range(400):
        counts[client.served(f"c{n}", ["e"])["e"]["experience_context"]["moe_variation_id"]] += 1
    assert 260 <= counts["1"] <= 340
    assert counts["3"] == 0


def test_global_control_group_holds_users_out_of_everything(serve: Any) -> None:
    """With a global control group, some users get nothing and are recorded as such."""
    client = serve(_workspace(_experience("e"), global_control_group_percentage=50))
    out = [n for n in range(40) if not client.served(f"c{n}", ["e"])]
    assert out
    decision = client.server.decisions(customer_id=f"c{out[0]}")[-1]
    assert decision["outcome"] == "USER_IN_GLOBAL_CONTROL_GROUP"


def test_anonymous_visitors_only_match_all_users_audiences(serve: Any) -> None:
    """A rule an anonymous request would satisfy still does not apply without identifiers."""
    client = serve(
        _workspace(
            _experience("ruled", _rule("current_page", "equals", "cart")), _experience("everyone")
        )
    )
    assert set(client.served(None, None, current_page="cart")) == {"everyone"}
    decision = client.server.decisions(experience_key="ruled")[-1]
    assert decision["customer_id"] is None
    assert "identifies no user" in decision["detail"]


def test_schedule_start_and_end_follow_the_clock(serve: Any) -> None:
    """Before start: Scheduled and not served; between: Active; after end: gone entirely."""
    start = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    document = _workspace(
        _experience(
            "timed", start_time="2030-01-01T00:00:00Z", end_time="2030-01-31T00:00:00+00:00"
        )
    )
    now = [start.timestamp() - 1]
    client = serve(document, clock=lambda: now[0])
    assert client.meta() == {"timed": "Scheduled"}
    assert client.served("gold", ["timed"]) == {}
    now[0] = start.timestamp()
    assert client.meta() == {"timed": "Active"}
    assert "timed" in client.served("gold", ["timed"])
    now[0] = start.timestamp() + 31 * 86400
    assert client.meta() == {}
    assert client.served("gold", ["timed"]) == {}
    assert client.server.decisions(experience_key="timed")[-1]["outcome"] == "EXPERIENCE_EXPIRED"


def test_paused_wins_over_schedule_and_end(serve: Any) -> None:
    """A paused experience is listed Paused even before its start or after its end."""
    document = _workspace(
        _experience("early", status="Paused", start_time="2099-01-01T00:00:00Z"),
        _experience("late", status="Paused", end_time="2000-01-01T00:00:00Z"),
    )
    client = serve(document)
    assert client.meta() == {"early": "Paused", "late": "Paused"}
    assert client.served("gold", ["early", "late"]) == {}
