"""Signaling test fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.signaling.wspeer import close_all


@pytest.fixture(autouse=True)
async def _close_clients(node_factory: Any) -> AsyncIterator[None]:
    """Set up after ``node_factory``, so torn down before it: clients close first and the
    nodes then stop at once instead of draining sessions over a second."""
    yield
    await close_all()
