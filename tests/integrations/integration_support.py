"""Constants and helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WAIT = 10.0  # every Future / await in these tests is bounded by this many seconds


def run(coro: Awaitable[T]) -> T:
    """Run ``coro`` on a fresh event loop (``asyncio.run``), bounded by WAIT seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=WAIT)

    return asyncio.run(bounded())


def customer_id_from_header(request: Any) -> str | None:
    """A ``customer_id`` resolver for the Django settings (by dotted path): the X-Customer-Id
    header (a test stand-in for the app's login)."""
    value = request.META.get("HTTP_X_CUSTOMER_ID")
    return value if isinstance(value, str) and value else None
