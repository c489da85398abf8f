"""Real WebRTC calls through the hub (PROTOCOL.md §6): headless Debian Chromium with fake media
on ``/call`` (static/call.html + call.js) against ``hubbub probe`` (aiortc), and two Chromium
pages calling each other through two nodes on one Redis (one node while the Redis broker is not
there).

ICE stays on loopback: the probe gathers only 127.0.0.1 (``--ice-host``), the pages run with
``ice=loopback`` (call.js drops every other candidate, sent or received).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from playwright.async_api import async_playwright

from tests.browser.conftest import watch
from tests.conftest import CHROMIUM_ARGS, RedisProc, chromium_path, token
from tests.helpers import until

MEDIA_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PREFIX = "calltest:"
TURN = {"turn_urls": ("turn:127.0.0.1:9?transport=udp",), "turn_secret": "t" * 32, "turn_ttl": 2.0}
# true once a connection's configuration carries TURN credentials newer than the welcome's
FRESHER_TURN = """() => {
  const expiry = (list) => Math.max(0, ...(list || []).filter(s => s.username)
                                     .map(s => parseInt(s.username.split(':')[0], 10)));
  const first = expiry(window.hubbubCall.client.welcome.ice_servers);
  const peers = [...window.hubbubCall.peers.values()];
  return peers.length > 0 && peers.every(p => expiry(p.pc.getConfiguration().iceServers) > first);
}"""

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def media_browser() -> AsyncIterator[Any]:
    """Chromium with fake camera/microphone and loopback ICE, fresh profile."""
    exe = chromium_path()
    with tempfile.TemporaryDirectory(prefix="hubbub-chromium-") as profile:
        async with async_playwright() as pw:
            ctx = await pw.chromium.launch_persistent_context(
                profile, executable_path=exe, headless=True, args=CHROMIUM_ARGS + MEDIA_ARGS,
                viewport={"width": 1100, "height": 700},
            )  # fmt: skip
            try:
                yield ctx
            finally:
                await ctx.close()


def call_url(node: Any, room: str, sub: str, **claims: Any) -> str:
    return f"{node.url}/call?room={room}&autojoin=1&ice=loopback#token={token(sub, **claims)}"


async def call_stats(page: Any) -> dict[str, Any]:
    return await page.evaluate("() => window.hubbubCall ? window.hubbubCall.stats() : null")  # type: ignore[no-any-return]


async def joined(page: Any) -> bool:
    return await page.evaluate(  # type: ignore[no-any-return]
        "() => Boolean(window.hubbubCall && window.hubbubCall.sub && window.hubbubCall.sub.active)"
    )


async def connected_peers(page: Any) -> list[dict[str, Any]]:
    st = await call_stats(page)
    if not st:
        return []
    return [p for p in st["peers"] if p["connection"] == "connected" and p["channel"] == "open"]


async def remote_video_width(page: Any) -> int:
    return await page.evaluate(  # type: ignore[no-any-return]
        "() => Math.max(0, ...[...document.querySelectorAll('.tile:not(.me) video')]"
        ".map(v => v.videoWidth))"
    )


def start_probe(node: Any, room: str, record: Path, duration: float = 60) -> subprocess.Popen[str]:
    env = {**os.environ, "HUBBUB_TOKEN": token("probe", name="Probe")}
    return subprocess.Popen(
        [sys.executable, "-m", "hubbub.cli", "probe", room, "--url", node.ws_url,
         "--ice-host", "127.0.0.1", "--record", str(record), "--duration", str(duration)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def read_record(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    return {}


async def test_chromium_calls_the_probe(node: Any, media_browser: Any, tmp_path: Path) -> None:
    """The probe joins first; the page arrives and offers. ICE connects on loopback, the data
    channel round-trips through the probe's echo, and the page's fake camera frames arrive at
    the probe (which sends them back: the page shows them in the probe's tile)."""
    room = "call:probe"
    record = tmp_path / "probe.json"
    probe = start_probe(node, room, record)
    logs: list[str] = []
    try:
        await until(lambda: read_record(record).get("session"), 15, "probe joined")
        page = watch(await media_browser.new_page(), logs, "caller")
        await page.goto(call_url(node, room, "carol", name="Carol"))
        peers = await until(lambda: connected_peers(page), 20, "ICE + data channel")
        assert peers[0]["user"] == "probe"
        # polite = smaller session id, bytewise
        me = (await call_stats(page))["session"]
        assert peers[0]["polite"] == (me.encode() < peers[0]["session"].encode())

        await page.evaluate("() => window.hubbubCall.send('ping over the data channel')")
        echoed = await until(
            lambda: page.evaluate("() => window.hubbubCall.received.map(m => m.text)"), 10,
            "data-channel echo",
        )  # fmt: skip
        assert "ping over the data channel" in echoed

        stats = await until(
            lambda: (r := read_record(record)).get("video_frames", 0) >= 15 and r,
            20, "video frames at the probe",
        )  # fmt: skip
        assert stats["ever_connected"] == 1 and stats["dc_messages"] >= 1
        assert stats["frame_size"] and stats["frame_size"][0] > 0
        assert stats["offers"] == 0 and stats["answers"] >= 1  # the new arrival offered

        # The probe echoes the media back: the page's tile for the probe shows video.
        await until(lambda: remote_video_width(page), 15, "echoed video in the page")
        ARTIFACTS.mkdir(exist_ok=True)
        await asyncio.sleep(0.5)
        await page.screenshot(path=str(ARTIFACTS / "call.png"))
        # The page loses its hub connection: new session, the probe rebinds the same connection
        # (DTLS fingerprint) and the media keeps flowing.
        frames = read_record(record)["video_frames"]
        old = me
        await page.evaluate("() => window.hubbubCall.client.reconnect()")
        await until(
            lambda: page.evaluate(
                f"() => {{ const s = window.hubbubCall.stats(); return s.hub === 'connected'"
                f" && s.session !== '{old}' && s.peers.length === 1"
                " && s.peers[0].connection === 'connected' && s.peers[0].signaling === 'stable'; }"
            ),
            15, "page reconnected",
        )  # fmt: skip
        after = await until(
            lambda: (r := read_record(record))["answers"] >= 2 and r, 15,
            "the probe answered the re-offer",
        )  # fmt: skip
        assert after["ever_connected"] == 1 and after["peers"] == 1, after
        await until(
            lambda: read_record(record)["video_frames"] > frames + 15, 15,
            "video still flowing",
        )  # fmt: skip
        # An ICE restart from the page: aiortc cannot restart ICE, so the probe ends up on a
        # fresh connection (new DTLS fingerprint) and the page follows it; media resumes.
        frames = read_record(record)["video_frames"]
        await page.evaluate("() => [...window.hubbubCall.peers.values()][0].restartIce('test')")
        await until(
            lambda: read_record(record)["video_frames"] > frames + 30, 20,
            "video after the ICE restart",
        )  # fmt: skip
        await until(
            lambda: page.evaluate(
                "() => { const s = window.hubbubCall.stats(); return s.peers.length === 1"
                " && s.peers[0].connection === 'connected' && s.peers[0].signaling === 'stable'; }"
            ),
            15, "page settled after the ICE restart",
        )  # fmt: skip
        # Signals were never stored: the room's history is empty.
        assert (await node.hub.broker.history(room, after=None, limit=10)).publications == []
    except BaseException:
        print("\n".join(logs[-60:]))
        raise
    finally:
        if probe.poll() is None:
            probe.send_signal(signal.SIGTERM)
        try:
            out, err = await asyncio.to_thread(probe.communicate, timeout=15)
        except subprocess.TimeoutExpired:
            probe.kill()
            out, err = probe.communicate()
        if probe.returncode != 0 or os.environ.get("HUBBUB_DEBUG"):
            print(err[-6000:])
    assert probe.returncode == 0, err[-2000:]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["video_frames"] >= 15


async def two_nodes(node_factory: Any, redis_url: str | None, **kw: Any) -> tuple[Any, Any]:
    if redis_url is None:
        n = await node_factory(**kw)
        return n, n
    a = await node_factory(broker_url=redis_url, redis_prefix=PREFIX, **kw)
    b = await node_factory(broker_url=redis_url, redis_prefix=PREFIX, **kw)
    return a, b


async def test_two_pages_call_each_other(
    node_factory: Any, media_browser: Any, redis_proc: RedisProc
) -> None:
    """Two pages, each on its own node (one Redis), call each other; then one page's hub
    connection is dropped: it reconnects with a new session id and the media keeps flowing on
    the same peer connection (the other page rebinds it by DTLS fingerprint); then an ICE
    restart renegotiates without dropping the call; then that page's node is stopped and
    started again, and the call survives that too."""
    # TURN credentials valid for 2 s: the pages get ice_servers frames every second and apply
    # them to their connections. (Port 9 has no TURN server: allocations fail at once, and
    # ice=loopback drops relay candidates anyway.)
    node_a, node_b = await two_nodes(node_factory, redis_proc.url, **TURN)
    room = "call:pair"
    logs: list[str] = []
    a = watch(await media_browser.new_page(), logs, "A")
    b = watch(await media_browser.new_page(), logs, "B")
    try:
        await a.goto(call_url(node_a, room, "alice", name="Alice"))
        await until(lambda: joined(a), 10, "A joined")
        await b.goto(call_url(node_b, room, "bob", name="Bob"))
        pa = await until(lambda: connected_peers(a), 20, "A connected")
        pb = await until(lambda: connected_peers(b), 20, "B connected")
        sa, sb = (await call_stats(a))["session"], (await call_stats(b))["session"]
        assert pa[0]["session"] == sb and pb[0]["session"] == sa
        assert pa[0]["polite"] != pb[0]["polite"]
        await until(lambda: remote_video_width(a), 15, "video at A")
        await until(lambda: remote_video_width(b), 15, "video at B")
        await b.evaluate("() => window.hubbubCall.send('hello alice')")
        await until(
            lambda: a.evaluate("() => window.hubbubCall.received.some(m => m.text === 'hello alice')"),
            10, "data channel B -> A",
        )  # fmt: skip
        ARTIFACTS.mkdir(exist_ok=True)
        await a.screenshot(path=str(ARTIFACTS / "call-two.png"))
        await until(lambda: a.evaluate(FRESHER_TURN), 5, "pushed TURN credentials applied")

        # Hub connection lost: new session, same media.
        frames_before = await inbound_frames(a)
        await b.evaluate("() => window.hubbubCall.client.reconnect()")
        sb2 = await until(
            lambda: b.evaluate(
                f"() => {{ const s = window.hubbubCall.stats(); return s.hub === 'connected'"
                f" && s.session !== '{sb}' && s.session; }}"
            ),
            15, "B reconnected",
        )  # fmt: skip
        await until(
            lambda: a.evaluate(
                f"() => window.hubbubCall.stats().peers.some(p => p.session === '{sb2}'"
                " && p.connection === 'connected' && !p.left)"
            ),
            15, "A rebound the connection to B's new session",
        )  # fmt: skip
        st_a = await call_stats(a)
        assert len(st_a["peers"]) == 1, st_a
        await until(
            lambda: more_frames(a, frames_before + 10), 10, "video keeps flowing after reconnect"
        )
        await b.evaluate("() => window.hubbubCall.send('still here')")
        await until(
            lambda: a.evaluate("() => window.hubbubCall.received.some(m => m.text === 'still here')"),
            10, "data channel after reconnect",
        )  # fmt: skip
        # Signaling still works from the new session: an ICE restart renegotiates.
        await b.evaluate("() => [...window.hubbubCall.peers.values()][0].restartIce('test')")
        await until(
            lambda: b.evaluate(
                "() => { const p = window.hubbubCall.stats().peers[0];"
                " return p.restarts === 1 && p.signaling === 'stable' && p.connection === 'connected'; }"
            ),
            15, "ICE restart completed",
        )  # fmt: skip
        # Both lose the hub at once: each rebinds the other's kept connection to its new
        # session (same user), they re-offer (glare resolved by the new roles), media goes on.
        frames_before = await inbound_frames(a)
        old = {(await call_stats(p))["session"] for p in (a, b)}
        await asyncio.gather(
            *(p.evaluate("() => window.hubbubCall.client.reconnect()") for p in (a, b))
        )

        async def rebound(page: Any, other: Any) -> bool:
            me, them = await call_stats(page), await call_stats(other)
            return (
                me["hub"] == "connected" and me["session"] not in old
                and len(me["peers"]) == 1 and me["peers"][0]["session"] == them["session"]
                and me["peers"][0]["connection"] == "connected" and not me["peers"][0]["left"]
            )  # fmt: skip

        await until(lambda: rebound(a, b), 20, "A rebound after both reconnected")
        await until(lambda: rebound(b, a), 20, "B rebound after both reconnected")
        await until(lambda: more_frames(a, frames_before + 10), 10, "video after both")
        sb2 = (await call_stats(b))["session"]
        # B's node goes away for real (drain: close 4000) and comes back on the same port:
        # B reconnects to it, A rebinds once more, the call never drops.
        frames_before = await inbound_frames(a)
        port = node_b.port
        await node_b.stop()
        await node_factory(port=port, broker_url=redis_proc.url, redis_prefix=PREFIX)
        sb3 = await until(
            lambda: b.evaluate(
                f"() => {{ const s = window.hubbubCall.stats(); return s.hub === 'connected'"
                f" && s.session !== '{sb2}' && s.session; }}"
            ),
            20, "B back on the restarted node",
        )  # fmt: skip
        await until(
            lambda: a.evaluate(
                f"() => window.hubbubCall.stats().peers.some(p => p.session === '{sb3}'"
                " && p.connection === 'connected' && !p.left)"
            ),
            15, "A rebound to B's session on the restarted node",
        )  # fmt: skip
        assert len((await call_stats(a))["peers"]) == 1
        await until(lambda: more_frames(a, frames_before + 10), 10, "video after restart")
        # B vanishes without a bye: first its hub connection (A keeps the connection, media
        # still flows), then its peer connection (A drops B long before the 30 s grace).
        await b.evaluate("() => window.hubbubCall.client.close()")
        await until(
            lambda: a.evaluate("() => window.hubbubCall.stats().peers.some(p => p.left)"), 10,
            "A saw B leave",
        )  # fmt: skip
        assert (await call_stats(a))["peers"][0]["connection"] == "connected"
        await b.evaluate(
            "() => { for (const p of window.hubbubCall.peers.values()) p.pc.close(); }"
        )
        await until(lambda: has_n(peer_list(a), 0), 15, "A dropped the vanished peer")
        assert await a.evaluate("() => document.querySelectorAll('.tile').length") == 1
    except BaseException:
        print("\n".join(logs[-80:]))
        raise


async def inbound_frames(page: Any) -> int:
    return await page.evaluate(  # type: ignore[no-any-return]
        """async () => {
          let n = 0;
          for (const p of window.hubbubCall.peers.values()) {
            const report = await p.pc.getStats();
            report.forEach(r => { if (r.type === 'inbound-rtp' && r.kind === 'video')
                                    n += r.framesDecoded || 0; });
          }
          return n;
        }"""
    )


async def more_frames(page: Any, n: int) -> bool:
    return await inbound_frames(page) >= n


async def test_mesh_glare_mute_hang_up_and_room_full(
    node_factory: Any, media_browser: Any, tmp_path: Path
) -> None:
    """Three peers in a mesh (two pages, then the probe, which arrives last and so sends the
    offers) up to HUB_SIGNAL_MAX_PEERS=3; a fourth
    page gets room_full. Both pages renegotiate at once: perfect negotiation resolves the glare
    (the polite page rolls back). Mute keeps the call up; hang up removes the tile at once
    ("bye"), well before the leave grace period."""
    from hubbub.probe.peer import Probe, restrict_ice_hosts

    node = await node_factory(signal_max_peers=3)
    room = "call:mesh"
    logs: list[str] = []
    a = watch(await media_browser.new_page(), logs, "A")
    b = watch(await media_browser.new_page(), logs, "B")
    restrict_ice_hosts(["127.0.0.1"])
    recording = tmp_path / "mesh.mp4"  # the probe records the first video it receives
    probe = Probe(node.ws_url, room, token("bot"), ice_hosts=("127.0.0.1",), record=str(recording))
    task: asyncio.Task[int] | None = None
    try:
        await a.goto(call_url(node, room, "alice", name="Alice"))
        await until(lambda: joined(a), 10, "A joined")
        await b.goto(call_url(node, room, "bob", name="Bob"))
        await until(lambda: has_n(connected_peers(a), 1), 20, "A and B connected")
        # The probe arrives last: it offers to both pages (new arrivals offer).
        task = asyncio.create_task(probe.run())
        assert await probe.wait_for(lambda s: s.connected == 2 and s.video_frames > 10, 20)
        assert probe.stats.offers == 2 and probe.stats.answers == 0
        await until(lambda: has_n(connected_peers(a), 2), 20, "A meshed")
        await until(lambda: has_n(connected_peers(b), 2), 20, "B meshed")
        await a.evaluate("() => window.hubbubCall.send('hi bot')")
        assert await probe.wait_for(lambda s: s.dc_messages >= 1, 10)
        tiles = await a.evaluate("() => document.querySelectorAll('.tile').length")
        assert tiles == 3
        # The probe replaces its connection to A (what it does when ICE fails; aiortc has no
        # ICE restart): A sees an offer with a new DTLS fingerprint and starts over as well.
        sa = (await call_stats(a))["session"]
        probe.peers[sa].post({"kind": "_restart"})
        assert await probe.wait_for(lambda s: s.ever_connected == 3 and s.connected == 2, 20)
        await until(lambda: has_n(connected_peers(a), 2), 20, "A reconnected to the probe")
        assert len(await peer_list(a)) == 2
        await until(lambda: remote_video_width(a), 10, "video tiles")
        ARTIFACTS.mkdir(exist_ok=True)
        await a.screenshot(path=str(ARTIFACTS / "call-mesh.png"))

        full = watch(await media_browser.new_page(), logs, "D")
        await full.goto(call_url(node, room, "dora"))
        await until(lambda: full.evaluate("() => window.hubbubJoinError"), 10, "room_full")
        assert await full.evaluate("() => window.hubbubJoinError") == "room_full"
        assert "full" in (await full.inner_text("#notice"))
        await full.close()

        # Glare: both pages offer to each other at the same moment.
        sb = (await call_stats(b))["session"]
        renegotiate = "(to) => window.hubbubCall.peers.get(to).negotiate()"
        for _ in range(2):
            await asyncio.gather(a.evaluate(renegotiate, sb), b.evaluate(renegotiate, sa))
        polite, impolite = (a, b) if sa.encode() < sb.encode() else (b, a)
        other = sb if polite is a else sa

        async def settled(page: Any, to: str) -> Any:
            peers = (await call_stats(page))["peers"]
            p = next(x for x in peers if x["session"] == to)
            return p["signaling"] == "stable" and p["connection"] == "connected" and p

        p_pol = await until(lambda: settled(polite, other), 15, "glare resolved")
        p_imp = await until(
            lambda: settled(impolite, sb if impolite is a else sa), 15, "glare resolved"
        )
        assert p_pol["polite"] and not p_imp["polite"]
        assert p_pol["rollbacks"] + p_imp["ignored"] >= 1, (p_pol, p_imp)

        # Mute: the track is disabled, nothing is renegotiated, the call stays up.
        await a.click("#mic")
        assert await a.evaluate("() => window.hubbubCall.isMuted('audio')")
        assert await a.get_attribute("#mic", "aria-pressed") == "true"
        assert len(await connected_peers(a)) == 2

        # Hang up: "bye" removes B everywhere at once.
        await b.click("#hangup")
        await until(lambda: has_n(peer_list(a), 1), 5, "A dropped B")
        assert await probe.wait_for(lambda s: s.peers == 1, 5)
        assert await a.evaluate("() => document.querySelectorAll('.tile').length") == 2
    except BaseException:
        print("\n".join(logs[-80:]))
        raise
    finally:
        probe.stop()
        if task is not None:
            assert await asyncio.wait_for(task, 15) == 0
    with av.open(str(recording)) as container:  # a finalised, playable file with media in it
        assert sum(1 for packet in container.demux() if packet.size) > 10


async def peer_list(page: Any) -> list[dict[str, Any]]:
    st = await call_stats(page)
    return st["peers"] if st else []


async def has_n(items: Any, n: int) -> bool:
    return len(await items) == n


async def test_tight_publish_rate_still_connects(node_factory: Any, media_browser: Any) -> None:
    """Signals count against HUB_CLIENT_PUBLISH_RATE: with a budget far below a mesh's candidate
    trickle, call.js paces and resends refused signals, so the call still connects."""
    from hubbub.hub.settings import Rate

    node = await node_factory(client_publish_rate=Rate.parse("2/s:2"))
    logs: list[str] = []
    a = watch(await media_browser.new_page(), logs, "A")
    b = watch(await media_browser.new_page(), logs, "B")
    try:
        await a.goto(call_url(node, "call:slow", "alice"))
        await until(lambda: joined(a), 10, "A joined")
        await b.goto(call_url(node, "call:slow", "bob"))
        await until(lambda: connected_peers(a), 30, "A connected")
        await until(lambda: connected_peers(b), 30, "B connected")
        retries = sum([(await call_stats(p))["signalRetries"] for p in (a, b)])
        assert retries >= 1  # the hub did refuse some, and they were resent
    except BaseException:
        print("\n".join(logs[-60:]))
        raise
