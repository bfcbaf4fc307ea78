"""pytest plugin (registered through the ``pytest11`` entry point): the local Personalize server
as fixtures.

- ``personalize_server``: a server with the embedded sample experiences, or with the definitions
  given by the ``personalize_experiences`` marker (a dict or a file path)::

      @pytest.mark.personalize_experiences("tests/experiences.json")
      def test_checkout(personalize_server):
          client = MoEngagePersonalize(personalize_server.app_id,
                                       api_key=personalize_server.api_key,
                                       base_url=personalize_server.base_url)

- ``personalize_server_factory``: call it (same arguments as
  :func:`moengage_personalize.testing.personalize_server`) to start more servers in one test.

Every server is stopped when its test ends. The server module is imported only when a fixture
is used, so loading the plugin costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .server import PersonalizeServer

__all__ = ["personalize_server", "personalize_server_factory"]

MARKER = "personalize_experiences"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``personalize_experiences`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(experiences): definitions (a dict or a file path) for the "
        "personalize_server fixture",
    )


@pytest.fixture
def personalize_server_factory() -> Iterator[Callable[..., PersonalizeServer]]:
    """Start local Personalize servers on free ports; all stopped at the end of the test."""
    from .testing import personalize_server  # noqa: PLC0415 - loaded only when used

    with contextlib.ExitStack() as stack:

        def start(experiences: Any = None, **options: Any) -> PersonalizeServer:
            return stack.enter_context(personalize_server(experiences, **options))

        yield start


@pytest.fixture
def personalize_server(
    request: pytest.FixtureRequest,
    personalize_server_factory: Callable[..., PersonalizeServer],
) -> PersonalizeServer:
    """A running local Personalize server (``base_url``, ``app_id``, ``api_key``, ``events()``)."""
    marker = request.node.get_closest_marker(MARKER)
    experiences = None
    if marker is not None:
        experiences = marker.args[0] if marker.args else marker.kwargs.get("experiences")
    return personalize_server_factory(experiences)
