"""Conformance: every kind of answer the local server gives is validated against the project's
OpenAPI document of the contract (docs/openapi.yaml) with jsonschema."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from moengage_personalize.server import PersonalizeServer

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
DOC_URI = "urn:moengage-personalize:openapi"
OPERATIONS = {
    ("GET", "/experiences/metadata"),
    ("POST", "/experiences/fetch"),
    ("POST", "/experiences/events"),
}


class Contract:
    """The OpenAPI document, able to validate one real response."""

    def __init__(self, path: Path) -> None:
        self.doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
        self.seen: set[tuple[str, str, int]] = set()

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def validator(self, pointer: str) -> jsonschema.protocols.Validator:
        schema = {"$ref": f"{DOC_URI}#{pointer}"}
        return jsonschema.Draft202012Validator(schema, registry=self.registry)

    def check(self, method: str, path: str, response: requests.Response) -> None:
        """Assert the status is documented for the operation, the body matches its schema and
        the documented headers are present."""
        operation = self.doc["paths"][path][method.lower()]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method} {path} answered undocumented {status}"
        documented = self.resolve(operation["responses"][status])
        for header in documented.get("headers", {}):
            assert header in response.headers, f"{status} lacks documented header {header}"
        pointer = _pointer_of(operation["responses"][status], path, method, status)
        self.validator(pointer).validate(response.json())
        self.seen.add((method, path, response.status_code))


def _pointer_of(node: dict[str, Any], path: str, method: str, status: str) -> str:
    if "$ref" in node:
        base = node["$ref"].removeprefix("#")
    else:
        escaped = path.replace("~", "~0").replace("/", "~1")
        base = f"/paths/{escaped}/{method.lower()}/responses/{status}"
    return f"{base}/content/application~1json/schema"


@pytest.fixture(scope="module")
def contract() -> Contract:
    """The project's OpenAPI document."""
    return Contract(DOC_PATH)


@pytest.fixture
def call(contract: Contract) -> Iterator[Callable[..., requests.Response]]:
    """Send a request to a fresh sample server and validate the answer against the contract."""
    servers: dict[str, PersonalizeServer] = {}

    def send(
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        params: dict[str, str] | None = None,
        server: PersonalizeServer | None = None,
    ) -> requests.Response:
        if server is None:
            server = servers.get("sample") or servers.setdefault(
                "sample", PersonalizeServer(port=0).start()
            )
        response = requests.request(
            method,
            server.base_url + path,
            json=body,
            data=data,
            params=params,
            headers={"MOE-APPKEY": server.workspace_id} if headers is None else headers,
            auth=(server.workspace_id, server.api_key) if auth is None else auth,
            timeout=10,
        )
        contract.check(method, path, response)
        return response

    yield send
    for server in servers.values():
        server.stop()


CONTEXT = {
    "cid": "65eae5738ea5032b0ef60138_F_T_WP_AB_2_P_0_AU_42D",
    "experience": "Homepage Banner",
    "moe_locale_id": "0",
    "moe_variation_id": "2",
    "audience_name": "High Intent Users",
    "audience_id": "42D",
    "type": "Web Personalization",
}


def _events(action: str = "MOE_PERSONALIZATION_MESSAGE_SHOWN") -> dict[str, Any]:
    return {
        "elements": [
            {
                "customer_id": "user_8821",
                "actions": [
                    {
                        "action": action,
                        "moe_event_uuid": "0c4f8d4e-7d1e-4d55-9d0f-0b1d5e1e2a11",
                        "event_time": 1725258670,
                        "platform": "web",
                        "attributes": CONTEXT,
                    }
                ],
            }
        ]
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    "metadata 200": {"method": "GET", "path": "/experiences/metadata"},
    "metadata 200 filtered": {
        "method": "GET",
        "path": "/experiences/metadata",
        "params": {"status": "Active,Scheduled"},
    },
    "metadata 200 empty": {
        "method": "GET",
        "path": "/experiences/metadata",
        "params": {"status": "active"},
    },
    "metadata 400 app key": {"method": "GET", "path": "/experiences/metadata", "headers": {}},
    "metadata 401": {"method": "GET", "path": "/experiences/metadata", "auth": ("x", "y")},
    "fetch 200 every type and offerings": {
        "method": "POST",
        "path": "/experiences/fetch",
        "body": {
            "identifiers": {"customer_id": "user_8821"},
            "current_page": "cart",
            "cart_value": "640",
            "DAY_OF_THE_WEEK": "Saturday",
            "TIME_OF_THE_DAY": "18",
        },
    },
    "fetch 200 anonymous": {"method": "POST", "path": "/experiences/fetch", "body": {}},
    "fetch 200 empty": {
        "method": "POST",
        "path": "/experiences/fetch",
        "body": {"experience_key": ["nope"]},
    },
    "fetch 400 malformed": {"method": "POST", "path": "/experiences/fetch", "data": b"{"},
    "fetch 400 enum": {
        "method": "POST",
        "path": "/experiences/fetch",
        "body": {"DAY_OF_THE_WEEK": "funday"},
    },
    "fetch 400 type": {
        "method": "POST",
        "path": "/experiences/fetch",
        "body": {"experience_key": "homepage-banner"},
    },
    "fetch 400 app key": {
        "method": "POST",
        "path": "/experiences/fetch",
        "body": {},
        "headers": {"MOE-APPKEY": "other"},
    },
    "fetch 401": {
        "method": "POST",
        "path": "/experiences/fetch",
        "body": {},
        "auth": ("LOCALSAMPLE01", "wrong"),
    },
    "fetch 413": {"method": "POST", "path": "/experiences/fetch", "data": b" " * (1024 * 1024 + 1)},
    "events 200": {"method": "POST", "path": "/experiences/events", "body": _events()},
    "events 400 action": {
        "method": "POST",
        "path": "/experiences/events",
        "body": _events("MOE_PERSONALIZATION_MESSAGE_VIEWED"),
    },
    "events 400 malformed": {"method": "POST", "path": "/experiences/events", "data": b""},
    "events 401": {
        "method": "POST",
        "path": "/experiences/events",
        "body": _events(),
        "auth": ("LOCALSAMPLE01", ""),
    },
    "events 413": {
        "method": "POST",
        "path": "/experiences/events",
        "data": b" " * (2 * 1024 * 1024),
    },
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_answer_conforms_to_the_openapi_document(call: Any, name: str) -> None:
    """The answer's status is documented for its operation and its body matches the schema."""
    scenario = SCENARIOS[name]
    expected = int(name.split()[1])
    response = call(**scenario)
    assert response.status_code == expected


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
def test_429_conforms_to_the_openapi_document(call: Any, method: str, path: str) -> None:
    """A rate-limited answer of each operation has the envelope and the x-ratelimit-* headers."""
    with PersonalizeServer(port=0, rate_limit=1) as server:
        call(method, path, body={}, server=server)
        assert call(method, path, body={}, server=server).status_code == 429


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
def test_500_conforms_to_the_openapi_document(
    call: Any, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug inside the server (its definitions removed under it) is a 500 with the envelope."""
    server = PersonalizeServer(port=0).start()
    try:
        server.app.definitions = None  # type: ignore[assignment]  # break it on purpose
        with caplog.at_level(logging.CRITICAL, logger="moengage_personalize.server"):
            response = call(method, path, body=_events(), server=server)
        assert response.status_code == 500
        assert response.json()["title"] == "Internal Server Error"
    finally:
        server.stop()


def test_schemas_are_valid_json_schema(contract: Contract) -> None:
    """Every component schema of the document is itself valid JSON Schema 2020-12."""
    for schema in contract.doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    "name", ["MetadataResponse", "FetchRequest", "FetchResponse", "EventsRequest", "EventsResponse"]
)
def test_document_examples_match_their_schemas(contract: Contract, name: str) -> None:
    """The examples MoEngage documents validate against the document's own schemas."""
    schema = contract.doc["components"]["schemas"][name]
    contract.validator(f"/components/schemas/{name}").validate(schema["example"])


def test_every_operation_is_described(contract: Contract) -> None:
    """The document describes exactly the three REST operations the server serves."""
    described = {
        (method.upper(), path) for path, item in contract.doc["paths"].items() for method in item
    }
    assert described == OPERATIONS
