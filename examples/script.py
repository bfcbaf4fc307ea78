"""A plain script: list the live experiences, fetch two for a user, render them, record what was
shown and clicked, and flush before exiting.

    python examples/script.py                      # starts the embedded local server
    python examples/script.py --base-url http://127.0.0.1:8181/v1   # `moengage-personalize serve`

Credentials come from MOENGAGE_WORKSPACE_ID / MOENGAGE_PERSONALIZE_API_KEY (default: the local
sample's published values); the base URL from --base-url or MOENGAGE_PERSONALIZE_BASE_URL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from moengage_personalize import (
    ExperienceStatus,
    MoEngagePersonalize,
    PersonalizeError,
    User,
)
from moengage_personalize.testing import personalize_server

WAIT = 10.0  # seconds; every Future completes within config.timeout anyway


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("MOENGAGE_PERSONALIZE_BASE_URL"))
    parser.add_argument("--user", default="user_8821", help="customer id")
    args = parser.parse_args(argv)
    app_id = os.environ.get("MOENGAGE_WORKSPACE_ID", "LOCALSAMPLE01")
    api_key = os.environ.get("MOENGAGE_PERSONALIZE_API_KEY", "local-sample-personalize-key")

    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if not base_url:  # no server given: run the local one for the length of the script
            server = stack.enter_context(personalize_server())
            base_url, app_id, api_key = server.base_url, server.app_id, server.api_key
        personalize = stack.enter_context(
            MoEngagePersonalize(app_id, api_key=api_key, base_url=base_url)
        )

        meta = personalize.fetch_experiences_meta([ExperienceStatus.ACTIVE]).result(WAIT)
        print("live experiences:", ", ".join(m.experience_key for m in meta.experiences))

        try:
            result = personalize.fetch_experiences(
                ["homepage-banner", "cart-free-delivery"],
                attributes={"current_page": "cart", "cart_value": "640"},
                user=User(customer_id=args.user, ip_address="203.0.113.42"),
            ).result(WAIT)
        except PersonalizeError as err:
            print(f"fetch failed: {err.code} {err.message}", file=sys.stderr)
            return 1
        for campaign in result.experiences:
            print(f"{campaign.experience_key}: {campaign.payload}")
        for failure in result.failures:
            print(f"not served: {failure.reason.value} {failure.experience_keys}")

        personalize.experiences_shown(result.experiences)  # queued; never blocks
        if result.experiences:
            personalize.experience_clicked(result.experiences[0], b_id="Shop Now")
        report = personalize.flush(timeout=5.0)
        print(f"events sent: {report.sent}, dropped: {report.dropped}, pending: {report.pending}")
        return 0 if report.completed and not report.dropped else 1


if __name__ == "__main__":
    sys.exit(main())
