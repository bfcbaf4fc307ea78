"""Impressions and clicks: wire shape, attribution, batching, retries, splitting, drops, close."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from moengage_personalize import (
    DataSource,
    ExperienceCampaign,
    MoEngagePersonalize,
    Offering,
    PersonalizeConfig,
    User,
)

from support import API_KEY, APP_ID, CONTEXT, SilentServer, Sleeps, wait_for

EVENTS = "/v1/experiences/events"
SHOWN = "MOE_PERSONALIZATION_MESSAGE_SHOWN"
CLICKED = "MOE_PERSONALIZATION_MESSAGE_CLICKED"
OK = {"status": "success", "message": "Your request has been accepted and will be processed soon."}


def campaign(
    key: str = "homepage-banner",
    user: User | None = None,
    offerings: list[Offering] | None = None,
) -> ExperienceCampaign:
    return ExperienceCampaign(
        experience_key=key,
        payload={},
        experience_context=CONTEXT if key == "homepage-banner" else {**CONTEXT, "experience": key},
        source=DataSource.NETWORK,
        user=user if user is not None else User(customer_id="u1", timezone_offset=19800),
        offerings=offerings or [],
    )


def offering(oid: str = "o1", **context: Any) -> Offering:
    return Offering(
        {
            "dp_offering_id": oid,
            "offering_content": {"sku": "SKU-" + oid},
            "offering_context": {"rank": "1", "slot": "hero", **context},
        }
    )


class Recorder:
    """Answers the events endpoint and keeps every request body it received."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        self.script: list[tuple[int, dict[str, str]]] = []  # answers to give first
        self.reject_cid: str | None = None

    def __call__(self, request: Request) -> Response:
        body = json.loads(request.data)
        with self.lock:
            self.bodies.append(body)
            status, headers = self.script.pop(0) if self.script else (200, {})
            if self.reject_cid and self.reject_cid in request.data.decode():
                status = 400
            self.statuses.append(status)
        answer = (
            OK if status == 200 else {"title": "Invalid Field Value", "description": "elements"}
        )
        return Response(
            json.dumps(answer), status=status, headers=headers, content_type="application/json"
        )

    def delivered(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(element without actions, action) for every action of every accepted request."""
        out = []
        with self.lock:
            pairs = list(zip(self.bodies, self.statuses, strict=True))
        for body, status in pairs:
            if status != 200:
                continue
            for element in body["elements"]:
                head = {k: v for k, v in element.items() if k != "actions"}
                out.extend((head, action) for action in element["actions"])
        return out


@pytest.fixture
def recorder(httpserver: HTTPServer) -> Recorder:
    rec = Recorder()
    httpserver.expect_request(EVENTS, method="POST").respond_with_handler(rec)
    return rec


@pytest.fixture
def tracker(base_url: str, sleeps: Sleeps, recorder: Recorder) -> Iterator[MoEngagePersonalize]:
    config = PersonalizeConfig(sleep=sleeps, event_flush_interval=0.05)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    yield client
    client.close(timeout=5)


def test_experience_shown_wire_shape(tracker: MoEngagePersonalize, recorder: Recorder) -> None:
    """One impression: one element for the user, the action with uuid, time, platform, context."""
    before = int(time.time())
    tracker.experience_shown(campaign())
    report = tracker.flush(timeout=5)
    assert report.completed
    assert (report.sent, report.pending, report.failed, report.dropped) == (1, 0, 0, 0)
    (body,) = recorder.bodies
    (element,) = body["elements"]
    (action,) = element.pop("actions")
    assert element == {"customer_id": "u1", "user_timezone_offset": 19800}
    assert uuid.UUID(action.pop("moe_event_uuid")).version == 4
    assert before <= action.pop("event_time") <= int(time.time())
    assert action == {"action": SHOWN, "platform": "web", "attributes": CONTEXT}


def test_click_carries_b_id(tracker: MoEngagePersonalize, recorder: Recorder) -> None:
    """A click is the CLICKED action with b_id inside its attributes."""
    tracker.experience_clicked(campaign(), b_id="Add to Cart")
    tracker.flush(timeout=5)
    ((_, action),) = recorder.delivered()
    assert action["action"] == CLICKED
    assert action["attributes"] == {**CONTEXT, "b_id": "Add to Cart"}


def test_offering_events_carry_parent_context_and_attribution(
    tracker: MoEngagePersonalize, recorder: Recorder
) -> None:
    """An offering event is the experience action with the offering's attribution merged flat;
    the experience context wins where names clash."""
    offer = offering("o7", cid="offering-cid-loses", promo="SPRING")
    parent = campaign(offerings=[offer])
    assert offer.campaign is parent
    tracker.offering_shown(offer)
    tracker.offering_clicked(parent, offer)
    tracker.flush(timeout=5)
    by_action = {a["action"]: a for _, a in recorder.delivered()}
    shown, clicked = by_action[SHOWN], by_action[CLICKED]
    expected = {"rank": "1", "slot": "hero", "promo": "SPRING", "dp_offering_id": "o7", **CONTEXT}
    assert shown["action"] == SHOWN
    assert shown["attributes"] == expected
    assert clicked["action"] == CLICKED
    assert clicked["attributes"] == expected
    assert len(recorder.delivered()) == 2  # the offering click is ONE click


def test_plain_offering_dict_needs_campaign(
    tracker: MoEngagePersonalize, recorder: Recorder
) -> None:
    """A plain dict offering (re-read from a cache) is attributed through campaign=."""
    plain = dict(offering("o2"))
    with pytest.raises(ValueError, match="campaign="):
        tracker.offering_shown(plain)
    tracker.offering_shown(plain, campaign=campaign())
    tracker.flush(timeout=5)
    ((_, action),) = recorder.delivered()
    assert action["attributes"]["dp_offering_id"] == "o2"


def test_plural_calls_keep_every_item_in_order(
    tracker: MoEngagePersonalize, recorder: Recorder
) -> None:
    """experiences_shown and offerings_shown record every item, in order."""
    offers = [offering(f"o{i}") for i in range(5)]
    parent = campaign(offerings=offers)
    tracker.experiences_shown([campaign(f"exp-{i}") for i in range(5)])
    tracker.offerings_shown(offers)
    assert parent.offerings == offers
    tracker.flush(timeout=5)
    actions = [a for _, a in recorder.delivered()]
    shown = [
        a["attributes"]["experience"] for a in actions if "dp_offering_id" not in a["attributes"]
    ]
    offers_seen = [
        a["attributes"]["dp_offering_id"] for a in actions if "dp_offering_id" in a["attributes"]
    ]
    assert shown == [f"exp-{i}" for i in range(5)]  # each plural call keeps its items' order
    assert offers_seen == [f"o{i}" for i in range(5)]
    assert len({a["moe_event_uuid"] for a in actions}) == 10


def test_events_grouped_per_user_and_user_override(
    tracker: MoEngagePersonalize, recorder: Recorder
) -> None:
    """Actions of one user share one element; user= overrides the fetch's user."""
    tracker.experience_shown(campaign())
    tracker.experience_shown(campaign(), user="session-42")
    tracker.experience_clicked(campaign())
    tracker.flush(timeout=5)
    (body,) = recorder.bodies
    summary = [
        (e["customer_id"], e.get("user_timezone_offset"), len(e["actions"]))
        for e in body["elements"]
    ]
    assert summary == [("u1", 19800, 2), ("session-42", None, 1)]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: t.experience_shown({"experience_key": "x"}), TypeError, "ExperienceCampaign"),
        (lambda t: t.experience_shown(None), TypeError, "campaign must be"),
        (
            lambda t: t.experience_shown({"experience_context": {"cid": "c"}}),
            ValueError,
            "lacks experience, moe_locale_id",
        ),
        (lambda t: t.experience_shown(campaign(user=User())), ValueError, "customer id"),
        (
            lambda t: t.experience_shown({"experience_context": {**CONTEXT, 1: "x"}}, user="u"),
            TypeError,
            "keys must all be str",
        ),
        (lambda t: t.experience_shown(campaign(), user=5), TypeError, "user must be"),
        (lambda t: t.experience_clicked(campaign(), b_id=5), TypeError, "b_id"),
        (lambda t: t.experiences_shown(campaign()), TypeError, "campaigns must be a list"),
        (lambda t: t.experiences_shown([campaign(), "x"]), TypeError, r"campaigns\[1\]"),
        (lambda t: t.offering_shown({"dp_offering_id": "o"}), ValueError, "offering_context"),
        (lambda t: t.offering_shown({"offering_context": {}}), ValueError, "dp_offering_id"),
        (lambda t: t.offering_shown("o1"), TypeError, "offering_payload must be"),
        (lambda t: t.offerings_shown(offering()), TypeError, "offering_payloads must be a list"),
        (lambda t: t.offerings_shown([offering()]), ValueError, r"offering_payloads\[0\]"),
        (lambda t: t.offering_clicked(None, offering()), TypeError, "campaign must be"),
        (lambda t: t.flush(timeout=-1), ValueError, "timeout"),
    ],
)
def test_invalid_tracking_input_raises_and_queues_nothing(
    tracker: MoEngagePersonalize, recorder: Recorder, call: Any, error: type, match: str
) -> None:
    """Bad tracking input raises at once naming the problem; nothing is queued (a plural call with
    one bad item queues none of them)."""
    with pytest.raises(error, match=match):
        call(tracker)
    assert tracker.stats().events_queued == 0
    tracker.flush(timeout=1)
    assert recorder.bodies == []


def test_campaign_from_mapping_cache_with_user(
    tracker: MoEngagePersonalize, recorder: Recorder
) -> None:
    """A campaign re-read from the app's cache as a mapping works with user=."""
    cached = {"experience_key": "k", "experience_context": dict(CONTEXT)}
    tracker.experience_shown(cached, user=User(customer_id="c9", timezone_offset=-3600))
    tracker.flush(timeout=5)
    ((head, action),) = recorder.delivered()
    assert head == {"customer_id": "c9", "user_timezone_offset": -3600}
    assert action["attributes"] == CONTEXT


def test_batches_respect_the_batch_size(base_url: str, sleeps: Sleeps, recorder: Recorder) -> None:
    """With event_batch_size=3, seven events go out as 3 + 3 + 1 actions."""
    config = PersonalizeConfig(sleep=sleeps, event_batch_size=3, event_flush_interval=5)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        for _ in range(7):
            client.experience_shown(campaign())
        assert client.flush(timeout=5).sent == 7
    # two requests may be in flight at once: their arrival order is not fixed
    sizes = [sum(len(e["actions"]) for e in b["elements"]) for b in recorder.bodies]
    assert sorted(sizes) == [1, 3, 3]


def test_batches_hold_at_most_100_users(tracker: MoEngagePersonalize, recorder: Recorder) -> None:
    """Events of 150 users go out in requests of at most 100 elements."""
    for i in range(150):
        tracker.experience_shown(campaign(), user=f"user-{i}")
    assert tracker.flush(timeout=5).sent == 150
    assert sorted(len(b["elements"]) for b in recorder.bodies) == [50, 100]


def test_5xx_retried_with_the_same_uuids(
    tracker: MoEngagePersonalize, recorder: Recorder, sleeps: Sleeps
) -> None:
    """A 503 then 200: the batch is resent with the same moe_event_uuid values."""
    recorder.script = [(503, {}), (503, {})]
    tracker.experience_shown(campaign())
    tracker.experience_clicked(campaign())
    report = tracker.flush(timeout=5)
    assert report.sent == 2
    first, _, third = recorder.bodies
    uuids = [[a["moe_event_uuid"] for a in b["elements"][0]["actions"]] for b in (first, third)]
    assert uuids[0] == uuids[1]
    assert len(sleeps.calls) == 2
    assert tracker.stats().events_retried == 4


def test_429_waits_retry_after(
    tracker: MoEngagePersonalize, recorder: Recorder, sleeps: Sleeps
) -> None:
    """A 429 with Retry-After waits that long, then resends."""
    recorder.script = [(429, {"Retry-After": "7"})]
    tracker.experience_shown(campaign())
    assert tracker.flush(timeout=5).sent == 1
    assert sleeps.calls == [7.0]


def test_401_keeps_the_events_and_backs_off(
    tracker: MoEngagePersonalize, recorder: Recorder, sleeps: Sleeps
) -> None:
    """A 401 (key being rotated) does not drop events: they are retried with growing backoff."""
    recorder.script = [(401, {})] * 4
    tracker.experience_shown(campaign())
    report = tracker.flush(timeout=5)
    assert (report.sent, report.failed) == (1, 0)
    assert recorder.statuses == [401, 401, 401, 401, 200]
    assert len(sleeps.calls) == 4
    assert all(0 < s <= 60 for s in sleeps.calls)


def test_a_rejected_event_is_isolated_and_only_it_dropped(
    tracker: MoEngagePersonalize, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """One bad event fails a whole request at MoEngage: the batch is split until it is alone, and
    only it is dropped (logged with the reason)."""
    recorder.reject_cid = "BAD-CID"
    bad = ExperienceCampaign(
        experience_key="bad",
        payload={},
        experience_context={**CONTEXT, "cid": "BAD-CID"},
        source=DataSource.NETWORK,
        user=User(customer_id="u1"),
    )
    for i in range(8):
        tracker.experience_shown(bad if i == 5 else campaign(f"exp-{i}"))
    with caplog.at_level(logging.WARNING, logger="moengage_personalize"):
        report = tracker.flush(timeout=5)
    assert (report.sent, report.failed, report.pending) == (7, 1, 0)
    delivered = [a["attributes"]["experience"] for _, a in recorder.delivered()]
    assert sorted(delivered) == sorted(f"exp-{i}" for i in range(8) if i != 5)
    assert "rejected an event" in caplog.text
    assert "Invalid Field Value" in caplog.text


def test_queue_full_drops_new_events_counted_and_warned_once(
    base_url: str, sleeps: Sleeps, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Past event_queue_size, new events are dropped, counted, and warned about once per burst."""
    config = PersonalizeConfig(sleep=sleeps, event_queue_size=5, event_flush_interval=60)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        with caplog.at_level(logging.WARNING, logger="moengage_personalize"):
            for _ in range(8):
                client.experience_shown(campaign())
        stats = client.stats()
        assert stats.events_dropped == {"queue_full": 3}
        assert stats.events_queued == 5
        assert caplog.text.count("event queue is full") == 1
        assert client.flush(timeout=5).sent == 5


def test_events_held_stay_within_the_queue_size_while_the_service_hangs(
    silent_server: SilentServer, sleeps: Sleeps
) -> None:
    """event_queue_size bounds what is held in memory, queued or taken into requests that do
    not settle: a service that never answers never makes the client hold more."""
    config = PersonalizeConfig(sleep=sleeps, event_queue_size=50, event_flush_interval=0.01)
    client = MoEngagePersonalize(
        APP_ID, api_key=API_KEY, base_url=silent_server.base_url, config=config
    )
    try:
        peak = 0
        for i in range(400):
            client.experience_shown(campaign())
            if i % 50 == 49:  # the dispatcher takes a batch and hangs on it
                assert wait_for(lambda: client.stats().events_queued >= 50, 2)
                time.sleep(0.02)
            peak = max(peak, client.stats().events_pending)
        stats = client.stats()
        assert peak <= 50
        assert stats.events_dropped["queue_full"] == 400 - stats.events_queued
    finally:
        client.close(timeout=0.2)


def test_close_delivers_everything(base_url: str, sleeps: Sleeps, recorder: Recorder) -> None:
    """close() flushes what is queued before it stops."""
    config = PersonalizeConfig(sleep=sleeps, event_flush_interval=60)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    for _ in range(50):
        client.experience_shown(campaign())
    client.close(timeout=5)
    assert len(recorder.delivered()) == 50


def test_tracking_after_close_drops_counts_and_warns_once(
    tracker: MoEngagePersonalize, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """After close(), tracking calls are dropped with cause 'closed' and one warning."""
    tracker.close()
    with caplog.at_level(logging.WARNING, logger="moengage_personalize"):
        tracker.experience_shown(campaign())
        tracker.experiences_shown([campaign(), campaign()])
    assert tracker.stats().events_dropped == {"closed": 3}
    assert caplog.text.count("client is closed") == 1
    assert recorder.bodies == []


def test_disabled_client_tracking_is_a_noop(base_url: str, recorder: Recorder) -> None:
    """enabled=False: tracking calls send nothing."""
    config = PersonalizeConfig(enabled=False)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        client.experience_shown(campaign())
        assert client.flush(timeout=1).sent == 0
        assert client.stats().events_dropped == {"disabled": 1}
    assert recorder.bodies == []


def test_tracking_never_blocks_while_the_service_hangs(
    base_url: str, httpserver: HTTPServer
) -> None:
    """With the events endpoint hanging, tracking calls still return at once."""
    release = threading.Event()

    def hang(_request: Request) -> Response:
        release.wait(5)
        return Response(json.dumps(OK), content_type="application/json")

    httpserver.expect_request(EVENTS).respond_with_handler(hang)
    config = PersonalizeConfig(event_flush_interval=0.01)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    try:
        client.experience_shown(campaign())
        time.sleep(0.1)  # the dispatcher is now stuck in the request
        start = time.perf_counter()
        for _ in range(1000):
            client.experience_shown(campaign())
        assert time.perf_counter() - start < 0.5
    finally:
        release.set()
        client.close(timeout=5)


def test_many_producer_threads_arrive_exactly_once(
    base_url: str, sleeps: Sleeps, recorder: Recorder
) -> None:
    """32 threads x 1,000 events: every event is delivered exactly once."""
    config = PersonalizeConfig(sleep=sleeps, event_queue_size=40_000, event_flush_interval=0.05)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    camp = campaign()

    def produce(n: int) -> None:
        for i in range(1000):
            client.experience_clicked(camp, b_id=f"{n}:{i}")

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    client.close(timeout=30)
    actions = [a for _, a in recorder.delivered()]
    assert len(actions) == 32_000
    assert len({a["attributes"]["b_id"] for a in actions}) == 32_000
    assert len({a["moe_event_uuid"] for a in actions}) == 32_000


def test_close_during_an_outage_counts_undelivered_events_once(
    base_url: str, httpserver: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Events the service never accepted before close() gave up are dropped as 'undelivered',
    counted once (pending back to 0) and reported in one warning."""
    httpserver.expect_request(EVENTS).respond_with_json({}, status=503)
    config = PersonalizeConfig(event_flush_interval=0.01, event_batch_size=10)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    for _ in range(35):
        client.experience_shown(campaign())
    with caplog.at_level(logging.WARNING, logger="moengage_personalize"):
        client.close(timeout=0.3)
    # a request may still be in flight when close() returns: its events are counted when it ends
    assert wait_for(lambda: client.stats().events_pending == 0)
    stats = client.stats()
    assert stats.events_dropped == {"undelivered": 35}
    assert stats.events_sent == 0
    assert caplog.text.count("not delivered") == 1
    assert "closed with 35 events not delivered" in caplog.text
    assert "client is closed" not in caplog.text


def test_uuids_are_random_version_4(tracker: MoEngagePersonalize, recorder: Recorder) -> None:
    """Every event gets its own RFC 4122 version-4 uuid."""
    for _ in range(300):
        tracker.experience_shown(campaign())
    tracker.flush(timeout=5)
    uuids = [uuid.UUID(a["moe_event_uuid"]) for _, a in recorder.delivered()]
    assert len(set(uuids)) == 300
    assert {(u.version, u.variant) for u in uuids} == {(4, uuid.RFC_4122)}


def test_flush_cuts_a_long_retry_back_off_short(base_url: str, recorder: Recorder) -> None:
    """A flush asks for delivery now: a pending back-off (Retry-After 30 s) is cut short and the
    event goes out at once once the service accepts it."""
    recorder.script = [(429, {"Retry-After": "30"})]
    config = PersonalizeConfig(event_flush_interval=0.01)
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config) as client:
        client.experience_shown(campaign())
        time.sleep(0.2)  # the first attempt got the 429; the dispatcher now waits 30 s
        start = time.monotonic()
        report = client.flush(timeout=5)
        assert time.monotonic() - start < 2
    assert (report.sent, report.completed) == (1, True)
