"""Fork safety: a client made before os.fork() works in the child, without user hooks."""

from __future__ import annotations

import os
import warnings

import pytest
from pytest_httpserver import HTTPServer

from moengage_personalize import (
    DataSource,
    ExperienceCampaign,
    MoEngagePersonalize,
    PersonalizeConfig,
    User,
)

from support import API_KEY, APP_ID, CONTEXT, FUTURE_TIMEOUT, requests_to, served

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
EVENTS = "/v1/experiences/events"


def fork() -> int:
    with warnings.catch_warnings():  # 3.12+: "multi-threaded, use of fork() may lead to deadlocks"
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def child_exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_client_made_before_fork_works_in_the_child(with_meta: HTTPServer, base_url: str) -> None:
    """After os.fork() the child's client fetches and tracks (its own threads, session and queue);
    the parent's queued event is sent once, by the parent, and the child's by the child."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    with_meta.expect_request(EVENTS).respond_with_json({"status": "success"})
    campaign = ExperienceCampaign(
        experience_key="cart-upsell",
        payload={},
        experience_context=CONTEXT,
        source=DataSource.NETWORK,
        user=User(customer_id="u1"),
    )
    config = PersonalizeConfig(event_flush_interval=60)
    client = MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, config=config)
    client.fetch_experience("cart-upsell", user="parent").result(FUTURE_TIMEOUT)
    client.experience_shown(campaign)  # queued in the parent, not yet sent
    pid = fork()
    if pid == 0:  # the child
        code = 1
        try:
            result = client.fetch_experience("cart-upsell", user="child").result(FUTURE_TIMEOUT)
            client.experience_clicked(campaign, b_id="child")
            report = client.flush(timeout=FUTURE_TIMEOUT)
            ok = result.experiences and report.sent == 1 and report.pending == 0
            client.close(timeout=5)
            code = 0 if ok else 3
        finally:
            os._exit(code)
    assert child_exit_code(pid) == 0
    assert client.fetch_experience("cart-upsell", user="parent2").result(FUTURE_TIMEOUT).experiences
    client.close(timeout=5)
    actions = [
        a
        for req in requests_to(with_meta, EVENTS)
        for element in req.get_json()["elements"]
        for a in element["actions"]
    ]
    assert sorted(a["action"] for a in actions) == [
        "MOE_PERSONALIZATION_MESSAGE_CLICKED",
        "MOE_PERSONALIZATION_MESSAGE_SHOWN",
    ]
    assert len({a["moe_event_uuid"] for a in actions}) == 2


def test_many_children_each_get_a_working_client(with_meta: HTTPServer, base_url: str) -> None:
    """Several forked children (as multiprocessing or a pre-fork server would make) all work."""
    with_meta.expect_request("/v1/experiences/fetch").respond_with_json(served("cart-upsell"))
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url) as client:
        client.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        pids = []
        for n in range(4):
            pid = fork()
            if pid == 0:
                code = 1
                try:
                    r = client.fetch_experience("cart-upsell", user=f"c{n}").result(FUTURE_TIMEOUT)
                    code = 0 if r.experiences else 2
                finally:
                    os._exit(code)
            pids.append(pid)
        assert [child_exit_code(p) for p in pids] == [0, 0, 0, 0]
    assert len(requests_to(with_meta, "/v1/experiences/fetch")) == 4


def test_injected_session_is_kept_and_warned_about_after_fork(
    with_meta: HTTPServer, base_url: str
) -> None:
    """An injected session whose adapter carries the calls stays the caller's in the child (it
    still works), with a warning."""
    import io
    import logging

    import requests
    import requests.adapters

    class Adapter(requests.adapters.HTTPAdapter):
        def send(self, *args: object, **kwargs: object) -> requests.Response:
            return super().send(*args, **kwargs)  # type: ignore[arg-type]

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("moengage_personalize")
    session = requests.Session()
    session.mount("http://", Adapter())
    with MoEngagePersonalize(APP_ID, api_key=API_KEY, base_url=base_url, session=session) as c:
        c.fetch_experiences_meta().result(FUTURE_TIMEOUT)
        read, write = os.pipe()
        logger.addHandler(handler)
        try:
            pid = fork()
            if pid == 0:
                code = 1
                try:
                    c.fetch_experiences_meta().result(FUTURE_TIMEOUT)
                    os.write(write, stream.getvalue().encode()[:4000] or b"-")
                    code = 0
                finally:
                    os._exit(code)
        finally:
            logger.removeHandler(handler)
        os.close(write)
        assert child_exit_code(pid) == 0
        message = os.read(read, 5000).decode()
        os.close(read)
    assert "injected requests.Session" in message
    assert stream.getvalue() == ""  # the parent itself was not forked: no warning there
