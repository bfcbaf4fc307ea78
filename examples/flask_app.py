"""Flask: one client per app, the WSGI request helper, fetch, render, record the impression.

    python examples/flask_app.py            # local server + http://127.0.0.1:5000/?customer_id=user_8821
    python examples/flask_app.py --check    # one request through Flask's test client, then exit

Credentials come from MOENGAGE_WORKSPACE_ID / MOENGAGE_PERSONALIZE_API_KEY (default: the local
sample's published values); the base URL from --base-url or MOENGAGE_PERSONALIZE_BASE_URL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid

from flask import Flask, render_template_string, request

from moengage_personalize import MoEngagePersonalize, PersonalizeError
from moengage_personalize.contrib.wsgi import context_from_environ
from moengage_personalize.testing import personalize_server

PAGE = """<!doctype html>
<title>Shop</title>
{% for campaign in campaigns %}
  <section data-experience="{{ campaign.experience_key }}">
    <h2>{{ campaign.payload.get("Title", campaign.experience_key) }}</h2>
    {% if campaign.payload.get("CtaLabel") %}
      <button>{{ campaign.payload["CtaLabel"] }}</button>
    {% endif %}
  </section>
{% else %}
  <p>Welcome!</p>
{% endfor %}
"""


def create_app(personalize: MoEngagePersonalize, *, trusted_proxies: int = 0) -> Flask:
    """The app; ``personalize`` is the process's client (its owner closes it)."""
    app = Flask(__name__)
    app.extensions["moengage_personalize"] = personalize

    @app.get("/")
    def home() -> tuple[str, int, dict[str, str]]:
        # your login decides the customer id; an anonymous visitor gets a cookie for tracking
        customer_id = request.args.get("customer_id") or request.cookies.get("customer_id")
        visitor = customer_id or request.cookies.get("visitor_id") or f"v-{uuid.uuid4().hex}"
        ctx = context_from_environ(
            request.environ,
            customer_id=customer_id,
            attributes={"current_page": "home"},
            trusted_proxies=trusted_proxies,
        )
        try:
            result = personalize.fetch_experience("homepage-banner", **ctx.as_kwargs()).result(5)
        except PersonalizeError:
            campaigns = []  # render the default page; the error was logged / on_error
        else:
            campaigns = result.experiences
        page = render_template_string(PAGE, campaigns=campaigns)
        personalize.experiences_shown(campaigns, user=visitor)  # queued; never blocks
        return page, 200, {"Set-Cookie": f"visitor_id={visitor}; Path=/; HttpOnly"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("MOENGAGE_PERSONALIZE_BASE_URL"))
    parser.add_argument("--check", action="store_true", help="one request, then exit")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    app_id = os.environ.get("MOENGAGE_WORKSPACE_ID", "LOCALSAMPLE01")
    api_key = os.environ.get("MOENGAGE_PERSONALIZE_API_KEY", "local-sample-personalize-key")
    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if not base_url:
            server = stack.enter_context(personalize_server())
            base_url, app_id, api_key = server.base_url, server.app_id, server.api_key
        personalize = stack.enter_context(
            MoEngagePersonalize(app_id, api_key=api_key, base_url=base_url)
        )
        app = create_app(personalize)
        if not args.check:
            app.run(host="127.0.0.1", port=args.port)
            return 0
        response = app.test_client().get("/?customer_id=user_8821&utm_source=email")
        print(response.status_code, response.get_data(as_text=True))
        report = personalize.flush(timeout=5.0)
        print(f"events sent: {report.sent}")
        return 0 if response.status_code == 200 and report.sent >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
