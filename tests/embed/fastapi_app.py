"""A FastAPI application that embeds Hubbub the way the README shows: the hub mounted under
``/hub`` with no other wiring, and an endpoint that publishes in-process. Settings come from
the ``HUB_*`` environment. Served by tests/embed/test_servers.py under stock uvicorn and
hypercorn."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from hubbub import create_app

hub = create_app()
app = FastAPI()
app.mount("/hub", hub)


@app.post("/orders/{order}")
async def new_order(order: str) -> dict[str, Any]:
    """A backend endpoint that tells the room ``orders`` without an HTTP round trip."""
    return await hub.publish("orders", {"order": order}, event="order.created")
