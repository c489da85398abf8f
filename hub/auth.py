"""Identity, JWT verification, API keys and grants (PROTOCOL.md §2).

Rules enforced here, for every transport alike:

* The accepted algorithms come from settings, never from the token. HS* tokens are checked with
  the shared secret only; RS*/PS*/ES*/EdDSA with the configured public key or JWKS only, so a
  public key can never be used as an HMAC secret (key confusion). ``kid`` only selects among
  configured JWKS keys; ``jku``/``jwk``/``x5u`` are ignored.
* ``sub`` and ``exp`` are required; ``exp`` further than ``jwt_max_ttl`` ahead is refused;
  ``aud``/``iss`` are checked when configured; ``nbf`` is honoured.
* A token of a revoked user (:mod:`hub.revocation`: ``iat`` at or before the revocation, or no
  ``iat``) is refused with the reason ``revoked``, checked in a local table (no broker call).
* Every refusal raises the same :class:`~hub.errors.Unauthorized` (no reason oracle); the reason is
  kept on the exception's ``details``-free ``reason`` attribute for metrics and logs only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from jwt import PyJWK

from hubbub.hub.errors import ConfigError, Unauthorized
from hubbub.hub.revocation import Revocations
from hubbub.hub.settings import GRANT_KINDS, Settings

log = logging.getLogger("hubbub.auth")

MAX_TOKEN_BYTES = 8192
_ROOM_TEXT = re.compile(r"[A-Za-z0-9_.:-]*")


def grant_matches(pattern: str, room: str) -> bool:
    """``*`` matches any run of room-name characters; a pattern opens a ``user:`` room only if
    the pattern itself starts with ``user:`` (PROTOCOL.md §2). A string with other characters
    is no room name and matches no glob.

    Linear in the lengths: patterns come from tokens, and a backtracking regex would let a
    pattern like ``*a*a*a*a*a*a*b`` stall the event loop on a long room name.
    """
    if room.startswith("user:") and not pattern.startswith("user:"):
        return False
    parts = pattern.split("*")
    if len(parts) == 1:
        return pattern == room
    if not _ROOM_TEXT.fullmatch(room):
        return False
    first, *middle, last = parts
    end = len(room) - len(last)
    if end < len(first) or not room.startswith(first) or not room.endswith(last):
        return False
    pos = len(first)
    for segment in middle:  # leftmost placement of each literal is optimal for plain stars
        found = room.find(segment, pos, end)
        if found < 0:
            return False
        pos = found + len(segment)
    return True


@dataclass(slots=True)
class Identity:
    """Who is on the other end. ``api_key`` identities may do everything."""

    sub: str
    grants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    name: str | None = None
    info: Any = None
    exp: float | None = None
    api_key: bool = False
    guest: bool = False
    scope: str = ""  # the credential, for idempotency scoping
    iat: Any = None  # a token's iat claim as given (revocation: hub.revocation)

    def can(self, kind: str, room: str) -> bool:
        """Whether this identity holds grant ``kind`` for ``room``."""
        if self.api_key:
            return True
        if kind == "subscribe" and room == f"user:{self.sub}":
            return True
        return any(grant_matches(p, room) for p in self.grants.get(kind, ()))

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"user": self.sub}
        if self.name is not None:
            out["name"] = self.name
        if self.info is not None:
            out["info"] = self.info
        return out

    def expires_in(self, now: float | None = None) -> float | None:
        if self.exp is None:
            return None
        return max(0.0, self.exp - (time.time() if now is None else now))


def _is_pem_key(text: str) -> bool:
    """Whether ``text`` is key material PyJWT can load (PEM public or private key, OpenSSH)."""
    from cryptography.hazmat.primitives import serialization

    data = text.encode("utf-8", "replace")
    try:
        serialization.load_pem_public_key(data)
        return True
    except Exception:
        pass
    try:
        serialization.load_pem_private_key(data, None)
        return True
    except Exception:
        pass
    try:  # PyJWT also takes OpenSSH public keys for RS*/ES*/EdDSA
        serialization.load_ssh_public_key(data.strip())
        return True
    except Exception:
        return False


@dataclass(frozen=True, slots=True)
class _JwksKey:
    """One key of the JWKS file with the ``alg`` and ``use`` members it was published with
    (``None`` when absent; PyJWK infers an algorithm when ``alg`` is absent, so it cannot tell)."""

    jwk: PyJWK
    alg: Any
    use: Any

    def key_for(self, alg: str) -> Any:
        """The key, for a token signed with ``alg``. RFC 7517 §4.2/§4.4: a key published with an
        ``alg`` serves that algorithm only, and one with a ``use`` serves signatures only when
        it is ``sig``; any other pairing is refused like any bad token."""
        if self.alg is not None and self.alg != alg:
            raise Unauthorized(reason="key_algorithm")
        if self.use is not None and self.use != "sig":
            raise Unauthorized(reason="key_use")
        return self.jwk.key


def _parse_hub_claim(claim: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(claim, dict):
        raise ValueError("hub claim must be an object")
    out: dict[str, tuple[str, ...]] = {k: () for k in GRANT_KINDS}
    for kind in GRANT_KINDS:
        patterns = claim.get(kind, [])
        if not isinstance(patterns, list) or not all(
            isinstance(p, str) and 0 < len(p) <= 256 for p in patterns
        ):
            raise ValueError(f"hub.{kind} must be a list of strings")
        out[kind] = tuple(patterns)
    return out


_REASONS: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "expired",
    jwt.ImmatureSignatureError: "not_yet_valid",
    jwt.InvalidAudienceError: "audience",
    jwt.InvalidIssuerError: "issuer",
    jwt.MissingRequiredClaimError: "missing_claim",
    jwt.InvalidSignatureError: "signature",
    jwt.DecodeError: "malformed",
    jwt.InvalidAlgorithmError: "algorithm",
}


class Authenticator:
    """Turns credentials (API key or JWT) into an :class:`Identity`. Built once per node."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._api_keys = [k.encode() for k in settings.api_keys]
        self.failures: Counter[str] = Counter()  # refusals by reason (metrics only)
        # Revoked users (kept in sync across the cluster by the hub): read on every token check.
        self.revocations = Revocations(settings.jwt_max_ttl)
        self._public_key: Any = None
        self._jwks: dict[str, _JwksKey] = {}
        self._jwks_list: list[_JwksKey] = []
        if settings.jwt_public_key:
            text = settings.jwt_public_key
            if "-----BEGIN" not in text:
                try:
                    text = Path(text).read_text()
                except OSError as exc:
                    raise ConfigError(f"HUB_JWT_PUBLIC_KEY={text!r}: {exc}") from None
            if not _is_pem_key(text):  # else every token would be refused, silently
                shown = settings.jwt_public_key[:64]
                raise ConfigError(f"HUB_JWT_PUBLIC_KEY={shown!r}: not a PEM key")
            self._public_key = text
        if settings.jwt_jwks_file:
            path = settings.jwt_jwks_file
            try:
                data = json.loads(Path(path).read_text())
                for raw in data.get("keys", []):
                    k = _JwksKey(PyJWK(raw), raw.get("alg"), raw.get("use"))
                    self._jwks_list.append(k)
                    if k.jwk.key_id:
                        self._jwks[k.jwk.key_id] = k
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"HUB_JWT_JWKS_FILE={path!r}: {exc}") from None

    # ---- API keys ---------------------------------------------------------------------------
    def api_key_identity(self, bearer: str) -> Identity | None:
        """The API-key identity when ``bearer`` equals a configured key (constant-time)."""
        raw = bearer.encode("utf-8", "surrogatepass")  # a lone surrogate is just a wrong key
        for i, key in enumerate(self._api_keys):
            if hmac.compare_digest(raw, key):
                scope = "key:" + hashlib.sha256(key).hexdigest()[:16]
                return Identity(sub=f"api-key-{i}", api_key=True, scope=scope)
        return None

    # ---- entry point --------------------------------------------------------------------------
    def authenticate(self, credential: str | None) -> Identity:
        """Identify the holder of ``credential`` (a bearer string), or a guest when anonymous
        access is on and no credential was given. Raises Unauthorized."""
        if not credential:
            if self.settings.anonymous:
                return self.guest()
            self.failures["missing"] += 1
            raise Unauthorized(reason="missing")
        ident = self.api_key_identity(credential)
        if ident is not None:
            return ident
        return self.verify_token(credential)

    def guest(self) -> Identity:
        """A guest: ``HUB_DEFAULT_GRANTS``, narrowed to the rooms of [[rooms]] tables with
        ``anonymous = true`` when only those tables let guests in (hub.room_options)."""
        from hubbub.hub.room_options import guest_grants

        sub = "guest-" + secrets.token_hex(4)
        return Identity(sub=sub, grants=guest_grants(self.settings), guest=True, scope=f"sub:{sub}")

    def verify_token(self, token: str) -> Identity:
        """Verify a client JWT. Raises Unauthorized (always the same message)."""
        try:
            return self._verify(token)
        except Unauthorized as exc:
            self.failures[exc.reason] += 1
            # The reason goes to the log, never to the client (one answer for every reason);
            # the transport that admitted the client logs it at info level, naming itself.
            log.debug("token refused: %s", exc.reason)
            raise
        except Exception as exc:  # every failure looks the same to the client
            reason = _REASONS.get(type(exc), "invalid")
            self.failures[reason] += 1
            log.debug("token refused: %s (%s)", reason, type(exc).__name__)
            raise Unauthorized(reason=reason) from None

    def _key_for(self, alg: str, header: dict[str, Any]) -> Any:
        if alg.startswith("HS"):
            if not self.settings.jwt_secret:
                raise Unauthorized(reason="algorithm")
            return self.settings.jwt_secret
        kid = header.get("kid")
        if self._jwks_list:
            if isinstance(kid, str) and kid in self._jwks:
                return self._jwks[kid].key_for(alg)
            if kid is None and len(self._jwks_list) == 1:
                return self._jwks_list[0].key_for(alg)
            if kid is not None and self._public_key is None:
                raise Unauthorized(reason="unknown_key")
        if self._public_key is not None:
            return self._public_key
        raise Unauthorized(reason="algorithm")

    def _verify(self, token: str) -> Identity:
        s = self.settings
        if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise Unauthorized(reason="malformed")
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in s.jwt_algorithms:
            raise Unauthorized(reason="algorithm")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ("jwt", "at+jwt")):
            raise Unauthorized(reason="token_type")
        key = self._key_for(alg, header)
        require = ["sub", "exp"]
        if s.jwt_audience:
            require.append("aud")
        if s.jwt_issuer:
            require.append("iss")
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=s.jwt_audience,
            issuer=s.jwt_issuer,
            options={"require": require, "verify_aud": bool(s.jwt_audience)},
        )
        sub, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(sub, str) or not 0 < len(sub) <= 256:
            raise Unauthorized(reason="claims")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise Unauthorized(reason="claims")
        if exp - time.time() > s.jwt_max_ttl:
            raise Unauthorized(reason="ttl")
        for purpose in ("typ", "token_type", "token_use"):
            if str(claims.get(purpose, "")).lower() in ("refresh", "refresh_token", "id"):
                raise Unauthorized(reason="token_type")
        if self.revocations.refuses(sub, claims.get("iat")):
            raise Unauthorized(reason="revoked")
        grants = _parse_hub_claim(claims["hub"]) if "hub" in claims else dict(s.default_grants)
        name = claims.get("name")
        if name is not None and not isinstance(name, str):
            raise Unauthorized(reason="claims")
        return Identity(
            sub=sub,
            grants=grants,
            name=name,
            info=claims.get("info"),
            exp=float(exp),
            scope=f"sub:{sub}",
            iat=claims.get("iat"),
        )


def mint_token(
    settings: Settings,
    sub: str,
    ttl: float = 3600.0,
    *,
    hub: dict[str, list[str]] | None = None,
    name: str | None = None,
    info: Any = None,
) -> tuple[str, int]:
    """Sign a client JWT with the configured HS secret. Returns (token, expires_at).

    Raises ConfigError when no HS secret and HS algorithm are configured, or when ``ttl`` (s)
    is not within (0, ``HUB_JWT_MAX_TTL``].
    """
    alg = next((a for a in settings.jwt_algorithms if a.startswith("HS")), None)
    if not settings.jwt_secret or alg is None:
        raise ConfigError("minting tokens needs HUB_JWT_SECRET and an HS* algorithm")
    if not 0 < ttl <= settings.jwt_max_ttl:
        # A token the hub would refuse (expired, or exp past HUB_JWT_MAX_TTL) helps nobody.
        raise ConfigError(
            f"the token's lifetime must be more than 0 and at most HUB_JWT_MAX_TTL "
            f"({settings.jwt_max_ttl:g} s); got {ttl:g} s"
        )
    exp = int(time.time() + ttl)
    claims: dict[str, Any] = {"sub": sub, "exp": exp, "iat": int(time.time())}
    if hub is not None:
        claims["hub"] = hub
    if name is not None:
        claims["name"] = name
    if info is not None:
        claims["info"] = info
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm=alg), exp
