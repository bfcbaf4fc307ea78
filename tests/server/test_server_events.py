"""POST /v1/experiences/events: validation, de-duplication, durability, stats."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

import moengage_personalize.server._app as server_app
import moengage_personalize.server._store as store_module
from moengage_personalize.server import EventStore, PersonalizeServer

from support import wait_for

SUCCESS = "Your request has been accepted and will be processed soon."
ACTIONS_ERROR = "elements - Validators Failed : Validator: Element, Errored Field: actions"
CLICK = "MOE_PERSONALIZATION_MESSAGE_CLICKED"


def _post(server: PersonalizeServer, body: Any) -> requests.Response:
    return requests.post(
        server.base_url + "/experiences/events",
        json=body,
        headers={"MOE-APPKEY": server.workspace_id},
        auth=(server.workspace_id, server.api_key),
        timeout=10,
    )


def test_accepted_events_answer_the_documented_success_body(api: Any) -> None:
    """A valid batch answers 200 {status: success, message: ..., req_id: 8 letters}."""
    response = api.events({"elements": [api.element(api.action("u-1"))]})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == SUCCESS
    assert len(body["req_id"]) == 8
    assert body["req_id"].isalpha()


def test_the_documented_request_example_is_accepted_and_stored(api: Any) -> None:
    """The contract's example (a click with b_id, timezone offset) is stored as sent."""
    body = {
        "elements": [
            {
                "customer_id": "john@example.com",
                "user_timezone_offset": 19800,
                "actions": [
                    {
                        "action": CLICK,
                        "moe_event_uuid": "bb997812-4537-47c1-b126-2686efda2e27",
                        "event_time": 1725258670,
                        "platform": "web",
                        "attributes": {
                            "cid": "66d55ae445921e4d35ae4368_F_T_WP_AB_2_P_0_AU_5A",
                            "experience": "Test Server side experience",
                            "moe_locale_id": "0",
                            "moe_variation_id": "2",
                            "b_id": "Add to Cart",
                            "audience_name": "All Users",
                            "audience_id": "5A",
                            "type": "Web Personalization",
                        },
                    }
                ],
            }
        ]
    }
    assert api.events(body).status_code == 200
    (event,) = api.server.events()
    assert event["b_id"] == "Add to Cart"
    assert event["user_timezone_offset"] == 19800
    assert event["experience_key"] is None  # a campaign this workspace does not define


def test_events_are_attributed_to_the_experience_by_cid(api: Any) -> None:
    """An event whose cid starts with a defined campaign id is stored under its key."""
    api.events({"elements": [api.element(api.action("u-1"))]})
    assert api.server.events()[0]["experience_key"] == "homepage-banner"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"action": "MOE_PERSONALIZATION_MESSAGE_VIEWED"}, "actions"),
        ({"action": "moe_personalization_message_shown"}, "actions"),
        ({"moe_event_uuid": ""}, "actions"),
        ({"event_time": 1725258670000}, "actions"),
        ({"event_time": "1725258670"}, "actions"),
        ({"attributes": {"cid": "x"}}, "actions"),
    ],
)
def test_a_bad_action_is_the_documented_validation_error(
    api: Any, change: dict[str, Any], field: str
) -> None:
    """A wrong action name, uuid, event_time or missing attribute: 400 'Invalid Field Value',
    'elements - Validators Failed : Validator: Element, Errored Field: actions', NwRqMltB."""
    bad = api.action("u-2", **change)
    response = api.events({"elements": [api.element(bad)]})
    assert response.status_code == 400
    assert response.json() == {
        "title": "Invalid Field Value",
        "description": ACTIONS_ERROR,
        "code": "NwRqMltB",
    }


@pytest.mark.parametrize(
    "name",
    ["cid", "experience", "moe_locale_id", "moe_variation_id", "audience_name", "audience_id"],
)
def test_each_required_attribute_is_required(api: Any, name: str) -> None:
    """Dropping any one of the six required attributes fails the request."""
    bad = api.action("u-3")
    del bad["attributes"][name]
    assert api.events({"elements": [api.element(bad)]}).status_code == 400


def test_one_bad_action_fails_the_whole_request(api: Any) -> None:
    """A batch with one bad action among good ones stores nothing."""
    good = api.element(api.action("good-1"), customer_id="a")
    mixed = api.element(api.action("good-2"), api.action("bad", name="CLICK"), customer_id="b")
    assert api.events({"elements": [good, mixed]}).status_code == 400
    assert api.server.events() == []


@pytest.mark.parametrize("offset", [54001, -54001, 19800.5, True, "19800"])
def test_timezone_offset_out_of_range_or_not_whole_seconds_is_refused(
    api: Any, offset: Any
) -> None:
    """user_timezone_offset outside [-54000, 54000] or not an integer: 400 naming the field."""
    response = api.events({"elements": [api.element(api.action("u"), user_timezone_offset=offset)]})
    assert response.status_code == 400
    assert response.json()["description"] == (
        "elements - Validators Failed : Validator: Element, Errored Field: user_timezone_offset"
    )


@pytest.mark.parametrize("offset", [54000, -54000, 0])
def test_timezone_offset_bounds_are_inclusive(api: Any, offset: int) -> None:
    """The documented bounds themselves are accepted."""
    element = api.element(api.action(f"u{offset}"), user_timezone_offset=offset)
    assert api.events({"elements": [element]}).status_code == 200


def test_more_than_100_elements_are_refused(api: Any) -> None:
    """101 elements: 400 with code NwRqMltB naming elements; 100 are fine."""
    elements = [api.element(api.action(f"u{i}"), customer_id=f"c{i}") for i in range(101)]
    response = api.events({"elements": elements})
    assert response.status_code == 400
    assert response.json()["code"] == "NwRqMltB"
    assert response.json()["description"].endswith("Errored Field: elements")
    assert api.events({"elements": elements[:100]}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "elements"),
        ({"elements": {}}, "elements"),
        ({"elements": []}, "elements"),
        ({"elements": ["x"]}, "elements"),
        ({"elements": [{"actions": []}]}, "customer_id"),
        ({"elements": [{"customer_id": "a"}]}, "actions"),
        (
            {"elements": [{"customer_id": "a", "actions": [], "user_attributes": 1}]},
            "user_attributes",
        ),
        ([], "elements"),
    ],
)
def test_malformed_elements_name_the_errored_field(api: Any, body: Any, field: str) -> None:
    """Structural problems answer 400 'Invalid Field Value' naming the errored field."""
    response = api.events(body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["title"] == "Invalid Field Value"
    assert answer["description"].endswith(f"Errored Field: {field}")
    assert answer["code"] == "NwRqMltB"


def test_events_are_deduplicated_by_uuid(api: Any) -> None:
    """Sending the same moe_event_uuid twice (a retry) stores one event; both answer 200."""
    body = {"elements": [api.element(api.action("same-uuid"))]}
    assert api.events(body).status_code == 200
    assert api.events(body).status_code == 200
    assert [e["moe_event_uuid"] for e in api.server.events()] == ["same-uuid"]


def test_platform_is_normalised_and_unknown_recorded_as_unknown(api: Any) -> None:
    """'WEB' is stored as web; a missing or unknown platform as Unknown."""
    first = api.action("p1", platform="WEB")
    second = api.action("p2", platform="smart-fridge")
    third = api.action("p3")
    del third["platform"]
    api.events({"elements": [api.element(first, second, third)]})
    assert [e["platform"] for e in api.server.events()] == ["web", "Unknown", "Unknown"]


def test_events_survive_a_restart_on_the_same_file(tmp_path: Path) -> None:
    """Events accepted before a stop are there after a start on the same --db file."""
    db = tmp_path / "events.sqlite3"
    action = {
        "action": CLICK,
        "moe_event_uuid": "keep-me",
        "event_time": 1725258670,
        "attributes": {
            "cid": "65eae5738ea5032b0ef6013b_F_T_WP_AB_2_P_0_AU_3G",
            "experience": "Loyalty",
            "moe_locale_id": "0",
            "moe_variation_id": "1",
            "audience_name": "Gold Regulars",
            "audience_id": "3G",
        },
    }
    body = {"elements": [{"customer_id": "user_8821", "actions": [action]}]}
    with PersonalizeServer(port=0, db=db) as server:
        assert _post(server, body).status_code == 200
    with PersonalizeServer(port=0, db=db) as server:
        assert [e["moe_event_uuid"] for e in server.events()] == ["keep-me"]
        assert _post(server, body).status_code == 200  # a retry after the restart
        assert len(server.events()) == 1  # still de-duplicated


def test_a_file_store_runs_in_wal_mode(tmp_path: Path) -> None:
    """The events database file uses SQLite's write-ahead log."""
    db = tmp_path / "wal.sqlite3"
    EventStore(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def _elements(count: int, prefix: str) -> list[dict[str, Any]]:
    attributes = {"cid": "c1", "experience": "E", "moe_locale_id": "0", "moe_variation_id": "1"}
    attributes |= {"audience_name": "All", "audience_id": "1"}
    actions = [
        {"action": CLICK, "moe_event_uuid": f"{prefix}{i}", "attributes": attributes}
        for i in range(count)
    ]
    return [{"customer_id": "u1", "actions": actions}]


def _wal_frames_left(db: Path) -> int:
    """WAL frames not yet copied into the database (0 once fully checkpointed)."""
    with sqlite3.connect(db) as conn:
        _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(NOOP)").fetchone()
    conn.close()
    return int(frames) - int(copied)


_CONTEXTS = [
    {"cid": "c1", "experience": "E", "moe_locale_id": "0", "moe_variation_id": "1"},
    {"cid": "c1", "experience": "E", "moe_variation_id": 2, "b_id": None, "audience_id": ""},
    {"experience": "", "dp_offering_id": "o1", "rank": "1", "nested": {"a": [1, True]}},
    {"b_id": "Add to Cart", "cid": "c2", "audience_name": "Gold", "audience_id": "3G"},
    {},
]


@pytest.mark.parametrize("context", _CONTEXTS)
def test_an_events_context_comes_back_exactly_as_it_was_sent(
    tmp_path: Path, context: dict[str, Any]
) -> None:
    """The context is stored partly in columns and partly as JSON; what events() gives back is
    the context sent, whatever its values' types (absent, empty, null, numbers, nested)."""
    store = EventStore(tmp_path / "ctx.sqlite3")
    try:
        elements = [{"customer_id": "u1", "actions": [{"action": CLICK, "moe_event_uuid": "e1"}]}]
        elements[0]["actions"][0]["attributes"] = context  # type: ignore[index]
        store.record(elements, "r1")
        assert store.events()[0]["attributes"] == context
    finally:
        store.close()


def test_rows_stored_with_the_whole_context_still_read_back(tmp_path: Path) -> None:
    """A file written before the context was split keeps reading the same."""
    db = tmp_path / "old.sqlite3"
    EventStore(db).close()
    context = {"cid": "c1", "experience": "E", "moe_variation_id": "1", "moe_locale_id": "0"}
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO events (moe_event_uuid, action, customer_id, platform, cid, experience,"
            " moe_variation_id, attributes, request_id, received_at)"
            " VALUES ('old1', ?, 'u1', 'web', 'c1', 'E', '1', ?, 'r0', 0)",
            (CLICK, json.dumps(context)),
        )
    conn.close()
    store = EventStore(db)
    try:
        assert store.events()[0]["attributes"] == context
    finally:
        store.close()


def test_the_wal_is_checkpointed_once_writes_pause(tmp_path: Path) -> None:
    """Writes never wait for a checkpoint: the store's own thread copies the WAL into the
    database once writes pause."""
    db = tmp_path / "ckpt.sqlite3"
    store = EventStore(db)
    try:
        for n in range(20):
            store.record(_elements(100, f"b{n}-"), f"r{n}")
        assert wait_for(lambda: store._uncheckpointed == 0, 5)
        assert _wal_frames_left(db) == 0
        assert store.count() == 2000
    finally:
        store.close()


def test_writes_that_never_pause_still_get_the_wal_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the limit of events not checkpointed, the checkpoint waits for the writer once and
    restarts the WAL, so it stays bounded while writes go on."""
    monkeypatch.setattr(store_module, "_UNCHECKPOINTED_MAX", 500)
    monkeypatch.setattr(store_module, "_IDLE", 0.05)
    db = tmp_path / "busy.sqlite3"
    store = EventStore(db)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            store.record(_elements(50, f"w{n}-"), f"r{n}")
            n += 1
            time.sleep(0.01)  # never idle for 0.05 s

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert wait_for(lambda: store.count() > 3000, 10)
        assert wait_for(lambda: store._uncheckpointed < 1500, 5)
    finally:
        stop.set()
        writer.join(5)
        store.close()


def test_stats_count_impressions_clicks_and_ctr_per_variation(api: Any) -> None:
    """Two impressions and one click of variation 2 give CTR 0.5; variation 1 is separate."""
    v1 = api.context(moe_variation_id="1")
    api.events(
        {
            "elements": [
                api.element(
                    api.action("s1"),
                    api.action("s2"),
                    api.action("c1", name=CLICK),
                    api.action("s3", attributes=v1),
                )
            ]
        }
    )
    rows = {r["moe_variation_id"]: r for r in api.server.stats()}
    assert rows["2"]["impressions"] == 2
    assert rows["2"]["clicks"] == 1
    assert rows["2"]["ctr"] == 0.5
    assert rows["2"]["experience_key"] == "homepage-banner"
    assert rows["1"]["impressions"] == 1
    assert rows["1"]["clicks"] == 0


def test_offering_events_are_counted_for_their_experience(api: Any) -> None:
    """Events carrying dp_offering_id count for the experience and as offering events."""
    offering = api.context(dp_offering_id="off_101")
    api.events(
        {
            "elements": [
                api.element(
                    api.action("o1", attributes=offering),
                    api.action("o2", name=CLICK, attributes=offering),
                )
            ]
        }
    )
    (row,) = api.server.stats()
    assert (row["impressions"], row["clicks"]) == (1, 1)
    assert (row["offering_impressions"], row["offering_clicks"]) == (1, 1)


def test_local_stats_endpoint_serves_the_same_rows(api: Any) -> None:
    """GET /_local/stats returns the stats rows as JSON."""
    api.events({"elements": [api.element(api.action("x1"))]})
    assert api.local("stats").json() == {"stats": api.server.stats()}


def test_local_events_endpoint_filters_by_customer(api: Any) -> None:
    """GET /_local/events?customer_id= returns only that customer's events."""
    api.events(
        {
            "elements": [
                api.element(api.action("a1"), customer_id="a"),
                api.element(api.action("b1"), customer_id="b"),
            ]
        }
    )
    events = api.local("events", customer_id="b").json()["events"]
    assert [e["moe_event_uuid"] for e in events] == ["b1"]


def _post_at_once(server: PersonalizeServer, api: Any, threads: int, prefix: str) -> None:
    """``threads`` threads each post five distinct events at the same time."""

    def post(n: int) -> None:
        actions = [api.action(f"{prefix}{n}-{i}") for i in range(5)]
        _post(server, {"elements": [api.element(*actions)]})

    pool = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(10)


def test_concurrent_event_posts_are_all_stored(server: PersonalizeServer, api: Any) -> None:
    """Ten threads posting distinct events at once lose none (the store is thread-safe)."""
    _post_at_once(server, api, 10, "t")
    assert server.store.count() == 50


def test_events_requests_are_taken_in_one_at_a_time(
    server: PersonalizeServer, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent events requests are decoded, checked and stored one at a time (instead of all
    sharing the interpreter and ending together); none is lost."""
    active = 0
    most = 0
    guard = threading.Lock()
    problem = server_app._events_problem

    def watched(body: Any) -> Any:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        try:
            time.sleep(0.01)  # long enough for the other threads' requests to be in
            return problem(body)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(server_app, "_events_problem", watched)
    _post_at_once(server, api, 6, "o")
    assert server.store.count() == 30
    assert most == 1
