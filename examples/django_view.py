"""Django: a single-file project whose view fetches, renders and records the impression.

    python examples/django_view.py runserver 127.0.0.1:8000   # local server started for you
    python examples/django_view.py check-page                 # one request through the test client

The client comes from ``settings.MOENGAGE_PERSONALIZE`` through
``moengage_personalize.contrib.django`` (one per process, closed at exit). Credentials come from
MOENGAGE_WORKSPACE_ID / MOENGAGE_PERSONALIZE_API_KEY (default: the local sample's published
values); the base URL from MOENGAGE_PERSONALIZE_BASE_URL (when unset, the embedded local server is
started for the length of the command).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from typing import Any

import django
from django.conf import settings
from django.core.management import execute_from_command_line
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.test import Client
from django.urls import path

from moengage_personalize import PersonalizeError
from moengage_personalize.contrib.django import get_client, request_context
from moengage_personalize.testing import personalize_server

PAGE = """<!doctype html>
<title>Shop</title>
{% for campaign in campaigns %}
  <section data-experience="{{ campaign.experience_key }}">
    <h2>{{ campaign.payload.Title|default:campaign.experience_key }}</h2>
    {% if campaign.payload.CtaLabel %}<button>{{ campaign.payload.CtaLabel }}</button>{% endif %}
  </section>
{% empty %}
  <p>Welcome!</p>
{% endfor %}
"""


def home(request: HttpRequest) -> HttpResponse:
    """Fetch the banner for this visitor, render it, record the impression."""
    customer_id = request.COOKIES.get("customer_id")  # your login decides the customer id
    visitor = customer_id or request.COOKIES.get("visitor_id") or f"v-{uuid.uuid4().hex}"

    # the two lines: who the request is for, then the fetch
    ctx = request_context(request, customer_id=customer_id, attributes={"current_page": "home"})
    try:
        result = get_client().fetch_experience("homepage-banner", **ctx.as_kwargs()).result(5)
    except PersonalizeError:
        campaigns = []  # render the default page
    else:
        campaigns = result.experiences

    html = engines["django"].from_string(PAGE).render({"campaigns": campaigns}, request)
    get_client().experiences_shown(campaigns, user=visitor)  # queued; never blocks
    response = HttpResponse(html)
    response.set_cookie("visitor_id", visitor, httponly=True)
    return response


urlpatterns = [path("", home, name="home")]


def personalize_settings(base_url: str | None = None) -> dict[str, Any]:
    """``MOENGAGE_PERSONALIZE`` from the environment (``base_url`` overrides it)."""
    return {
        "app_id": os.environ.get("MOENGAGE_WORKSPACE_ID", "LOCALSAMPLE01"),
        "api_key": os.environ.get("MOENGAGE_PERSONALIZE_API_KEY", "local-sample-personalize-key"),
        "base_url": base_url or os.environ.get("MOENGAGE_PERSONALIZE_BASE_URL"),
        "timeout": 3.0,
        "trusted_proxies": 0,  # behind one reverse proxy that appends X-Forwarded-For: 1
    }


def configure(base_url: str | None = None) -> None:
    """Configure Django for this one-file project (once per process)."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only-not-secret",  # noqa: S106 - a demo project
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
        MOENGAGE_PERSONALIZE=personalize_settings(base_url),
    )
    django.setup()


def main(argv: list[str]) -> int:
    with contextlib.ExitStack() as stack:
        base_url = os.environ.get("MOENGAGE_PERSONALIZE_BASE_URL")
        if not base_url:
            server = stack.enter_context(personalize_server())
            base_url = server.base_url
            os.environ.setdefault("MOENGAGE_WORKSPACE_ID", server.app_id)
            os.environ.setdefault("MOENGAGE_PERSONALIZE_API_KEY", server.api_key)
        configure(base_url)
        if argv[1:2] == ["check-page"]:
            client = Client()
            client.cookies["customer_id"] = "user_8821"
            response = client.get("/?utm_source=email&utm_campaign=winback-spring")
            print(response.status_code, response.content.decode())
            report = get_client().flush(timeout=5.0)
            print(f"events sent: {report.sent}")
            return 0 if response.status_code == 200 and report.sent >= 1 else 1
        execute_from_command_line(argv)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
