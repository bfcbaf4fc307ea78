"""Fetch: headers, body shape, key resolution, failure reasons, the 25 rule, payload typing."""

from __future__ import annotations

import base64
import datetime as dt

from pytest_httpserver import HTTPServer

from moengage_personalize import (
    DataSource,
    ExperienceFailureReason,
    MoEngagePersonalize,
    Offering,
    User,
    __version__,
)

from support import (
    API_KEY,
    APP_ID,
    CONTEXT,
    FUTURE_TIMEOUT,
    fetch_bodies,
    meta_body,
    requests_to,
    served,
)

R = ExperienceFailureReason


def test_requests_carry_auth_appkey_json_and_user_agent(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Every request has Basic auth, MOE-APPKEY, JSON content type and an SDK User-Agent."""
    with_meta.expect_request("/v1/experiences/fetch", method="POST").respond_with_json(
        served("homepage-banner")
    )
    client.fetch_experience("homepage-banner", user="u1").result(FUTURE_TIMEOUT)
    meta_req = requests_to(with_meta, "/v1/experiences/metadata")[0]
    fetch_req = requests_to(with_meta, "/v1/experiences/fetch")[0]
    token = base64.b64encode(f"{APP_ID}:{API_KEY}".encode()).decode()
    for req in (meta_req, fetch_req):
        assert req.headers["Authorization"] == f"Basic {token}"
        assert req.headers["MOE-APPKEY"] == APP_ID
        assert req.headers["User-Agent"].startswith(f"moengage-personalize-python/{__version__}")
    assert fetch_req.headers["Content-Type"] == "application/json"
    assert meta_req.query_string == b""  # the full list is fetched and filtered locally


def test_body_has_identifiers_keys_clock_user_fields_and_attributes(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """The fetch body carries identifiers, experience_key, the UTC day/hour, IP, UA and attributes."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("homepage-banner"))
    user = User(
        customer_id="user_8821",
        user_identifiers={"u_em": "jane@example.com"},
        ip_address="203.0.113.42",
        user_agent="Mozilla/5.0",
    )
    before = dt.datetime.now(dt.timezone.utc)
    client.fetch_experience(
        "homepage-banner", attributes={"current_page": "home", "cart_value": "640"}, user=user
    ).result(FUTURE_TIMEOUT)
    after = dt.datetime.now(dt.timezone.utc)
    (body,) = fetch_bodies(with_meta)
    days = {t.strftime("%A") for t in (before, after)}
    hours = {f"{t.hour:02d}" for t in (before, after)}
    assert body.pop("DAY_OF_THE_WEEK") in days
    assert body.pop("TIME_OF_THE_DAY") in hours
    assert body == {
        "identifiers": {
            "customer_id": "user_8821",
            "user_identifiers": {"u_em": "jane@example.com"},
        },
        "experience_key": ["homepage-banner"],
        "USER_IP_ADDRESS": "203.0.113.42",
        "USER_AGENT": "Mozilla/5.0",
        "current_page": "home",
        "cart_value": "640",
    }


def test_caller_attributes_win_over_derived_values(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Values the caller puts in attributes replace the clock- and User-derived ones."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("homepage-banner"))
    client.fetch_experience(
        "homepage-banner",
        attributes={"DAY_OF_THE_WEEK": "Sunday", "TIME_OF_THE_DAY": "07", "USER_AGENT": "bot"},
        user=User(customer_id="u", user_agent="Mozilla/5.0"),
    ).result(FUTURE_TIMEOUT)
    (body,) = fetch_bodies(with_meta)
    assert (body["DAY_OF_THE_WEEK"], body["TIME_OF_THE_DAY"], body["USER_AGENT"]) == (
        "Sunday",
        "07",
        "bot",
    )


def test_anonymous_fetch_sends_no_identifiers(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Without a user the body has no identifiers (the service answers All-Users experiences)."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("homepage-banner"))
    result = client.fetch_experience("homepage-banner").result(FUTURE_TIMEOUT)
    assert "identifiers" not in fetch_bodies(with_meta)[0]
    assert result.experiences[0].user is None


def test_campaign_keeps_context_raw_payload_source_and_user(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """A served campaign keeps experience_context whole, the raw envelopes and its user."""
    raw = {"Title": {"value": "Hi", "data_type": "string"}}
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(
        {"experiences": {"homepage-banner": {"payload": raw, "experience_context": CONTEXT}}}
    )
    (campaign,) = (
        client.fetch_experience("homepage-banner", user="u1").result(FUTURE_TIMEOUT).experiences
    )
    assert campaign.experience_key == "homepage-banner"
    assert campaign.payload == {"Title": "Hi"}
    assert campaign.raw_payload == raw
    assert campaign.experience_context == CONTEXT
    assert campaign.source is DataSource.NETWORK
    assert campaign.user == User(customer_id="u1")


def test_failure_reasons_grouped_and_results_in_request_order(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Unknown, paused/scheduled and not-returned keys fail with their reasons, grouped in order."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("homepage-banner"))
    result = client.fetch_experiences(
        ["nope", "cart-upsell", "paused-one", "homepage-banner", "later-one", "nope2"], user="u"
    ).result(FUTURE_TIMEOUT)
    assert [c.experience_key for c in result.experiences] == ["homepage-banner"]
    assert [(f.reason, f.experience_keys) for f in result.failures] == [
        (R.INVALID_EXPERIENCE_KEY, ["nope", "nope2"]),
        (R.USER_NOT_IN_SEGMENT, ["cart-upsell"]),
        (R.EXPERIENCE_NOT_ACTIVE, ["paused-one", "later-one"]),
    ]
    (body,) = fetch_bodies(with_meta)
    assert body["experience_key"] == ["cart-upsell", "homepage-banner"]  # only active keys sent


def test_campaigns_come_back_in_request_order(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Campaigns follow the request's order, not the answer's."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(
        served("homepage-banner", "cart-upsell")
    )
    result = client.fetch_experiences(["cart-upsell", "homepage-banner"]).result(FUTURE_TIMEOUT)
    assert [c.experience_key for c in result.experiences] == ["cart-upsell", "homepage-banner"]


def test_duplicate_keys_are_asked_once(with_meta: HTTPServer, client: MoEngagePersonalize) -> None:
    """A key repeated in the request is sent once and appears once in the result."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    result = client.fetch_experiences(["cart-upsell", "cart-upsell", "nope", "nope"]).result(
        FUTURE_TIMEOUT
    )
    assert fetch_bodies(with_meta)[0]["experience_key"] == ["cart-upsell"]
    assert [c.experience_key for c in result.experiences] == ["cart-upsell"]
    assert result.failures[0].experience_keys == ["nope"]


def test_no_request_when_no_key_is_fetchable(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """When every key is invalid or inactive, nothing is sent to the fetch endpoint."""
    result = client.fetch_experiences(["nope", "paused-one"]).result(FUTURE_TIMEOUT)
    assert requests_to(with_meta, "/v1/experiences/fetch") == []
    assert result.experiences == []
    assert {f.reason for f in result.failures} == {
        R.INVALID_EXPERIENCE_KEY,
        R.EXPERIENCE_NOT_ACTIVE,
    }


def test_25_rule_fetches_first_25_and_reports_the_rest(
    httpserver: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Past 25 fetchable keys, the first 25 are fetched and the rest fail MAX_LIMIT_BREACHED."""
    keys = [f"exp-{i:02d}" for i in range(30)]
    httpserver.expect_request("/v1/experiences/metadata").respond_with_json(
        meta_body(("paused-one", "Paused"), *((k, "Active") for k in keys))
    )
    httpserver.expect_request("/v1/experiences/fetch").respond_with_json(served(*keys[:25]))
    result = client.fetch_experiences(["paused-one", "bad", *keys]).result(FUTURE_TIMEOUT)
    assert fetch_bodies(httpserver)[0]["experience_key"] == keys[:25]
    assert len(result.experiences) == 25
    assert [(f.reason, f.experience_keys) for f in result.failures] == [
        (R.EXPERIENCE_NOT_ACTIVE, ["paused-one"]),
        (R.INVALID_EXPERIENCE_KEY, ["bad"]),
        (R.MAX_LIMIT_BREACHED, keys[25:]),
    ]


def test_payload_values_typed_by_data_type(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """string/number/float/boolean/json are unwrapped to Python values; bad ones stay as received."""
    payload = {
        "s": {"value": "text", "data_type": "string"},
        "n_int": {"value": "42", "data_type": "number"},
        "n_float": {"value": "4.5", "data_type": "number"},
        "n_json": {"value": 7, "data_type": "number"},
        "f": {"value": "3", "data_type": "float"},
        "b1": {"value": "TRUE", "data_type": "boolean"},
        "b2": {"value": False, "data_type": "boolean"},
        "j_str": {"value": '{"a": [1, 2]}', "data_type": "json"},
        "j_obj": {"value": {"a": 1}, "data_type": "json"},
        "bad_num": {"value": "forty", "data_type": "number"},
        "bad_json": {"value": "{nope", "data_type": "json"},
        "bad_bool": {"value": "yes", "data_type": "boolean"},
        "odd_kind": {"value": "x", "data_type": "color"},
        "list_kind": {"value": "y", "data_type": ["string"]},
        "no_envelope": "bare",
    }
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(
        served("homepage-banner", payload=payload)
    )
    (campaign,) = client.fetch_experience("homepage-banner").result(FUTURE_TIMEOUT).experiences
    assert campaign.payload == {
        "s": "text",
        "n_int": 42,
        "n_float": 4.5,
        "n_json": 7,
        "f": 3.0,
        "b1": True,
        "b2": False,
        "j_str": {"a": [1, 2]},
        "j_obj": {"a": 1},
        "bad_num": "forty",
        "bad_json": "{nope",
        "bad_bool": "yes",
        "odd_kind": "x",
        "list_kind": "y",
        "no_envelope": "bare",
    }
    assert isinstance(campaign.payload["n_int"], int)
    assert isinstance(campaign.payload["f"], float)
    assert campaign.raw_payload == payload


def test_offerings_found_and_linked_to_their_campaign(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """Offerings inside a (stringified) json payload become Offering dicts that know their campaign."""
    offers = [
        {"dp_offering_id": "o1", "offering_content": {"sku": "A"}, "offering_context": {"k": "1"}},
        {"dp_offering_id": "o2", "offering_content": {"sku": "B"}, "offering_context": {"k": "2"}},
    ]
    import json

    payload = {
        "Title": {"value": "Picks", "data_type": "string"},
        "Products": {"value": json.dumps(offers), "data_type": "json"},
    }
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(
        served("homepage-banner", payload=payload)
    )
    (campaign,) = (
        client.fetch_experience("homepage-banner", user="u").result(FUTURE_TIMEOUT).experiences
    )
    assert campaign.offerings == offers
    assert all(isinstance(o, Offering) and o.campaign is campaign for o in campaign.offerings)
    assert campaign.payload["Products"][0] is campaign.offerings[0]
    assert json.loads(json.dumps(campaign.payload["Products"])) == offers
    assert campaign.offerings[1].offering_id == "o2"


def test_sixteen_threads_share_one_client(
    with_meta: HTTPServer, client: MoEngagePersonalize
) -> None:
    """16 threads fetching through one client all get their own correct results."""
    import threading

    def answer(request):  # type: ignore[no-untyped-def]
        from werkzeug import Response

        body = json.loads(request.data)
        user = body["identifiers"]["customer_id"]
        return Response(
            json.dumps(
                served("homepage-banner", payload={"u": {"value": user, "data_type": "string"}})
            ),
            content_type="application/json",
        )

    import json

    with_meta.expect_request("/v1/experiences/fetch").respond_with_handler(answer)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                user = f"user-{n}-{i}"
                result = client.fetch_experience("homepage-banner", user=user).result(
                    FUTURE_TIMEOUT
                )
                assert result.experiences[0].payload == {"u": user}
                assert result.experiences[0].user == User(customer_id=user)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(FUTURE_TIMEOUT * 2)
    assert errors == []
    assert len(requests_to(with_meta, "/v1/experiences/fetch")) == 80
    assert len(requests_to(with_meta, "/v1/experiences/metadata")) == 1
