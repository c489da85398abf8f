"""A Python WebRTC peer for call rooms (aiortc), and ``hubbub probe ROOM``.

The only module of Hubbub that imports aiortc. A :class:`Probe` connects to the hub's ``/v1/ws``
with the ``websockets`` client, joins a call room with presence (PROTOCOL.md §6) and then behaves
like any browser peer of ``static/call.js``:

* as a new arrival it offers to every member listed in the subscribe reply; members that join
  later offer to it (it answers);
* W3C perfect negotiation with roles from the session ids (:mod:`hubbub.probe.negotiation`);
  aiortc cannot roll a local offer back, so the polite probe replaces its peer connection instead
  (only ever needed before media flows);
* every peer connection carries a negotiated data channel ``hubbub`` (id 0, like call.js), whose
  messages it echoes back;
* it sends the media it receives straight back (echo) and counts the audio and video frames it
  receives; ``record`` writes those counts to a ``.json`` file (rewritten several times a second)
  or, for any other extension, the received media through aiortc's ``MediaRecorder``.

It is meant for tests, monitoring and as a skeleton for server-side bots. It trusts nothing from
the hub beyond the protocol: unknown frames are ignored, errors are logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import websockets
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRecorder, MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from hubbub.probe.negotiation import (
    Negotiator,
    candidate_line,
    is_loopback_candidate,
    is_polite,
    same_certificate,
)

log = logging.getLogger("hubbub.peer")

CHANNEL_LABEL = "hubbub"  # negotiated data channel id 0 on every peer connection (call.js too)
CHANNEL_ID = 0
LEAVE_GRACE = 30.0  # seconds a connected peer is kept after its session left


def restrict_ice_hosts(hosts: Iterable[str]) -> None:
    """Make aioice gather host candidates only on ``hosts`` (process-wide).

    aioice picks host addresses in ``aioice.ice.get_host_addresses`` (every interface address
    except 127.0.0.1); ``Connection.gather_candidates`` looks that name up at call time, so
    replacing it is enough. Used by tests to keep ICE on loopback."""
    import aioice.ice

    chosen = list(hosts)

    def addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [h for h in chosen if (use_ipv6 if ":" in h else use_ipv4)]

    aioice.ice.get_host_addresses = addresses


class HubRefused(Exception):
    """An ``error`` frame answering one of our requests."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class ProbeStats:
    """What the probe saw; written to ``--record x.json`` and printed at exit."""

    session: str | None = None
    peers: int = 0
    connected: int = 0  # peer connections currently "connected"
    ever_connected: int = 0
    channel_open: int = 0
    dc_messages: int = 0  # data-channel messages received (and echoed)
    video_frames: int = 0
    audio_frames: int = 0
    frame_size: list[int] | None = None
    offers: int = 0
    answers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RemotePeer:
    """One peer connection to one remote session. Signals are handled in order by a worker."""

    def __init__(self, probe: Probe, session: str, user: str | None) -> None:
        assert probe.session is not None
        self.probe = probe
        self.session = session
        self.user = user
        self.neg = Negotiator(polite=is_polite(probe.session, session))
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=512)
        self.closed = False
        self.left_at = 0.0  # its session left while media flowed: maybe a hub reconnect
        self._connected = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._new_tracks: list[Any] = []
        self.pc: Any = self._new_pc()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    # ---- peer connection --------------------------------------------------------------------
    def _new_pc(self) -> Any:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.probe.ice_servers
            if isinstance(s, dict) and s.get("urls")
        ]
        # iceServers=[] explicitly: with None aiortc falls back to a public Google STUN server.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        stats = self.probe.stats
        channel = pc.createDataChannel(CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID)

        @channel.on("open")
        def _open() -> None:
            stats.channel_open += 1

        @channel.on("message")
        def _message(message: Any) -> None:
            stats.dc_messages += 1
            if channel.readyState == "open":
                channel.send(message)  # echo

        @pc.on("track")
        def _track(track: Any) -> None:
            self._new_tracks.append(track)

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc is not self.pc:
                return
            state = pc.connectionState
            log.info("peer %s: connection %s", self.session, state)
            if state == "connected" and not self._connected:
                self._connected = True
                stats.connected += 1
                stats.ever_connected += 1
            elif state != "connected" and self._connected:
                self._connected = False
                stats.connected -= 1
            if self.left_at and state in ("failed", "closed", "disconnected"):
                self.probe.drop_peer(self.session)  # it left and its media stopped: gone
                return
            if state == "failed" and not self.closed:
                # aiortc has no restartIce(): start over with a fresh connection and offer.
                self.post({"kind": "_restart"})

        return pc

    @property
    def connected(self) -> bool:
        return self._connected

    def _take_tracks(self) -> None:
        """Handle tracks announced by the last setRemoteDescription: count, echo, record."""
        tracks, self._new_tracks = self._new_tracks, []
        relay = self.probe.relay
        for track in tracks:
            self._spawn(self._count(relay.subscribe(track, buffered=False), track.kind))
            if self.probe.echo:
                for t in self.pc.getTransceivers():
                    if t.receiver.track is track and t.sender.track is None:
                        t.sender.replaceTrack(relay.subscribe(track, buffered=False))
                        if t.direction == "recvonly":
                            t.direction = "sendrecv"
            self.probe.record_track(track, self)

    async def _count(self, track: Any, kind: str) -> None:
        stats = self.probe.stats
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if kind == "video":
                    stats.video_frames += 1
                    stats.frame_size = [int(frame.width), int(frame.height)]
                else:
                    stats.audio_frames += 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reset(self) -> None:
        old = self.pc
        self.pc = self._new_pc()
        self._new_tracks = []
        if self._connected:
            self._connected = False
            self.probe.stats.connected -= 1
        self.neg.making_offer = False
        await old.close()

    # ---- signaling --------------------------------------------------------------------------
    def post(self, data: dict[str, Any]) -> None:
        """Queue a signal (or an internal ``_offer``/``_restart``) for the worker."""
        try:
            self.inbox.put_nowait(data)
        except asyncio.QueueFull:
            log.warning("peer %s: too many queued signals; dropping one", self.session)

    async def _work(self) -> None:
        while not self.closed:
            data = await self.inbox.get()
            try:
                await self._handle(data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("peer %s: %s failed: %r", self.session, data.get("kind"), exc)

    async def _offer(self) -> None:
        pc = self.pc
        if not pc.getTransceivers():
            pc.addTransceiver("audio", direction="sendrecv")
            pc.addTransceiver("video", direction="sendrecv")
        self.neg.making_offer = True
        try:
            await pc.setLocalDescription(await pc.createOffer())
        finally:
            self.neg.making_offer = False
        self.probe.stats.offers += 1
        self.probe.signal(self.session, {"kind": "offer", "sdp": pc.localDescription.sdp})

    async def _handle(self, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        if kind == "_offer":
            await self._offer()
        elif kind == "_restart":
            await self._reset()
            await self._offer()
        elif kind in ("offer", "answer"):
            pc = self.pc
            if kind == "answer" and pc.signalingState != "have-local-offer":
                return  # a stale answer (we replaced the connection meanwhile)
            action = self.neg.on_description(kind, pc.signalingState)
            if action == "ignore":
                return
            if action == "rollback" or (kind == "offer" and self._needs_fresh_pc(data["sdp"])):
                await self._reset()  # aiortc cannot roll back: a fresh connection instead
            pc = self.pc
            await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=kind))
            self._take_tracks()
            if kind == "offer":
                await pc.setLocalDescription(await pc.createAnswer())
                self.probe.stats.answers += 1
                self.probe.signal(self.session, {"kind": "answer", "sdp": pc.localDescription.sdp})
        elif kind == "candidate":
            await self._candidate(data.get("candidate"))
        elif kind == "bye":
            self.probe.drop_peer(self.session)

    def _needs_fresh_pc(self, sdp: str) -> bool:
        """An offer on a failed connection, or from a new connection of the remote (another
        DTLS fingerprint than the one we know), is answered on a fresh connection."""
        pc = self.pc
        if pc.connectionState in ("failed", "closed"):
            return True
        remote = pc.remoteDescription
        return remote is not None and same_certificate(remote.sdp, sdp) is False

    async def _candidate(self, cand: Any) -> None:
        try:
            if cand is None:
                await self.pc.addIceCandidate(None)
                return
            line = candidate_line(cand)
            bits = line.split()
            if len(bits) < 8 or bits[2].lower() != "udp":
                return  # aioice speaks UDP only
            if not is_loopback_candidate(cand, self.probe.ice_hosts):
                return
            candidate = candidate_from_sdp(line)
            candidate.sdpMid = cand.get("sdpMid")
            candidate.sdpMLineIndex = cand.get("sdpMLineIndex")
            await self.pc.addIceCandidate(candidate)
        except Exception:
            if not self.neg.ignore_offer:
                raise

    async def close(self) -> None:
        if self.probe.recording is self:
            await self.probe.stop_recording()  # finalise the file while the tracks still live
        self.closed = True
        self.worker.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._connected:
            self._connected = False
            self.probe.stats.connected -= 1
        with contextlib.suppress(Exception):
            await self.pc.close()


class Probe:
    """Join ``room`` through the hub at ``url`` and answer, echo and count (module docstring).

    ``await probe.run(duration)`` runs until ``duration`` seconds passed (0: until
    :meth:`stop`), reconnecting with backoff after closes 4000-4499 and network errors; it
    returns 0, or 1 when the hub refused the probe for good (4500-4999, or the subscribe was
    refused)."""

    def __init__(
        self,
        url: str,
        room: str,
        token: str | None = None,
        *,
        ice_hosts: Iterable[str] = (),
        record: str | None = None,
        echo: bool = True,
    ) -> None:
        self.url = url
        self.room = room
        self.token = token
        self.ice_hosts = tuple(ice_hosts)
        self.record = record
        self.echo = echo
        self.stats = ProbeStats()
        self.relay = MediaRelay()
        self.session: str | None = None
        self.ice_servers: list[dict[str, Any]] = []
        self.peers: dict[str, RemotePeer] = {}
        self.error: HubRefused | None = None
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._stopping = asyncio.Event()
        self._recorder: Any = None
        self._recorder_started = False
        self._recorder_task: asyncio.Task[None] | None = None
        self._recording: RemotePeer | None = None

    # ---- life cycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Hang up: ``bye`` to every peer, then close the hub connection; ``run`` returns."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            for session in list(self.peers):
                self._send({"type": "signal", "room": self.room, "to": session,
                            "data": {"kind": "bye"}})  # fmt: skip
            asyncio.get_running_loop().create_task(self._close_soon(ws))

    @staticmethod
    async def _close_soon(ws: ClientConnection) -> None:
        await asyncio.sleep(0.05)  # let the byes go out first (writes are tasks)
        await ws.close()

    async def run(self, duration: float = 0.0) -> int:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(duration, self.stop) if duration > 0 else None
        writer = loop.create_task(self._write_stats()) if self._json_record else None
        attempt = 0
        status = 0
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                code = await self._connect_once()
                await self._drop_all()
                if self._stopping.is_set():
                    break
                if 4500 <= code <= 4999 or self.error is not None:
                    log.error("hub refused the probe (close %s, %s)", code, self.error)
                    status = 1
                    break
                if time.monotonic() - started > 10:
                    attempt = 0
                delay = random.uniform(0, min(10.0, 0.25 * 2**attempt))
                attempt += 1
                log.info("connection closed (%s); reconnecting in %.2f s", code, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            if timer is not None:
                timer.cancel()
            await self.stop_recording()
            await self._drop_all()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                self._dump_stats()
        return status

    async def wait_for(self, predicate: Callable[[ProbeStats], bool], within: float) -> bool:
        """Poll ``predicate(stats)`` until true or ``within`` seconds passed (tests, scripts)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if predicate(self.stats):
                return True
            await asyncio.sleep(0.05)
        return predicate(self.stats)

    # ---- the hub connection ----------------------------------------------------------------
    async def _connect_once(self) -> int:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async with ws_connect(
                self.url, additional_headers=headers, compression=None, max_size=2**20,
                open_timeout=10, ping_interval=None,
            ) as ws:  # fmt: skip
                self._ws = ws
                try:
                    return await self._serve(ws)
                finally:
                    self._ws = None
                    for fut in self._pending.values():
                        if not fut.done():
                            fut.set_exception(ConnectionError("connection lost"))
                    self._pending.clear()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else 1006
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            log.warning("cannot reach the hub at %s: %s", self.url, exc)
            return 1006

    async def _serve(self, ws: ClientConnection) -> int:
        first = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if first.get("type") != "welcome":
            log.error("expected welcome, got %s", str(first.get("type"))[:40])
            return 4500
        self.session = first["session"]
        self.stats.session = self.session
        self.ice_servers = list(first.get("ice_servers") or [])
        log.info("welcome: session %s (user %s)", self.session, first.get("user"))
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            result = await self.request({"type": "subscribe", "room": self.room, "presence": True})
        except HubRefused as exc:
            self.error = exc
            reader.cancel()
            return 4500
        except ConnectionError:
            return await reader
        for m in result.get("presence") or []:
            other = m.get("session")
            if isinstance(other, str) and other != self.session and other not in self.peers:
                self._add_peer(other, m.get("user")).post({"kind": "_offer"})  # new arrival
        return await reader

    async def _read(self, ws: ClientConnection) -> int:
        try:
            async for text in ws:
                try:
                    frame = json.loads(text)
                except ValueError:
                    continue
                if isinstance(frame, dict):
                    self._on_frame(frame)
        except websockets.ConnectionClosed:
            pass
        rcvd = ws.close_code
        return rcvd if rcvd is not None else 1006

    def _send(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]] | None:
        ws = self._ws
        if ws is None:
            return None
        fid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[fid] = fut
        text = json.dumps({**frame, "id": fid})
        asyncio.get_running_loop().create_task(self._write(ws, text))
        return fut

    @staticmethod
    async def _write(ws: ClientConnection, text: str) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(text)

    async def request(self, frame: dict[str, Any], within: float = 15) -> dict[str, Any]:
        """Send a frame with an id; return ``reply.result`` or raise HubRefused."""
        fut = self._send(frame)
        if fut is None:
            raise ConnectionError("not connected")
        return await asyncio.wait_for(fut, within)

    def signal(self, to: str, data: dict[str, Any]) -> None:
        """Send a ``signal`` frame; a refusal (e.g. ``not_found`` after a leave) is logged."""
        fut = self._send({"type": "signal", "room": self.room, "to": to, "data": data})
        if fut is not None:
            fut.add_done_callback(self._log_refusal)

    @staticmethod
    def _log_refusal(fut: asyncio.Future[dict[str, Any]]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.info("signal refused: %s", fut.exception())

    def _on_frame(self, f: dict[str, Any]) -> None:
        kind = f.get("type")
        if kind in ("reply", "error"):
            fut = self._pending.pop(f["id"], None) if isinstance(f.get("id"), int) else None
            if fut is None:
                if kind == "error":
                    log.warning("hub error: %s %s", f.get("code"), f.get("message"))
            elif not fut.done():
                if kind == "reply":
                    fut.set_result(f.get("result") or {})
                else:
                    fut.set_exception(HubRefused(str(f.get("code")), str(f.get("message"))))
        elif kind == "ping" and self._ws is not None:
            asyncio.get_running_loop().create_task(self._write(self._ws, '{"type":"pong"}'))
        elif kind == "join" and f.get("room") == self.room:
            # Nothing to do yet: the new arrival offers, and its offer creates the connection
            # (or rebinds one we have, when it is a known peer back with a new session id).
            log.info("%s joined (session %s)", f.get("user"), f.get("session"))
        elif kind == "leave" and f.get("room") == self.room:
            self._left(str(f.get("session")))
        elif kind == "signal" and f.get("room") == self.room:
            sender = f.get("from") or {}
            data = f.get("data")
            other = sender.get("session") if isinstance(sender, dict) else None
            if not isinstance(other, str) or not isinstance(data, dict):
                return
            peer = self.peers.get(other)
            if peer is None and data.get("kind") == "offer":
                peer = self._rebind(other, str(data.get("sdp") or ""))
            if peer is None and data.get("kind") == "offer":
                peer = self._add_peer(other, sender.get("user"))
            if peer is not None:
                peer.post(data)
        elif kind == "ice_servers" and isinstance(f.get("ice_servers"), list):
            self.ice_servers = f["ice_servers"]  # used by the next peer connections
        elif kind == "disconnect":
            log.info("hub disconnects: %s %s", f.get("code"), f.get("reason"))

    # ---- peers ----------------------------------------------------------------------------
    def _add_peer(self, session: str, user: Any) -> RemotePeer:
        peer = RemotePeer(self, session, user if isinstance(user, str) else None)
        self.peers[session] = peer
        self.stats.peers = len(self.peers)
        return peer

    def _left(self, session: str) -> None:
        """A member left. A connection still carrying media is kept for LEAVE_GRACE seconds:
        the remote may only have lost its hub connection and will re-offer from a new session
        (docs/webrtc.md "Failures and reconnection")."""
        peer = self.peers.get(session)
        if peer is None:
            return
        if not peer.connected:
            self.drop_peer(session)
            return
        peer.left_at = time.monotonic()

        def expire() -> None:
            if peer.left_at and self.peers.get(peer.session) is peer:
                self.drop_peer(peer.session)

        asyncio.get_running_loop().call_later(LEAVE_GRACE, expire)

    def _rebind(self, session: str, sdp: str) -> RemotePeer | None:
        """An offer from an unknown session whose DTLS fingerprint is that of one of our
        connections: the remote reconnected to the hub. Move the connection to its new id."""
        for old, peer in list(self.peers.items()):
            remote = peer.pc.remoteDescription
            if remote is not None and same_certificate(remote.sdp, sdp):
                log.info("peer %s is now %s", old, session)
                del self.peers[old]
                peer.session = session
                peer.left_at = 0.0
                assert self.session is not None
                peer.neg.polite = is_polite(self.session, session)
                self.peers[session] = peer
                return peer
        return None

    def drop_peer(self, session: str) -> None:
        peer = self.peers.pop(session, None)
        self.stats.peers = len(self.peers)
        if peer is not None:
            asyncio.get_running_loop().create_task(peer.close())

    async def _drop_all(self) -> None:
        peers = list(self.peers.values())
        self.peers.clear()
        self.stats.peers = 0
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)

    # ---- recording ----------------------------------------------------------------------------
    @property
    def _json_record(self) -> bool:
        return bool(self.record) and str(self.record).endswith(".json")

    def record_track(self, track: Any, peer: RemotePeer) -> None:
        """Record the media of the first peer that sends video, when ``record`` names a media
        file: its audio and video tracks, from its first video track until it goes away (or the
        probe stops), when the file is finalised."""
        if not self.record or self._json_record or self._recorder_started:
            return
        if self._recorder is None:
            self._recorder = MediaRecorder(self.record)
        self._recorder.addTrack(self.relay.subscribe(track, buffered=False))
        if track.kind == "video":
            self._recorder_started = True
            self._recording = peer
            self._recorder_task = asyncio.get_running_loop().create_task(self._recorder.start())

    @property
    def recording(self) -> RemotePeer | None:
        """The peer whose media is being recorded, if any."""
        return self._recording

    async def stop_recording(self) -> None:
        """Finalise the media file (idempotent)."""
        recorder, self._recorder = self._recorder, None
        self._recording = None
        if recorder is None or not self._recorder_started:
            return
        try:
            if self._recorder_task is not None:
                await self._recorder_task
            await recorder.stop()
        except Exception as exc:
            # aiortc's MediaRecorder.stop() flushes the encoders into the muxer and leaves the
            # container open when that raises (e.g. EINVAL for a non-monotonic timestamp after
            # a renegotiation): close it anyway so the file gets its index and stays playable.
            log.warning("recording to %s: flushing failed (%s); closing the file", self.record, exc)
            container = getattr(recorder, "_MediaRecorder__container", None)
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()

    def _dump_stats(self) -> None:
        if not self.record:
            return
        tmp = f"{self.record}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.stats.as_dict(), fh)
        os.replace(tmp, self.record)

    async def _write_stats(self) -> None:
        while True:
            self._dump_stats()
            await asyncio.sleep(0.2)


def run_probe(args: argparse.Namespace) -> int:
    """``hubbub probe ROOM``: run a :class:`Probe` until ``--duration`` passes or SIGINT /
    SIGTERM, print the final stats as one JSON line on stdout, return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    token = args.token or os.environ.get("HUBBUB_TOKEN") or None
    hosts = tuple(args.ice_host or ())
    if hosts:
        restrict_ice_hosts(hosts)
    probe = Probe(args.url, args.room, token, ice_hosts=hosts, record=args.record)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, probe.stop)
        return await probe.run(float(args.duration or 0))

    try:
        status = asyncio.run(main())
    except KeyboardInterrupt:
        status = 0
    print(json.dumps(probe.stats.as_dict()), flush=True)
    return status
