"""The Autobahn fuzzing client against Hubbub's WebSocket stack (hardening case 22).

``kosoku`` runs the Autobahn TestSuite's case files (framing, fragmentation, pings, close codes,
UTF-8 validation, limits) with a native runner, so no Python 2 or container is needed. The cases
need an echo peer, which the hub's ``/v1/ws`` is not (every text frame must be a JSON protocol
frame), so the test mounts an echo route on the hub's own app and serves it exactly as a node is
served (:func:`tests.conftest.start_node`: uvicorn with :func:`transports.server.server_options`,
Hubbub's WebSocket protocol subclass, the message size limit, compression off).

Expected: every case passes, except

* 9.* cases whose messages exceed the limit (``HUB_MAX_MESSAGE_BYTES`` + 16 KiB): those must end
  with close code 1009 (message too big), the documented answer;
* 12.* and 13.* (permessage-deflate): compression is off by design (hardening case 17), so they are
  not run.
"""

from __future__ import annotations

import collections
from typing import Any

import kosoku
import pytest
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.conftest import make_settings, start_node

pytestmark = pytest.mark.timeout(300)


async def _echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                await ws.send_text(msg["text"])
            else:
                await ws.send_bytes(msg.get("bytes") or b"")
    except WebSocketDisconnect:
        return


def _with_echo(app: Any) -> Any:
    app.router.routes.insert(0, WebSocketRoute("/autobahn/echo", _echo))
    return app


async def test_autobahn_cases_pass_or_hit_the_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.conftest as conftest

    real = conftest.create_app
    monkeypatch.setattr(conftest, "create_app", lambda s, **kw: _with_echo(real(s, **kw)))
    node = await start_node(make_settings())
    try:
        try:
            results = await kosoku.run_fuzzingclient(
                f"ws://127.0.0.1:{node.port}/autobahn/echo",
                exclude_cases=["12.*", "13.*"],
                concurrency=4,
            )
        except kosoku.FailureError as exc:
            results = exc.results
    finally:
        await node.stop()

    assert len(results) > 250, "the Autobahn case files did not load"
    verdicts = collections.Counter((r.behavior.value, r.behavior_close.value) for r in results)
    limit = node.hub.settings.max_message_bytes + 16 * 1024
    unexpected = [
        (r.case_id, r.behavior.value, r.behavior_close.value, r.remote_close_code, r.result)
        for r in results
        if not r.passed and not (r.case_id.startswith("9.") and r.remote_close_code == 1009)
    ]
    assert not unexpected, f"{verdicts}: {unexpected}"
    # The limit cases are the big ones only: 9.1.1 (64 KiB) fits and must echo.
    small = [r.case_id for r in results if r.case_id in ("9.1.1", "9.2.1")]
    assert small and all(r.passed for r in results if r.case_id in small), limit
