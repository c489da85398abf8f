"""WebRTC signaling relay rules (PROTOCOL.md §6).

A ``signal`` frame is relayed only when: the room is a call room (``HUB_SIGNAL_ROOMS``, or the
``signal`` key of [[rooms]] tables: :mod:`hub.room_options`), the
sender is a presence member of it and holds the ``signal`` grant, ``data`` has one of the four
shapes below (field names of RTCSessionDescriptionInit / RTCIceCandidateInit), and ``to`` is a
presence member of the same room on any node. ``from`` is always set here, never taken from the
client. Signals are never stored.

Perfect negotiation roles: of two peers, the one whose session id sorts first (bytewise) is
*polite*; new arrivals send the offers.
"""

from __future__ import annotations

from typing import Any

from hubbub.hub.envelope import check_room
from hubbub.hub.errors import BadRequest, Forbidden
from hubbub.hub.hub import Hub
from hubbub.hub.session import Session

MAX_SDP = 64 * 1024
MAX_CANDIDATE = 4096


def validate_signal_data(data: Any) -> dict[str, Any]:
    """Return a clean copy of ``data`` holding only the known fields; raise BadRequest."""
    if not isinstance(data, dict):
        raise BadRequest("signal data must be an object")
    kind = data.get("kind")
    if kind in ("offer", "answer"):
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            raise BadRequest(f"{kind} needs an sdp string")
        if len(sdp.encode()) > MAX_SDP:
            raise BadRequest("sdp larger than 64 KiB")
        return {"kind": kind, "sdp": sdp}
    if kind == "candidate":
        cand = data.get("candidate", ...)
        if cand is None:
            return {"kind": "candidate", "candidate": None}
        if not isinstance(cand, dict) or not isinstance(cand.get("candidate"), str):
            raise BadRequest("candidate needs {candidate, sdpMid, sdpMLineIndex}")
        if len(cand["candidate"]) > MAX_CANDIDATE:
            raise BadRequest("candidate too long")
        mid, index, ufrag = (
            cand.get("sdpMid"), cand.get("sdpMLineIndex"), cand.get("usernameFragment")
        )  # fmt: skip
        if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
            raise BadRequest("sdpMid must be a string")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index < 1024):  # fmt: skip
            raise BadRequest("sdpMLineIndex must be a small integer")
        if ufrag is not None and (not isinstance(ufrag, str) or len(ufrag) > 256):
            raise BadRequest("usernameFragment must be a string")
        return {"kind": "candidate", "candidate": {
            "candidate": cand["candidate"], "sdpMid": mid, "sdpMLineIndex": index,
            "usernameFragment": ufrag}}  # fmt: skip
    if kind == "bye":
        return {"kind": "bye"}
    raise BadRequest("signal kind must be offer, answer, candidate or bye")


async def relay_signal(hub: Hub, session: Session, frame: dict[str, Any]) -> None:
    """Check and relay one client ``signal`` frame. Raises BadRequest, Forbidden, NotFound,
    Unavailable."""
    room = check_room(frame.get("room"))
    data = validate_signal_data(frame.get("data"))
    if not hub.is_call_room(room):
        source = "[[rooms]] signal" if hub.room_rules.signal_from_tables else "HUB_SIGNAL_ROOMS"
        raise Forbidden(f"{room} is not a call room ({source})", details={"room": room})
    if not session.identity.can("signal", room):
        raise Forbidden(f"no signal grant for room {room}", details={"room": room})
    out = {
        "type": "signal",
        "room": room,
        "from": {"user": session.identity.sub, "session": session.id},
        "data": data,
    }
    await hub.direct(session, room, frame.get("to"), out)
