"""asyncio: fetch for several users at once with AsyncMoEngagePersonalize, record the
impressions, flush without blocking the event loop.

    python examples/asyncio_script.py              # starts the embedded local server
    python examples/asyncio_script.py --base-url http://127.0.0.1:8181/v1

Credentials come from MOENGAGE_WORKSPACE_ID / MOENGAGE_PERSONALIZE_API_KEY (default: the local
sample's published values); the base URL from --base-url or MOENGAGE_PERSONALIZE_BASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from moengage_personalize import ExperienceCampaignsResult, PersonalizeError
from moengage_personalize.aio import AsyncMoEngagePersonalize
from moengage_personalize.testing import personalize_server

USERS = ["user_8821", "user_1002", "user_3107", "user_4401"]


async def personalize_all(base_url: str, app_id: str, api_key: str) -> int:
    async with AsyncMoEngagePersonalize(app_id, api_key=api_key, base_url=base_url) as personalize:
        # one coroutine per user, all in flight at once on the client's worker threads
        results: list[ExperienceCampaignsResult | BaseException] = await asyncio.wait_for(
            asyncio.gather(
                *(
                    personalize.fetch_experiences(["homepage-banner", "loyalty-points"], user=user)
                    for user in USERS
                ),
                return_exceptions=True,
            ),
            timeout=10.0,
        )
        for user, result in zip(USERS, results, strict=True):
            if isinstance(result, PersonalizeError):
                print(f"{user}: failed {result.code}", file=sys.stderr)
                continue
            if isinstance(result, BaseException):
                raise result
            keys = [c.experience_key for c in result.experiences]
            print(f"{user}: {keys}")
            personalize.experiences_shown(result.experiences)  # plain call: it only queues
        report = await personalize.flush(timeout=5.0)  # in a worker thread
        print(f"events sent: {report.sent}, pending: {report.pending}")
        return 0 if report.completed and not report.dropped else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("MOENGAGE_PERSONALIZE_BASE_URL"))
    args = parser.parse_args(argv)
    app_id = os.environ.get("MOENGAGE_WORKSPACE_ID", "LOCALSAMPLE01")
    api_key = os.environ.get("MOENGAGE_PERSONALIZE_API_KEY", "local-sample-personalize-key")
    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if not base_url:
            server = stack.enter_context(personalize_server())
            base_url, app_id, api_key = server.base_url, server.app_id, server.api_key
        return asyncio.run(personalize_all(base_url, app_id, api_key))


if __name__ == "__main__":
    sys.exit(main())
