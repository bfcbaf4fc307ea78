"""The local MoEngage Personalize server: the REST contract on one machine, no account needed.

It serves ``GET /v1/experiences/metadata``, ``POST /v1/experiences/fetch`` and ``POST
/v1/experiences/events`` as MoEngage documents them (shapes, statuses, error envelopes and
strings), evaluates experiences from a definitions file the way the dashboard configures them,
and records impressions and clicks in SQLite. It uses the standard library only and never
imports the client side of this package: the two are independent readings of one contract.

- :class:`PersonalizeApp`: the WSGI application (serve it with gunicorn, waitress ...);
- :class:`PersonalizeServer`: the app on a threaded stdlib HTTP server, in-process (context
  manager) or blocking (:meth:`~PersonalizeServer.serve_forever`);
- :func:`load_definitions` / :func:`parse_definitions` / :func:`sample_definitions`: the
  experience definitions (:class:`DefinitionsError` names the place of a mistake);
- :class:`EventStore`: the events, de-duplicated by ``moe_event_uuid``, with :meth:`stats`.

Under a WSGI server::

    # wsgi.py:  gunicorn wsgi:app
    from moengage_personalize.server import PersonalizeApp, load_definitions
    app = PersonalizeApp(load_definitions("experiences.json"))
"""

from ._app import DEFAULT_MAX_BODY_BYTES, PersonalizeApp
from ._definitions import (
    Definitions,
    DefinitionsError,
    load_definitions,
    parse_definitions,
    sample_definitions,
    sample_path,
)
from ._runner import DEFAULT_HOST, DEFAULT_PORT, PersonalizeServer
from ._store import EventStore
from ._targeting import Outcome

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "Definitions",
    "DefinitionsError",
    "EventStore",
    "Outcome",
    "PersonalizeApp",
    "PersonalizeServer",
    "load_definitions",
    "parse_definitions",
    "sample_definitions",
    "sample_path",
]
