"""The ``moengage-personalize`` command (also ``python -m moengage_personalize``).

::

    moengage-personalize demo                     the SDK against the embedded local server
    moengage-personalize serve [--experiences FILE] [--host H] [--port P] [--db FILE]
                               [--rate-limit N]
    moengage-personalize meta [--status active ...]
    moengage-personalize fetch KEY... [--user ID] [--attr k=v ...]
    moengage-personalize stats [--db FILE]

``meta`` and ``fetch`` talk to ``--base-url`` (default: a ``serve`` on the default port) or to a
MoEngage data center (``--data-center 01``) with the credentials in ``MOENGAGE_WORKSPACE_ID``
and ``MOENGAGE_PERSONALIZE_API_KEY``; against a loopback URL the local sample credentials are
the default. ``--json`` prints machine-readable output. Errors print one line to stderr and exit
with status 1 (2 for a usage error); never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import json
import logging
import os
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

from ._version import __version__
from .server import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORT,
    DefinitionsError,
    EventStore,
    PersonalizeServer,
    sample_definitions,
)

__all__ = ["main"]

PROG = "moengage-personalize"
DEFAULT_BASE_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/v1"
ENV_WORKSPACE = "MOENGAGE_WORKSPACE_ID"
ENV_API_KEY = "MOENGAGE_PERSONALIZE_API_KEY"
ENV_DEBUG = "MOENGAGE_PERSONALIZE_DEBUG"


class CommandError(Exception):
    """A failure the command reports as one line (exit status 1)."""


# --- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    # the client package is imported here, not at module level: `serve` and `stats` need only
    # the server
    from .exceptions import PersonalizeError  # noqa: PLC0415

    try:
        return handler(args, sys.stdout)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (
        CommandError,
        PersonalizeError,
        DefinitionsError,
        OSError,
        ValueError,
        TypeError,
        sqlite3.Error,
    ) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get(ENV_DEBUG):
            raise
        print(
            f"{PROG}: unexpected error (a bug; set {ENV_DEBUG}=1 for the traceback): "
            f"{type(exc).__name__}: {_one_line(exc)}",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MoEngage Personalize: the SDK's command line and the local server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    remote = argparse.ArgumentParser(add_help=False)
    where = remote.add_mutually_exclusive_group()
    where.add_argument(
        "--base-url",
        help=f"the API prefix, ending in /v1 (default {DEFAULT_BASE_URL}: a local `serve`)",
    )
    where.add_argument(
        "--data-center",
        metavar="DC",
        help=f"a MoEngage data center (01..06, 101); credentials from ${ENV_WORKSPACE} and "
        f"${ENV_API_KEY}",
    )
    remote.add_argument("--timeout", type=float, default=5.0, help="seconds per call (default 5)")

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the SDK against the embedded local server and report what each user got",
    )
    demo.set_defaults(handler=_cmd_demo)

    serve = sub.add_parser(
        "serve", parents=[common], help="run the local Personalize server until Ctrl-C"
    )
    serve.add_argument("--experiences", metavar="FILE", help="definitions file (default: sample)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument("--db", metavar="FILE", help="SQLite file for events (default: memory)")
    serve.add_argument(
        "--rate-limit", type=_positive_int, metavar="N", help="requests per minute (default off)"
    )
    serve.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"request body limit, 413 past it (default {DEFAULT_MAX_BODY_BYTES})",
    )
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.set_defaults(handler=_cmd_serve)

    meta = sub.add_parser("meta", parents=[common, remote], help="list the experiences")
    meta.add_argument(
        "--status",
        action="append",
        choices=("active", "paused", "scheduled"),
        help="only these statuses (repeatable; default all)",
    )
    meta.set_defaults(handler=_cmd_meta)

    fetch = sub.add_parser("fetch", parents=[common, remote], help="fetch experiences for a user")
    fetch.add_argument("keys", nargs="+", metavar="KEY", help="experience keys")
    fetch.add_argument("--user", metavar="ID", help="customer id (default: anonymous)")
    fetch.add_argument(
        "--attr",
        action="append",
        default=[],
        type=_attribute,
        metavar="NAME=VALUE",
        help="an in-session attribute, e.g. current_page=cart (repeatable)",
    )
    fetch.set_defaults(handler=_cmd_fetch)

    stats = sub.add_parser(
        "stats", parents=[common], help="impressions, clicks and CTR of a local server"
    )
    source = stats.add_mutually_exclusive_group()
    source.add_argument("--base-url", help=f"a running local server (default {DEFAULT_BASE_URL})")
    source.add_argument("--db", metavar="FILE", help="read a server's SQLite file instead")
    stats.set_defaults(handler=_cmd_stats)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _emit(out: TextIO, data: Any) -> None:
    out.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- serve -------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    server_log = logging.getLogger("moengage_personalize.server")
    server_log.addHandler(handler)
    server_log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    server = PersonalizeServer(
        args.experiences,
        host=args.host,
        port=args.port,
        db=args.db,
        rate_limit=args.rate_limit,
        max_body_bytes=args.max_body_bytes,
    )
    try:
        server.bind()
    except OSError as exc:
        server.stop()
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(is another server running? pick one with --port, 0 for any free port)"
        ) from exc
    is_sample = args.experiences is None
    info: dict[str, Any] = {
        "base_url": server.base_url,
        "workspace_id": server.workspace_id,
        # the sample's key is a published local value; a key from the user's own file is not
        # printed
        "api_key": server.api_key if is_sample else None,
        "experiences": "embedded sample" if is_sample else args.experiences,
        "events": args.db or "in memory",
        "rate_limit_per_minute": args.rate_limit,
    }
    if args.json:
        out.write(json.dumps(info, ensure_ascii=False) + "\n")
    else:
        key = (
            server.api_key + "  (local sample credentials, not a secret)"
            if is_sample
            else (f"as set in {args.experiences}")
        )
        out.write(
            "MoEngage Personalize local server\n"
            f"  base URL:      {server.base_url}\n"
            f"  workspace id:  {server.workspace_id}\n"
            f"  api key:       {key}\n"
            f"  experiences:   {info['experiences']}\n"
            f"  events:        {info['events']}\n"
            f"  rate limit:    {args.rate_limit or 'off'}\n"
            "Press Ctrl-C to stop.\n"
        )
    if not _is_loopback_url(server.url):
        print(
            f"{PROG}: warning: listening on {args.host}, beyond this machine",
            file=sys.stderr,
        )
    out.flush()
    try:
        server.serve_forever()
    finally:
        server_log.removeHandler(handler)
    if not args.json:
        out.write("stopped\n")
    return 0


# --- meta / fetch ------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from . import MoEngagePersonalize, PersonalizeConfig  # noqa: PLC0415

    workspace = os.environ.get(ENV_WORKSPACE) or None
    api_key = os.environ.get(ENV_API_KEY) or None
    config = PersonalizeConfig(timeout=args.timeout)
    if args.data_center is not None:
        if workspace is None or api_key is None:
            raise CommandError(
                f"--data-center needs the credentials in ${ENV_WORKSPACE} and ${ENV_API_KEY}"
            )
        return MoEngagePersonalize(
            workspace, api_key=api_key, data_center=args.data_center, config=config
        )
    base_url = args.base_url or DEFAULT_BASE_URL
    if workspace is None or api_key is None:
        if not _is_loopback_url(base_url):
            raise CommandError(
                f"{base_url} is not a local server: set ${ENV_WORKSPACE} and ${ENV_API_KEY}"
            )
        sample = sample_definitions()
        workspace = workspace or sample.workspace_id
        api_key = api_key or sample.api_key
    return MoEngagePersonalize(workspace, api_key=api_key, base_url=base_url, config=config)


def _hint(exc: Exception, args: argparse.Namespace) -> Exception:
    from .exceptions import ErrorCode, PersonalizeError  # noqa: PLC0415

    base_url = getattr(args, "base_url", None) or DEFAULT_BASE_URL
    if (
        isinstance(exc, PersonalizeError)
        and exc.code == ErrorCode.NETWORK_ERROR
        and args.data_center is None
        and _is_loopback_url(base_url)
    ):
        return CommandError(f"{exc} (is `{PROG} serve` running?)")
    return exc


def _cmd_meta(args: argparse.Namespace, out: TextIO) -> int:
    with _client(args) as client:
        try:
            meta = client.fetch_experiences_meta(args.status).result()
        except Exception as exc:
            raise _hint(exc, args) from exc
    rows = [
        {
            "experience_key": m.experience_key,
            "experience_name": m.experience_name,
            "status": m.status.value,
        }
        for m in meta.experiences
    ]
    if args.json:
        _emit(out, {"source": meta.source.value, "experiences": rows})
        return 0
    out.write(f"{len(rows)} experience(s)\n")
    width = max((len(r["experience_key"]) for r in rows), default=0)
    for row in rows:
        out.write(
            f"  {row['experience_key']:<{width}}  {row['status']:<9}  {row['experience_name']}\n"
        )
    return 0


def _cmd_fetch(args: argparse.Namespace, out: TextIO) -> int:
    attributes = dict(args.attr)
    with _client(args) as client:
        try:
            result = client.fetch_experiences(
                args.keys, attributes=attributes, user=args.user
            ).result()
        except Exception as exc:
            raise _hint(exc, args) from exc
    data = {
        "experiences": [
            {
                "experience_key": c.experience_key,
                "payload": c.payload,
                "experience_context": c.experience_context,
            }
            for c in result.experiences
        ],
        "failures": [
            {"reason": f.reason.value, "experience_keys": list(f.experience_keys)}
            for f in result.failures
        ],
    }
    if args.json:
        _emit(out, data)
        return 0
    who = f"customer {args.user}" if args.user else "an anonymous visitor"
    out.write(f"for {who}:\n")
    for campaign in data["experiences"]:
        ctx = campaign["experience_context"]
        out.write(
            f"  {campaign['experience_key']}: variation {ctx.get('moe_variation_id')} of "
            f"audience {ctx.get('audience_name')!r}\n"
        )
        for name, value in campaign["payload"].items():
            out.write(f"      {name}: {json.dumps(value, ensure_ascii=False)}\n")
    for failure in data["failures"]:
        out.write(f"  not served ({failure['reason']}): {', '.join(failure['experience_keys'])}\n")
    return 0


# --- stats -------------------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    if args.db is not None:
        if not os.path.isfile(args.db):
            raise CommandError(f"no such database file: {args.db}")
        store = EventStore(args.db)
        try:
            rows = store.stats()
        finally:
            store.close()
    else:
        rows = _remote_stats(args.base_url or DEFAULT_BASE_URL)
    if args.json:
        _emit(out, {"stats": rows})
        return 0
    if not rows:
        out.write("no impressions or clicks recorded yet\n")
        return 0
    out.write(f"{'experience':<28} {'variation':>9} {'impressions':>11} {'clicks':>6} {'CTR':>7}\n")
    for row in rows:
        ctr = "-" if row["ctr"] is None else f"{row['ctr'] * 100:.1f}%"
        name = row["experience_key"] or row["experience"] or "(unknown)"
        out.write(
            f"{name:<28} {row['moe_variation_id'] or '-':>9} {row['impressions']:>11} "
            f"{row['clicks']:>6} {ctr:>7}\n"
        )
    return 0


def _remote_stats(base_url: str) -> list[dict[str, Any]]:
    if not _is_loopback_url(base_url):
        raise CommandError("stats reads a local server only (a loopback --base-url, or --db)")
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    url = f"{root}/_local/stats"
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:  # noqa: S310 - loopback http
            body = json.loads(response.read(10 * 1024 * 1024))
    except urllib.error.HTTPError as exc:
        raise CommandError(f"{url} answered HTTP {exc.code}; is it a `{PROG} serve`?") from exc
    except urllib.error.URLError as exc:
        raise CommandError(
            f"cannot reach {url}: {exc.reason} (is `{PROG} serve` running? or use --db FILE)"
        ) from exc
    except ValueError as exc:
        raise CommandError(f"{url} did not answer JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("stats"), list):
        raise CommandError(f"{url} did not answer the stats shape")
    rows: list[dict[str, Any]] = body["stats"]
    return rows


# --- demo --------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    report = run_demo()
    if args.json:
        _emit(out, report)
    else:
        out.write(render_demo(report))
    return 0


_ANDROID_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Mobile Safari/537.36"
)


def _scenarios() -> list[dict[str, Any]]:
    """The demo's visits: who, in which context, asking for which experiences."""
    return [
        {
            "title": "Jane, a gold member, on the cart page with 640 in her cart",
            "user": {"customer_id": "user_8821"},
            "attributes": {"current_page": "cart", "cart_value": "640"},
            "clicks": {"homepage-banner": "Grab it"},
            "offering_clicks": ["product-recommendations"],
            "keys": [
                "homepage-banner",
                "cart-free-delivery",
                "loyalty-points",
                "product-recommendations",
            ],
        },
        {
            "title": "Ravi, a new silver member, on the cart page with 120 in his cart",
            "user": {"customer_id": "user_1002"},
            "attributes": {"current_page": "cart", "cart_value": "120"},
            "keys": ["homepage-banner", "cart-free-delivery", "loyalty-points"],
        },
        {
            "title": "Meera, a gold regular who falls in the homepage banner's control group",
            "user": {"customer_id": "user_4401"},
            "attributes": {"current_page": "home"},
            "keys": ["homepage-banner", "loyalty-points"],
        },
        {
            "title": "Aisha on her Android phone, from a win-back email, on a Saturday evening",
            "user": {"customer_id": "user_3107", "user_agent": _ANDROID_UA},
            "attributes": {
                "utm_source": "Email",
                "utm_campaign": "winback_march",
                "DAY_OF_THE_WEEK": "Saturday",
                "TIME_OF_THE_DAY": "18",
            },
            "keys": ["email-welcome-back", "app-download-strip", "weekend-evening-deals"],
            "clicks": {"email-welcome-back": "Apply coupon"},
        },
        {
            "title": "An anonymous visitor (no identifiers): only All Users audiences apply",
            "user": None,
            "tracking_user": "session-7f3a9c",  # events need an id: the visitor's session
            "attributes": {"current_page": "home"},
            "keys": ["homepage-banner", "product-recommendations", "app-download-strip"],
        },
        {
            "title": "Jane asks for keys the metadata does not list as live",
            "user": {"customer_id": "user_8821"},
            "attributes": {},
            "keys": [
                "homepage-banner",
                "no-such-experience",
                "cart-upsell",
                "christmas-sale-strip",
            ],
        },
    ]


def run_demo() -> dict[str, Any]:
    """Start the local server with the sample, drive the SDK through :func:`_scenarios`, and
    return the report (what the SDK returned, and what the server knows about each miss)."""
    from . import MoEngagePersonalize, User  # noqa: PLC0415

    with PersonalizeServer(None, host="127.0.0.1", port=0) as server:
        report: dict[str, Any] = {
            "server": {"base_url": server.base_url, "workspace_id": server.workspace_id},
            "metadata": [],
            "visits": [],
        }
        client = MoEngagePersonalize(
            server.workspace_id, api_key=server.api_key, base_url=server.base_url
        )
        try:
            meta = client.fetch_experiences_meta().result()
            report["metadata"] = [
                {
                    "experience_key": m.experience_key,
                    "experience_name": m.experience_name,
                    "status": m.status.value,
                }
                for m in meta.experiences
            ]
            for scenario in _scenarios():
                user = None if scenario["user"] is None else User(**scenario["user"])
                result = client.fetch_experiences(
                    scenario["keys"], attributes=scenario["attributes"], user=user
                ).result()
                customer_id = None if user is None else user.customer_id
                served = [
                    {
                        "experience_key": c.experience_key,
                        "variation": c.experience_context.get("moe_variation_id"),
                        "audience": c.experience_context.get("audience_name"),
                        "payload": c.payload,
                        "offerings": [
                            {
                                "dp_offering_id": o["dp_offering_id"],
                                "title": (o.get("offering_content") or {}).get("title"),
                            }
                            for o in c.offerings
                        ],
                    }
                    for c in result.experiences
                ]
                missed = []
                for failure in result.failures:
                    for key in failure.experience_keys:
                        missed.append(
                            {
                                "experience_key": key,
                                "sdk_reason": failure.reason.value,
                                "server": _server_view(server, customer_id, key),
                            }
                        )
                _track(client, result.experiences, scenario)
                report["visits"].append(
                    {
                        "title": scenario["title"],
                        "customer_id": customer_id,
                        "attributes": scenario["attributes"],
                        "asked": scenario["keys"],
                        "served": served,
                        "not_served": missed,
                    }
                )
            flushed = client.flush(timeout=5.0)
            report["events"] = {"sent": flushed.sent, "completed": flushed.completed}
        finally:
            client.close()
        report["stats"] = server.stats()
    return report


def _track(client: Any, campaigns: Sequence[Any], scenario: Mapping[str, Any]) -> None:
    """What the page would report: every campaign shown, the scenario's clicks."""
    if not campaigns:
        return
    user = scenario.get("tracking_user")
    client.experiences_shown(campaigns, user=user)
    for campaign in campaigns:
        b_id = scenario.get("clicks", {}).get(campaign.experience_key)
        if b_id is not None:
            client.experience_clicked(campaign, b_id=b_id, user=user)
        if campaign.experience_key in scenario.get("offering_clicks", ()):
            client.offerings_shown(campaign.offerings, user=user)
            client.offering_clicked(campaign, campaign.offerings[0], user=user)


def _server_view(server: PersonalizeServer, customer_id: str | None, key: str) -> dict[str, Any]:
    """The server's latest decision on ``key`` for this customer, or why it never saw the key."""
    decisions = [d for d in server.decisions(experience_key=key) if d["customer_id"] == customer_id]
    if not decisions:
        return {"outcome": None, "detail": "never asked: the SDK settled it from the metadata"}
    return {"outcome": decisions[-1]["outcome"], "detail": decisions[-1]["detail"]}


def render_demo(report: dict[str, Any]) -> str:
    """The demo report as readable text."""
    lines = [
        "MoEngage Personalize demo",
        f"local server {report['server']['base_url']} "
        f"(workspace {report['server']['workspace_id']}), sample experiences",
        "",
        f"Metadata: {len(report['metadata'])} experiences (ended ones are not listed)",
    ]
    width = max((len(m["experience_key"]) for m in report["metadata"]), default=0)
    lines += [
        f"  {m['experience_key']:<{width}}  {m['status']:<9}  {m['experience_name']}"
        for m in report["metadata"]
    ]
    for number, visit in enumerate(report["visits"], 1):
        lines += ["", f"{number}. {visit['title']}"]
        if visit["attributes"]:
            shown = ", ".join(f"{k}={v}" for k, v in visit["attributes"].items())
            lines.append(f"   context: {shown}")
        lines.append(f"   asked:   {', '.join(visit['asked'])}")
        for item in visit["served"]:
            lines.append(
                f"   + {item['experience_key']}: variation {item['variation']} "
                f"(audience {item['audience']!r})"
            )
            for name, value in item["payload"].items():
                if item["offerings"] and isinstance(value, list):
                    continue
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                lines.append(f"       {name}: {text}")
            for offering in item["offerings"]:
                lines.append(f"       offering {offering['dp_offering_id']}: {offering['title']}")
        for item in visit["not_served"]:
            server = item["server"]
            lines.append(f"   - {item['experience_key']}: SDK says {item['sdk_reason']}")
            if server["outcome"] is not None and server["outcome"] != item["sdk_reason"]:
                lines.append(f"       the server knows why: {server['outcome']}")
            lines.append(f"       server: {server['detail']}")
    events = report.get("events", {})
    lines += [
        "",
        f"Impressions and clicks: the SDK sent {events.get('sent', 0)} events; the server counts",
        f"  {'experience':<24} {'variation':>9} {'impressions':>11} {'clicks':>6} {'CTR':>7}",
    ]
    for row in report.get("stats", []):
        ctr = "-" if row["ctr"] is None else f"{row['ctr'] * 100:.0f}%"
        lines.append(
            f"  {row['experience_key'] or row['experience']:<24} {row['moe_variation_id']:>9} "
            f"{row['impressions']:>11} {row['clicks']:>6} {ctr:>7}"
        )
    lines += ["", "Client closed; server stopped."]
    return "\n".join(lines) + "\n"
