"""Helpers for your own tests: the local Personalize server on an ephemeral port.

::

    from moengage_personalize import MoEngagePersonalize
    from moengage_personalize.testing import personalize_server

    def test_banner():
        with personalize_server() as server:            # the embedded sample experiences
            with MoEngagePersonalize(
                server.app_id, api_key=server.api_key, base_url=server.base_url
            ) as client:
                result = client.fetch_experience("homepage-banner", user="user_8821").result()
            assert result.experiences[0].payload["CtaLabel"] in ("Shop Now", "Grab it")
            assert server.events() == []                 # nothing tracked yet

The yielded :class:`~moengage_personalize.server.PersonalizeServer` has ``base_url`` (ending in
``/v1``), ``app_id`` / ``workspace_id``, ``api_key``, ``events()``, ``stats()`` and
``decisions()``. With pytest, the plugin this package registers offers the same as the
``personalize_server`` fixture.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from .server import Definitions, PersonalizeServer

__all__ = ["personalize_server"]


@contextlib.contextmanager
def personalize_server(
    experiences: str | os.PathLike[str] | dict[str, Any] | Definitions | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    rate_limit: int | None = None,
    clock: Callable[[], float] | None = None,
) -> Iterator[PersonalizeServer]:
    """Run the local server on ``127.0.0.1`` and a free port for the ``with`` block.

    ``experiences`` is a definitions file path, a dict shaped like that file, or None for the
    embedded sample; ``db`` an SQLite file for the events (None: in memory); ``rate_limit``
    requests per minute (None: off); ``clock`` epoch seconds for schedules (default
    ``time.time``). The server and its threads are stopped when the block exits."""
    server = PersonalizeServer(
        experiences, host="127.0.0.1", port=0, db=db, rate_limit=rate_limit, clock=clock
    )
    with server:
        yield server
