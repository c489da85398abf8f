"""Perfect-negotiation roles and decisions (PROTOCOL.md §6), without any WebRTC library.

W3C "perfect negotiation" (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example) makes
two peers converge whatever order their offers cross in. Each pair of peers needs one *polite*
peer (it yields on glare: rolls its own offer back and answers) and one *impolite* peer (it
ignores the colliding offer). Hubbub fixes the roles from the session ids the hub assigns, so no
extra message is needed: the peer whose ``session`` sorts first, bytewise, is polite. Session ids
are base64url (ASCII), so Python's ``str`` order is the byte order.

Who offers first: the new arrival. A peer that joins a call room learns the members from the
subscribe reply and offers to each of them; members learn of the arrival from ``join`` and wait
for its offer. Everything after the first exchange (tracks added, ICE restarts) may be offered by
either side; glare is then resolved by the roles above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def is_polite(own_session: str, remote_session: str) -> bool:
    """True when ``own_session`` sorts first (bytewise) and so is the polite peer."""
    return own_session.encode() < remote_session.encode()


@dataclass(slots=True)
class Negotiator:
    """The perfect-negotiation bookkeeping of one peer connection.

    The caller sets ``making_offer`` around createOffer/setLocalDescription and reports its
    signaling state; :meth:`on_description` says what to do with an incoming description.
    """

    polite: bool
    making_offer: bool = False
    ignore_offer: bool = False

    def on_description(self, kind: str, signaling_state: str) -> str:
        """For an incoming ``offer``/``answer`` return ``"ignore"`` (impolite side of a glare),
        ``"rollback"`` (polite side of a glare: drop the local offer, then accept) or
        ``"accept"``."""
        collision = kind == "offer" and (self.making_offer or signaling_state != "stable")
        self.ignore_offer = not self.polite and collision
        if self.ignore_offer:
            return "ignore"
        return "rollback" if collision else "accept"


def candidate_line(candidate: dict[str, Any]) -> str:
    """The ``candidate:…`` attribute of an RTCIceCandidateInit without its ``candidate:``
    prefix (what SDP parsers such as aiortc's ``candidate_from_sdp`` take)."""
    text = str(candidate.get("candidate") or "")
    return text.split(":", 1)[1] if text.startswith("candidate:") else text


def is_loopback_candidate(candidate: dict[str, Any] | None, hosts: tuple[str, ...]) -> bool:
    """True when an RTCIceCandidateInit's connection address is one of ``hosts`` (or when
    ``hosts`` is empty, or for end-of-candidates)."""
    if candidate is None or not hosts:
        return True
    bits = candidate_line(candidate).split()
    return len(bits) >= 5 and bits[4] in hosts


def sdp_fingerprints(sdp: str) -> set[str]:
    """The ``a=fingerprint`` values of an SDP (``"sha-256 ab:cd:…"``, lower case). They name
    the DTLS certificate of one RTCPeerConnection for its whole life. An SDP may list several
    (aiortc: sha-256, sha-384, sha-512) and browsers re-order them, so compare them as sets."""
    out: set[str] = set()
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            out.add(" ".join(line[len("a=fingerprint:") :].split()).lower())
    return out


def same_certificate(sdp_a: str, sdp_b: str) -> bool | None:
    """True: both SDPs come from the same certificate (one shared fingerprint), False: from
    different ones; None: one of them has no fingerprint. An offer from an unknown session id
    with a known certificate comes from a connection we already have (the remote reconnected
    to the hub); a known session with another certificate has replaced its connection."""
    a, b = sdp_fingerprints(sdp_a), sdp_fingerprints(sdp_b)
    if not a or not b:
        return None
    return bool(a & b)
