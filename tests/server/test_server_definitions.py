"""Experience definitions: the sample loads, and every mistake is refused naming its place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moengage_personalize.server import (
    DefinitionsError,
    PersonalizeServer,
    load_definitions,
    parse_definitions,
    sample_definitions,
)


def _errors(document: Any) -> list[str]:
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(document)
    return caught.value.errors


def test_the_embedded_sample_is_valid_and_rich() -> None:
    """The sample has credentials, stored users and experiences of every status."""
    sample = sample_definitions()
    assert sample.workspace_id
    assert sample.api_key
    assert "user_8821" in sample.users
    assert {e.status for e in sample.experiences} == {"Active", "Paused"}
    kinds = {
        entry["data_type"]
        for e in sample.experiences
        for a in e.audiences
        for v in a.variations
        for entry in v.payload.values()
    }
    assert kinds == {"string", "number", "boolean", "json", "float"}


def test_the_api_key_is_not_in_the_repr() -> None:
    """repr(Definitions) does not show the api key."""
    sample = sample_definitions()
    assert sample.api_key not in repr(sample)


def test_a_bad_weight_names_its_place(sample_doc: dict[str, Any]) -> None:
    """A string weight is reported as experiences[2].audiences[0].variations[0].weight."""
    sample_doc["experiences"][2]["audiences"][0]["variations"][0]["weight"] = "heavy"
    assert _errors(sample_doc) == [
        "experiences[2].audiences[0].variations[0].weight: must be a number"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("workspace_id"), "workspace_id: is required"),
        (lambda d: d.update(api_key=""), "api_key: must be a non-empty string"),
        (lambda d: d.update(experiences={}), "experiences: must be a list"),
        (lambda d: d.update(colour="red"), "colour: unknown field"),
        (
            lambda d: d["experiences"][0].update(status="Scheduled"),
            "experiences[0].status: must be one of Active, Paused",
        ),
        (
            lambda d: d["experiences"][1].update(key=d["experiences"][0]["key"]),
            "experiences[1].key: 'homepage-banner' is already used by experiences[0]",
        ),
        (
            lambda d: d["experiences"][0].update(start_time="yesterday"),
            "experiences[0].start_time: 'yesterday' is not an ISO 8601 time",
        ),
        (
            lambda d: d["experiences"][0].update(start_time="2025-01-01T00:00:00"),
            "experiences[0].start_time: '2025-01-01T00:00:00' has no time zone",
        ),
        (
            lambda d: d["experiences"][8].update(end_time="2099-01-01T00:00:00Z"),
            "experiences[8].end_time: must be after start_time",
        ),
        (
            lambda d: d["experiences"][0].update(control_group_percentage=100),
            "experiences[0].control_group_percentage: must be >= 0 and < 100",
        ),
        (
            lambda d: d["experiences"][0].update(audiences=[]),
            "experiences[0].audiences: must be a non-empty list",
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0]["rules"]["all"][0].update(
                operator="like"
            ),
            "experiences[1].audiences[0].rules.all[0].operator: must be one of",
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0]["rules"]["all"][1].update(value="500"),
            "experiences[1].audiences[0].rules.all[1].value: 'gte' needs a number",
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0]["rules"]["all"][0].update(
                source="cookie"
            ),
            'experiences[1].audiences[0].rules.all[0].source: must be "user"',
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0].pop("rules"),
            "experiences[1].audiences[0].rules: is required",
        ),
        (
            lambda d: d["experiences"][5]["audiences"][0]["rules"]["all"][1].update(value=[21, 17]),
            "experiences[5].audiences[0].rules.all[1].value: 'between' needs [low, high]",
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0]["variations"][0]["payload"][
                "Threshold"
            ].update(data_type="integer"),
            "experiences[1].audiences[0].variations[0].payload.Threshold.data_type: must be one of",
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0]["variations"][0]["payload"][
                "Threshold"
            ].update(value="five hundred"),
            "experiences[1].audiences[0].variations[0].payload.Threshold.value: a number variable",
        ),
        (
            lambda d: d["experiences"][1]["audiences"][0]["variations"][0]["payload"][
                "ShowConfetti"
            ].update(value="yes"),
            "experiences[1].audiences[0].variations[0].payload.ShowConfetti.value: a boolean",
        ),
        (
            lambda d: d["experiences"][2]["audiences"][0]["variations"][0]["payload"][
                "Offerings"
            ].update(value="[{not json"),
            "experiences[2].audiences[0].variations[0].payload.Offerings.value: a json variable",
        ),
        (
            lambda d: d["experiences"][0]["audiences"][0]["variations"][0].update(weight=-1),
            "experiences[0].audiences[0].variations[0].weight: must be >= 0",
        ),
        (
            lambda d: d["users"]["user_8821"].update(user_identifiers={"u_em": 5}),
            'users["user_8821"].user_identifiers: must be an object of strings',
        ),
    ],
)
def test_each_mistake_is_refused_naming_its_place(
    sample_doc: dict[str, Any], change: Any, expected: str
) -> None:
    """Each kind of mistake gives an error starting with the path of the faulty value."""
    change(sample_doc)
    errors = _errors(sample_doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_all_mistakes_are_reported_at_once(sample_doc: dict[str, Any]) -> None:
    """Two independent mistakes are both listed in one DefinitionsError."""
    sample_doc["experiences"][0]["name"] = 7
    sample_doc["experiences"][3]["control_group_percentage"] = -5
    errors = _errors(sample_doc)
    assert len(errors) == 2
    assert errors[0].startswith("experiences[0].name")
    assert errors[1].startswith("experiences[3].control_group_percentage")


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    """A file that is not JSON is refused with its name, line and column."""
    path = tmp_path / "broken.json"
    path.write_text('{\n  "workspace_id": "W",\n  "api_key": "k"\n  "experiences": []\n}\n')
    with pytest.raises(DefinitionsError) as caught:
        load_definitions(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 4, column 3" in message


def test_a_malformed_file_is_refused_when_the_server_is_created(tmp_path: Path) -> None:
    """PersonalizeServer refuses a malformed file at construction, before binding a port."""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"workspace_id": "W", "api_key": "k", "experiences": [{}]}))
    with pytest.raises(DefinitionsError, match=r"experiences\[0\]\.key: is required"):
        PersonalizeServer(path, port=0)


def test_a_file_round_trips_through_load_definitions(
    tmp_path: Path, sample_doc: dict[str, Any]
) -> None:
    """load_definitions reads a file shaped like the sample."""
    path = tmp_path / "mine.json"
    sample_doc["workspace_id"] = "MYWORKSPACE"
    path.write_text(json.dumps(sample_doc), encoding="utf-8")
    loaded = load_definitions(path)
    assert loaded.workspace_id == "MYWORKSPACE"
    assert loaded.source == str(path)


def test_campaign_ids_default_to_a_stable_hash() -> None:
    """Without campaign_id an experience gets a stable 24-hex id derived from its key."""
    document = {
        "workspace_id": "W",
        "api_key": "k",
        "experiences": [
            {
                "key": "e",
                "name": "E",
                "audiences": [{"id": "A", "all_users": True, "variations": [{"payload": {}}]}],
            }
        ],
    }
    first = parse_definitions(document).experiences[0].campaign_id
    assert first == parse_definitions(document).experiences[0].campaign_id
    assert len(first) == 24
    assert int(first, 16) >= 0
