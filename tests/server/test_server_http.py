"""The REST contract over real sockets: shapes, statuses, error strings, check order, limits."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any

import pytest
import requests

from moengage_personalize.server import PersonalizeServer, _runner

from support import wait_for

CLIENT_NOT_FOUND = (
    "MoEngage Client not found. Please check values for headers - MOE-APPKEY or MOE-DBNAME"
)
UNDECODABLE = "Could not decode the request body. The JSON was incorrect or not encoded as UTF-8."


def _auth_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- metadata ----------------------------------------------------------------------------------


def test_metadata_lists_live_experiences_with_count(api: Any) -> None:
    """Metadata lists every non-ended experience with its status, and count matches the list."""
    body = api.meta().json()
    listed = {e["experience_key"]: e["status"] for e in body["metadata"]["experiences"]}
    assert body["metadata"]["count"] == len(listed) == 9
    assert listed["homepage-banner"] == "Active"
    assert listed["cart-upsell"] == "Paused"
    assert listed["christmas-sale-strip"] == "Scheduled"
    assert "summer-sale-2024" not in listed


def test_metadata_entries_have_exactly_three_fields(api: Any) -> None:
    """Each metadata entry carries experience_name, experience_key and status, nothing else."""
    first = api.meta().json()["metadata"]["experiences"][0]
    assert first == {
        "experience_name": "Homepage Banner — Free Shipping",
        "experience_key": "homepage-banner",
        "status": "Active",
    }


def test_metadata_status_filter_is_comma_separated(api: Any) -> None:
    """status=Paused,Scheduled returns exactly those statuses."""
    body = api.meta("Paused,Scheduled").json()["metadata"]
    assert {e["status"] for e in body["experiences"]} == {"Paused", "Scheduled"}
    assert body["count"] == 2


def test_metadata_status_filter_is_case_sensitive(api: Any) -> None:
    """status=active (lower case) silently returns an empty list, as MoEngage does."""
    response = api.meta("active")
    assert response.status_code == 200
    assert response.json() == {"metadata": {"count": 0, "experiences": []}}


# --- fetch -------------------------------------------------------------------------------------


def test_fetch_serves_payload_and_full_experience_context(api: Any) -> None:
    """A served experience has the stored payload envelopes and all eight context fields."""
    served = api.served(
        {
            "identifiers": {"customer_id": "user_8821"},
            "experience_key": ["cart-free-delivery"],
            "current_page": "cart",
            "cart_value": "640",
        }
    )
    entry = served["cart-free-delivery"]
    assert entry["payload"]["Threshold"] == {"value": "500", "data_type": "number"}
    assert entry["experience_context"] == {
        "cid": "65eae5738ea5032b0ef60139_F_T_WP_AB_1_P_0_AU_7C",
        "experience": "Cart Free Delivery Nudge",
        "moe_locale_id": "0",
        "moe_variation_id": "1",
        "audience_name": "Big Carts",
        "audience_id": "7C",
        "type": "Web Personalization",
        "experience_type": "API based Experience",
    }


@pytest.mark.parametrize(
    "key", ["no-such-key", "cart-upsell", "christmas-sale-strip", "summer-sale-2024"]
)
def test_fetch_leaves_unknown_paused_scheduled_and_ended_keys_absent(api: Any, key: str) -> None:
    """Unknown, paused, scheduled and ended keys are absent from a 200 answer, not errors."""
    response = api.fetch({"identifiers": {"customer_id": "user_8821"}, "experience_key": [key]})
    assert response.status_code == 200
    assert response.json() == {"experiences": {}}


def test_fetch_answers_only_the_first_25_keys(api: Any, sample_doc: dict[str, Any]) -> None:
    """With more than 25 keys, only the first 25 are answered (not an error)."""
    all_users = sample_doc["experiences"][7]["audiences"]
    sample_doc["experiences"] = [
        {"key": f"exp-{i:02d}", "name": f"Experience {i}", "audiences": all_users}
        for i in range(30)
    ]
    with PersonalizeServer(sample_doc, port=0) as server:
        response = requests.post(
            server.base_url + "/experiences/fetch",
            json={
                "identifiers": {"customer_id": "u1"},
                "experience_key": [f"exp-{i:02d}" for i in range(30)],
            },
            headers={"MOE-APPKEY": server.workspace_id},
            auth=(server.workspace_id, server.api_key),
            timeout=10,
        )
        assert sorted(response.json()["experiences"]) == [f"exp-{i:02d}" for i in range(25)]
        over = server.decisions(experience_key="exp-27")
        assert over[-1]["outcome"] == "MAX_LIMIT_BREACHED"


def test_fetch_without_keys_answers_every_live_experience_for_the_user(api: Any) -> None:
    """No experience_key: every active experience the user qualifies for is answered."""
    served = api.served(
        {
            "identifiers": {"customer_id": "user_8821"},
            "current_page": "cart",
            "cart_value": "900",
            "DAY_OF_THE_WEEK": "Monday",
        }
    )
    assert set(served) == {
        "homepage-banner",
        "cart-free-delivery",
        "product-recommendations",
        "loyalty-points",
    }


def test_anonymous_fetch_only_gets_all_users_experiences(api: Any) -> None:
    """A request without identifiers is answered only from All Users audiences."""
    served = api.served(
        {
            "current_page": "cart",
            "cart_value": "900",
            "USER_AGENT": "Mozilla/5.0 (Linux; Android 14)",
        }
    )
    assert set(served) == {"homepage-banner", "product-recommendations"}
    assert served["homepage-banner"]["experience_context"]["audience_name"] == "All Users"


def test_user_identifiers_resolve_a_stored_user(api: Any) -> None:
    """Without customer_id, a stored user is found by a matching user_identifiers entry."""
    served = api.served(
        {
            "identifiers": {"user_identifiers": {"u_em": "jane@example.com"}},
            "experience_key": ["loyalty-points"],
        }
    )
    assert "loyalty-points" in served


def test_fetch_accepts_the_documented_request_example(api: Any) -> None:
    """The contract's request example (all derived attributes, utm_medium) is a 200."""
    body = {
        "identifiers": {
            "customer_id": "user_8821",
            "user_identifiers": {"u_em": "jane@example.com", "u_mb": "+919876543210"},
        },
        "experience_key": ["homepage-banner"],
        "DAY_OF_THE_WEEK": "Monday",
        "TIME_OF_THE_DAY": "14",
        "USER_IP_ADDRESS": "203.0.113.42",
        "USER_AGENT": "Mozilla/5.0 (Linux; Android 13) AppleWebKit/537.36",
        "utm_medium": "email",
    }
    assert "homepage-banner" in api.served(body)


# --- documented error strings ------------------------------------------------------------------


def test_missing_moe_appkey_is_request_error(api: Any) -> None:
    """No MOE-APPKEY header: 400 'Request Error' with the documented description."""
    response = api.get("/experiences/metadata", headers={})
    assert response.status_code == 400
    assert response.json() == {"title": "Request Error", "description": CLIENT_NOT_FOUND}


def test_unknown_moe_appkey_is_request_error(api: Any) -> None:
    """An unknown MOE-APPKEY: 400 'Request Error', even with a valid Basic auth."""
    response = api.post("/experiences/fetch", {}, headers={"MOE-APPKEY": "OTHER"})
    assert response.status_code == 400
    assert response.json()["description"] == CLIENT_NOT_FOUND


def test_wrong_api_key_is_401_authentication_required(api: Any) -> None:
    """A wrong password: 401 'Authentication required' / 'Invalid API_KEY used in ...'."""
    response = api.get("/experiences/metadata", auth=(api.server.workspace_id, "wrong"))
    assert response.status_code == 401
    assert response.json() == {
        "title": "Authentication required",
        "description": "Invalid API_KEY used in Authentication Header",
    }


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer abc", "Basic !!notbase64", "Basic " + base64.b64encode(b"nocolon").decode()],
)
def test_missing_or_broken_authorization_is_401(api: Any, authorization: str | None) -> None:
    """A missing, non-Basic or undecodable Authorization header is a 401 too."""
    headers = api.headers() if authorization is None else api.headers(Authorization=authorization)
    response = api.session.get(
        api.server.base_url + "/experiences/metadata", headers=headers, timeout=10
    )
    assert response.status_code == 401


def test_basic_auth_user_must_be_the_workspace(api: Any) -> None:
    """The right key under another workspace id as the Basic user is a 401."""
    response = api.get("/experiences/metadata", auth=("OTHER", api.server.api_key))
    assert response.status_code == 401


def test_app_key_is_checked_before_auth(api: Any) -> None:
    """With both a bad MOE-APPKEY and a bad key, the 400 'Request Error' comes first."""
    response = api.get("/experiences/metadata", headers={"MOE-APPKEY": "nope"}, auth=("x", "y"))
    assert response.status_code == 400


def test_auth_is_checked_before_the_body(api: Any) -> None:
    """A bad key with a malformed body answers 401, not 'Malformed JSON'."""
    response = api.post("/experiences/fetch", data=b"{oops", auth=("x", "y"))
    assert response.status_code == 401


@pytest.mark.parametrize("data", [b"", b"{oops", b"\xff\xfe{}", b'{"a": NaN}', b"[" * 100000])
def test_undecodable_body_is_malformed_json(api: Any, data: bytes) -> None:
    """Empty, invalid, non-UTF-8, NaN or absurdly nested bodies: 400 'Malformed JSON'."""
    response = api.post("/experiences/fetch", data=data)
    assert response.status_code == 400
    assert response.json() == {"title": "Malformed JSON", "description": UNDECODABLE}


def test_bad_day_of_the_week_is_the_documented_enum_error(api: Any) -> None:
    """DAY_OF_THE_WEEK=funday: 400 'Invalid Field Value', the exact description, GvHogFKc."""
    response = api.fetch({"DAY_OF_THE_WEEK": "funday"})
    assert response.status_code == 400
    assert response.json() == {
        "title": "Invalid Field Value",
        "description": "DAY_OF_THE_WEEK - Enum doesnt allow value: funday, allowed values: "
        "[Sunday, Monday, Tuesday, Wednesday, Thursday, Friday, Saturday]",
        "code": "GvHogFKc",
    }


def test_day_of_the_week_is_case_sensitive(api: Any) -> None:
    """'monday' in lower case is not an allowed value."""
    assert api.fetch({"DAY_OF_THE_WEEK": "monday"}).status_code == 400


def test_bad_time_of_the_day_is_an_enum_error(api: Any) -> None:
    """TIME_OF_THE_DAY must be a zero-padded UTC hour; '9' is refused naming the field."""
    response = api.fetch({"TIME_OF_THE_DAY": "9"})
    assert response.status_code == 400
    body = response.json()
    assert body["title"] == "Invalid Field Value"
    assert body["description"].startswith("TIME_OF_THE_DAY - Enum doesnt allow value: 9")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "The request body must be a JSON object"),
        ({"identifiers": "user_8821"}, "identifiers - must be an object"),
        ({"identifiers": {"customer_id": 8821}}, "identifiers.customer_id - must be a string"),
        ({"identifiers": {"user_identifiers": {"u_em": 1}}}, "identifiers.user_identifiers"),
        ({"experience_key": "homepage-banner"}, "experience_key - must be an array of strings"),
        ({"experience_key": [1]}, "experience_key - must be an array of strings"),
    ],
)
def test_wrongly_typed_fetch_fields_are_invalid_field_value(
    api: Any, body: Any, field: str
) -> None:
    """Wrongly typed fields get 'Invalid Field Value' with a description naming the field."""
    response = api.fetch(body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["title"] == "Invalid Field Value"
    assert answer["description"].startswith(field)
    assert answer["code"]


# --- routing, headers, limits --------------------------------------------------------------------


def test_unknown_path_is_404_with_the_envelope(api: Any) -> None:
    """An unknown path answers 404 with a title and a description naming the endpoints."""
    response = api.get("/experiences/nope")
    assert response.status_code == 404
    assert "/v1/experiences/fetch" in response.json()["description"]


def test_wrong_method_is_405_with_allow(api: Any) -> None:
    """GET on the fetch endpoint answers 405 and says which method is allowed."""
    response = api.get("/experiences/fetch")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_every_response_has_a_request_id(api: Any) -> None:
    """x-request-id is on successes and errors alike, and differs between requests."""
    ids = {
        api.meta().headers["x-request-id"],
        api.get("/experiences/metadata", headers={}).headers["x-request-id"],
        api.get("/nowhere").headers["x-request-id"],
    }
    assert len(ids) == 3


def test_rate_limit_answers_429_with_ratelimit_headers() -> None:
    """Past the per-minute limit: 429 with x-ratelimit-limit/-remaining/-reset (epoch secs)."""
    now = 1_800_000_030.0
    with PersonalizeServer(port=0, rate_limit=2, clock=lambda: now) as server:
        url = server.base_url + "/experiences/metadata"
        headers = {"MOE-APPKEY": server.workspace_id}
        auth = (server.workspace_id, server.api_key)
        first = requests.get(url, headers=headers, auth=auth, timeout=10)
        requests.get(url, headers=headers, auth=auth, timeout=10)
        third = requests.get(url, headers=headers, auth=auth, timeout=10)
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert third.status_code == 429
    assert third.headers["x-ratelimit-limit"] == "2"
    assert third.headers["x-ratelimit-remaining"] == "0"
    assert third.headers["x-ratelimit-reset"] == "1800000060"
    assert third.json()["title"] == "Too Many Requests"


def test_rate_limit_window_resets_on_the_next_minute() -> None:
    """A new clock minute starts a fresh window."""
    clock = [1_800_000_000.0]
    with PersonalizeServer(port=0, rate_limit=1, clock=lambda: clock[0]) as server:
        url = server.base_url + "/experiences/metadata"
        kwargs: dict[str, Any] = {
            "headers": {"MOE-APPKEY": server.workspace_id},
            "auth": (server.workspace_id, server.api_key),
            "timeout": 10,
        }
        assert requests.get(url, **kwargs).status_code == 200
        assert requests.get(url, **kwargs).status_code == 429
        clock[0] += 60
        assert requests.get(url, **kwargs).status_code == 200


def _post_head(server: PersonalizeServer, length: int, extra: str = "") -> bytes:
    auth = _auth_header(server.workspace_id, server.api_key)
    return (
        f"POST /v1/experiences/fetch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"MOE-APPKEY: {server.workspace_id}\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_oversized_content_length_is_413_without_reading_the_body(api: Any) -> None:
    """A declared 2 MiB body is refused with 413 at once: the server never waits for it."""
    raw = api.raw(_post_head(api.server, 2 * 1024 * 1024))  # headers only, no body sent
    assert api.status_of(raw) == 413
    assert api.body_of(raw)["title"] == "Request Entity Too Large"


def test_oversized_body_sent_by_requests_still_gets_the_413(api: Any) -> None:
    """A client that sends the whole oversized body reads the 413 (no connection reset)."""
    response = api.post("/experiences/fetch", data=b"x" * (3 * 1024 * 1024))
    assert response.status_code == 413


def test_oversized_chunked_body_is_413_after_at_most_the_limit() -> None:
    """A chunked body is read only up to the limit, then refused with 413."""
    with PersonalizeServer(port=0, max_body_bytes=1000) as server:
        auth = _auth_header(server.workspace_id, server.api_key)
        head = (
            f"POST /v1/experiences/fetch HTTP/1.1\r\nHost: x\r\nMOE-APPKEY: "
            f"{server.workspace_id}\r\nAuthorization: {auth}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"400\r\n" + b" " * 1024 + b"\r\n"  # one 1 KiB chunk, never terminated
        import socket

        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(head + chunk)
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")


def test_chunked_body_within_the_limit_is_read(api: Any) -> None:
    """A chunked JSON body is decoded and answered like a Content-Length one."""
    server = api.server
    payload = json.dumps(
        {"identifiers": {"customer_id": "user_8821"}, "experience_key": ["loyalty-points"]}
    ).encode()
    half = len(payload) // 2
    chunks = (
        b"".join(
            f"{len(part):x}\r\n".encode() + part + b"\r\n"
            for part in (payload[:half], payload[half:])
        )
        + b"0\r\n\r\n"
    )
    auth = _auth_header(server.workspace_id, server.api_key)
    head = (
        f"POST /v1/experiences/fetch HTTP/1.1\r\nHost: x\r\nMOE-APPKEY: {server.workspace_id}\r\n"
        f"Authorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    raw = api.raw(head + chunks)
    assert api.status_of(raw) == 200
    assert "loyalty-points" in api.body_of(raw)["experiences"]


def test_expect_100_continue_gets_413_without_continue(api: Any) -> None:
    """A client that waits for 100 Continue with an oversized body gets 413 instead."""
    raw = api.raw(_post_head(api.server, 5 * 1024 * 1024, "Expect: 100-continue\r\n"))
    assert api.status_of(raw) == 413


def test_expect_100_continue_is_answered_when_the_body_is_wanted(api: Any) -> None:
    """With a body within the limit the server sends 100 Continue, then the answer."""
    import socket

    body = b'{"experience_key": ["homepage-banner"]}'
    with socket.create_connection(("127.0.0.1", api.server.port), timeout=5) as sock:
        sock.sendall(_post_head(api.server, len(body), "Expect: 100-continue\r\n"))
        interim = sock.recv(1024)
        sock.sendall(body)
        final = sock.recv(65536)
    assert interim.startswith(b"HTTP/1.1 100")
    assert final.startswith(b"HTTP/1.1 200")


def test_connections_are_kept_alive(api: Any) -> None:
    """Two requests in turn on one socket are both answered (HTTP/1.1 keep-alive)."""
    import socket

    server = api.server
    auth = _auth_header(server.workspace_id, server.api_key)
    request = (
        f"GET /v1/experiences/metadata HTTP/1.1\r\nHost: x\r\nMOE-APPKEY: "
        f"{server.workspace_id}\r\nAuthorization: {auth}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        answers = []
        for _ in range(2):
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += sock.recv(65536)
            answers.append(head.split(b" ", 2)[1])
    assert answers == [b"200", b"200"]


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/experiences/fetch HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ],
)
def test_garbage_requests_do_not_crash_the_server(api: Any, data: bytes) -> None:
    """Malformed HTTP gets an error answer or a closed connection; the server keeps serving."""
    api.raw(data, shut_write=True)
    assert api.meta().status_code == 200


def test_concurrent_fetches_are_all_answered(api: Any) -> None:
    """Twenty threads fetching at once all get their 200 (a thread per connection)."""
    results: list[int] = []
    lock = threading.Lock()
    url = api.server.base_url + "/experiences/fetch"
    kwargs: dict[str, Any] = {
        "headers": api.headers(),
        "auth": (api.server.workspace_id, api.server.api_key),
        "timeout": 10,
    }

    def one(n: int) -> None:
        body = {"identifiers": {"customer_id": f"user_{n}"}, "experience_key": ["homepage-banner"]}
        status = requests.post(url, json=body, **kwargs).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 20


def test_stop_ends_kept_alive_connections_promptly() -> None:
    """stop() returns quickly even with an idle kept-alive client connection open."""
    server = PersonalizeServer(port=0).start()
    session = requests.Session()
    session.get(server.url + "/_local/health", timeout=10)
    started = time.monotonic()
    server.stop()
    session.close()
    assert time.monotonic() - started < 2


def test_an_invalid_content_length_is_a_400_envelope(api: Any) -> None:
    """Content-Length: abc is answered with the JSON envelope, then the connection closes."""
    raw = api.raw(_post_head(api.server, 0).replace(b"Content-Length: 0", b"Content-Length: abc"))
    assert api.status_of(raw) == 400
    assert api.body_of(raw) == {
        "title": "Request Error",
        "description": "Invalid Content-Length header: 'abc'.",
    }


def test_http_level_errors_use_the_envelope_and_a_request_id(api: Any) -> None:
    """An over-long request line gets 414 as a JSON envelope with x-request-id."""
    raw = api.raw(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", shut_write=True)
    assert api.status_of(raw) == 414
    assert b"\r\nx-request-id: " in raw
    assert api.body_of(raw)["title"] == "URI Too Long"  # the same on every Python


def test_a_broken_chunked_body_is_a_400_not_a_crash(api: Any) -> None:
    """A chunk size that is not hexadecimal is the client's error: 400 with the envelope."""
    server = api.server
    auth = _auth_header(server.workspace_id, server.api_key)
    head = (
        f"POST /v1/experiences/fetch HTTP/1.1\r\nHost: x\r\nMOE-APPKEY: {server.workspace_id}\r\n"
        f"Authorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    raw = api.raw(head + b"zz\r\n{}\r\n0\r\n\r\n")
    assert api.status_of(raw) == 400
    assert api.body_of(raw)["description"].startswith("The request body could not be read")


def test_serve_forever_returns_when_stopped_from_another_thread() -> None:
    """A blocking serve_forever() ends when stop() is called elsewhere; the port is released."""
    server = PersonalizeServer(port=0)
    server.bind()
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    response = requests.get(server.url + "/_local/health", timeout=10)
    assert response.status_code == 200
    server.stop()
    runner.join(5)
    assert not runner.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/_local/health", timeout=2)


def test_an_http_0_9_request_is_answered_then_closed_even_asking_keep_alive(api: Any) -> None:
    """A request line without a version (HTTP/0.9) gets an answer with no length, so the
    connection closes after it, whatever Connection header follows (found by the fuzz run:
    the standard library kept it open on ``Connection: keep-alive``)."""
    raw = api.raw(b"GET /\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert b"No such endpoint" in raw  # then the server closed: raw() returned


def test_an_answer_leaves_in_one_send(
    server: PersonalizeServer, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header block and the body go out together: one send, one TCP segment, one read at
    the client (two sends cost the client a second read). Large answers may take more."""
    sends: list[int] = []

    def counted(original: Any) -> Any:
        def send(self: socket.socket, data: Any, *args: Any) -> Any:
            if self.getsockname()[1] == server.port:  # the server's end of a connection
                sends.append(len(data))
            return original(self, data, *args)

        return send

    monkeypatch.setattr(socket.socket, "send", counted(socket.socket.send))
    monkeypatch.setattr(socket.socket, "sendall", counted(socket.socket.sendall))
    answer = api.fetch({"customer_id": "u1", "experience_keys": ["homepage-banner"]})
    assert answer.status_code == 200
    assert len(sends) == 1
    assert sends[0] > len(answer.content)  # the headers with the body
    assert api.meta().status_code == 200
    assert len(sends) == 2


def test_a_client_that_stops_reading_is_let_go_after_one_idle_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that pipelines requests and never reads the answers: once an answer cannot be
    written within the idle timeout, the connection ends, once (the unsent rest of the buffered
    answer is not flushed again, each time for another timeout), and nothing escapes as an
    error on the connection."""
    monkeypatch.setattr(_runner._WSGIHandler, "timeout", 1.0)
    ended: list[float] = []
    serve = _runner._ThreadingServer.process_request_thread

    def counted(self: Any, request: Any, client_address: Any) -> None:
        try:
            serve(self, request, client_address)
        finally:
            ended.append(time.monotonic())

    monkeypatch.setattr(_runner._ThreadingServer, "process_request_thread", counted)
    caplog.set_level(logging.DEBUG, logger="moengage_personalize")
    request = b"GET /" + b"x" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"  # a 404 echoing it
    with PersonalizeServer(port=0) as server, socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.settimeout(1.0)
        # until the server stops reading too (or, on a slow machine, has already let go)
        with contextlib.suppress(TimeoutError, ConnectionError):
            for _ in range(400):
                sock.sendall(request)
        stalled = time.monotonic()
        assert wait_for(lambda: bool(ended), timeout=10)
        assert ended[0] - stalled < 2.8  # one timeout (1 s) after the stall, not three
    assert not [r for r in caplog.records if "error on the connection" in r.getMessage()]
