"""A small WSGI app whose client is made at import, before gunicorn --preload forks its workers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from moengage_personalize import MoEngagePersonalize, PersonalizeConfig

client = MoEngagePersonalize(
    os.environ["APP_ID"],
    api_key=os.environ["API_KEY"],
    base_url=os.environ["BASE_URL"],
    config=PersonalizeConfig(event_flush_interval=0.05),
)
# Used once in the master before the fork: threads, pool and metadata exist there.
client.fetch_experiences_meta().result(10)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = environ.get("QUERY_STRING", "") or "anonymous"
    result = client.fetch_experience("cart-upsell", user=user).result(10)
    for campaign in result.experiences:
        client.experience_shown(campaign)
    report = client.flush(timeout=10)
    body = json.dumps(
        {
            "pid": os.getpid(),
            "served": [c.experience_key for c in result.experiences],
            "events_sent": report.sent,
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
