"""Auth (PROTOCOL.md §2, docs/hardening.md "Auth"): JWT verification, API keys, grants, dev mode.

Every refused credential must raise the very same Unauthorized (no reason oracle).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hubbub.hub.auth import Authenticator, Identity, grant_matches, mint_token
from hubbub.hub.errors import ConfigError, Unauthorized
from hubbub.hub.settings import GRANT_KINDS, Settings

SECRET = "auth-test-secret-" + "0123456789abcdef" * 4
OTHER_SECRET = "another-secret-" + "0123456789abcdef" * 4


# ---- keys and helpers ----------------------------------------------------------------------------


@dataclass
class Keys:
    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: str
    rsa_other: rsa.RSAPrivateKey
    ec_private: ec.EllipticCurvePrivateKey
    ec_public_pem: str
    ed_private: ed25519.Ed25519PrivateKey
    ed_public_pem: str


def _pem(public: Any) -> str:
    return str(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    )


@pytest.fixture(scope="module")
def keys() -> Keys:
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ed_private = ed25519.Ed25519PrivateKey.generate()
    return Keys(
        rsa_private=rsa_private,
        rsa_public_pem=_pem(rsa_private.public_key()),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_private=ec_private,
        ec_public_pem=_pem(ec_private.public_key()),
        ed_private=ed_private,
        ed_public_pem=_pem(ed_private.public_key()),
    )


def settings(**kw: Any) -> Settings:
    s = Settings(**kw)
    s.validate()
    return s


def hs_auth(**kw: Any) -> Authenticator:
    base: dict[str, Any] = {"jwt_secret": SECRET, "jwt_algorithms": ("HS256",)}
    base.update(kw)
    return Authenticator(settings(**base))


def claims(sub: str = "alice", ttl: float = 600, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time() + ttl), **extra}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """Build a JWT by hand (PyJWT refuses to build the malicious ones)."""
    signing_input = (
        b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    ).encode()
    return signing_input.decode() + "." + b64(sign(signing_input))


def hs(
    token_claims: dict[str, Any], key: str | bytes = SECRET, alg: str = "HS256", **headers: Any
) -> str:
    return jwt.encode(token_claims, key, algorithm=alg, headers=headers or None)


def refused(authn: Authenticator, credential: str) -> Unauthorized:
    """Assert the credential is refused with the one generic Unauthorized."""
    with pytest.raises(Unauthorized) as info:
        authn.authenticate(credential)
    exc = info.value
    generic = Unauthorized()
    assert exc.message == generic.message
    assert str(exc) == str(generic)
    assert exc.details == {}
    assert exc.frame(7) == generic.frame(7)
    assert exc.body() == generic.body()
    assert exc.status == 401 and exc.close_code == 4501
    return exc


# ---- good tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_algorithms(alg: str) -> None:
    authn = hs_auth(jwt_algorithms=("HS256", "HS384", "HS512"))
    ident = authn.authenticate(hs(claims(name="Alice", info={"avatar": "a.png"}), alg=alg))
    assert ident.sub == "alice"
    assert ident.name == "Alice" and ident.info == {"avatar": "a.png"}
    assert ident.exp is not None and 0 < ident.expires_in() <= 600  # type: ignore[operator]
    assert not ident.api_key and not ident.guest
    assert ident.scope == "sub:alice"
    assert ident.public() == {"user": "alice", "name": "Alice", "info": {"avatar": "a.png"}}


def test_hs_algorithm_not_configured_is_refused() -> None:
    refused(hs_auth(jwt_algorithms=("HS256",)), hs(claims(), alg="HS512"))


def test_wrong_secret_refused() -> None:
    refused(hs_auth(), hs(claims(), key=OTHER_SECRET))


def test_rs256_with_pem_text_and_path(keys: Keys, tmp_path: Path) -> None:
    tok = jwt.encode(claims(), keys.rsa_private, algorithm="RS256")
    authn = Authenticator(settings(jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("RS256",)))
    assert authn.authenticate(tok).sub == "alice"
    path = tmp_path / "pub.pem"
    path.write_text(keys.rsa_public_pem)
    authn = Authenticator(settings(jwt_public_key=str(path), jwt_algorithms=("RS256",)))
    assert authn.authenticate(tok).sub == "alice"
    # Signed by another RSA key: refused.
    refused(authn, jwt.encode(claims(), keys.rsa_other, algorithm="RS256"))


def test_openssh_public_key_file(keys: Keys, tmp_path: Path) -> None:
    ssh = keys.rsa_private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = tmp_path / "id_rsa.pub"
    path.write_bytes(ssh + b"\n")
    authn = Authenticator(settings(jwt_public_key=str(path), jwt_algorithms=("RS256",)))
    assert (
        authn.authenticate(jwt.encode(claims(), keys.rsa_private, algorithm="RS256")).sub == "alice"
    )


def test_es256(keys: Keys) -> None:
    authn = Authenticator(settings(jwt_public_key=keys.ec_public_pem, jwt_algorithms=("ES256",)))
    assert (
        authn.authenticate(jwt.encode(claims(), keys.ec_private, algorithm="ES256")).sub == "alice"
    )
    refused(authn, jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"))


def test_eddsa(keys: Keys) -> None:
    authn = Authenticator(settings(jwt_public_key=keys.ed_public_pem, jwt_algorithms=("EdDSA",)))
    assert (
        authn.authenticate(jwt.encode(claims(), keys.ed_private, algorithm="EdDSA")).sub == "alice"
    )
    other = ed25519.Ed25519PrivateKey.generate()
    refused(authn, jwt.encode(claims(), other, algorithm="EdDSA"))


def _jwks_file(tmp_path: Path, entries: list[tuple[Any, str | None]]) -> str:
    out = []
    for public, kid in entries:
        if isinstance(public, rsa.RSAPublicKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        if kid is not None:
            jwk["kid"] = kid
        out.append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": out}))
    return str(path)


def test_jwks_kid_selection(keys: Keys, tmp_path: Path) -> None:
    path = _jwks_file(
        tmp_path,
        [(keys.rsa_private.public_key(), "r1"), (keys.rsa_other.public_key(), "r2"),
         (keys.ec_private.public_key(), "e1")],
    )  # fmt: skip
    authn = Authenticator(settings(jwt_jwks_file=path, jwt_algorithms=("RS256", "ES256")))
    t1 = jwt.encode(claims("a"), keys.rsa_private, algorithm="RS256", headers={"kid": "r1"})
    t2 = jwt.encode(claims("b"), keys.rsa_other, algorithm="RS256", headers={"kid": "r2"})
    t3 = jwt.encode(claims("c"), keys.ec_private, algorithm="ES256", headers={"kid": "e1"})
    assert [authn.authenticate(t).sub for t in (t1, t2, t3)] == ["a", "b", "c"]
    # The right key under the wrong kid, an unknown kid, no kid among several keys: refused.
    refused(authn, jwt.encode(claims(), keys.rsa_private, algorithm="RS256", headers={"kid": "r2"}))
    refused(authn, jwt.encode(claims(), keys.rsa_private, algorithm="RS256", headers={"kid": "zz"}))
    refused(authn, jwt.encode(claims(), keys.rsa_private, algorithm="RS256"))
    refused(
        authn,
        jwt.encode(
            claims(), keys.rsa_private, algorithm="RS256", headers={"kid": "../../etc/passwd"}
        ),
    )


def test_jwks_single_key_without_kid(keys: Keys, tmp_path: Path) -> None:
    path = _jwks_file(tmp_path, [(keys.ed_private.public_key(), None)])
    authn = Authenticator(settings(jwt_jwks_file=path, jwt_algorithms=("EdDSA",)))
    assert (
        authn.authenticate(jwt.encode(claims(), keys.ed_private, algorithm="EdDSA")).sub == "alice"
    )


def test_bad_key_configuration_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HUB_JWT_PUBLIC_KEY"):
        Authenticator(
            settings(jwt_public_key=str(tmp_path / "nope.pem"), jwt_algorithms=("RS256",))
        )
    for garbage in ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "-----BEGIN x"):
        with pytest.raises(ConfigError, match="HUB_JWT_PUBLIC_KEY"):
            Authenticator(settings(jwt_public_key=garbage, jwt_algorithms=("RS256",)))
    not_a_key = tmp_path / "notakey.pem"
    not_a_key.write_text("hello")
    with pytest.raises(ConfigError, match="HUB_JWT_PUBLIC_KEY"):
        Authenticator(settings(jwt_public_key=str(not_a_key), jwt_algorithms=("RS256",)))
    bad = tmp_path / "jwks.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="HUB_JWT_JWKS_FILE"):
        Authenticator(settings(jwt_jwks_file=str(bad), jwt_algorithms=("RS256",)))
    bad.write_text(json.dumps({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}))
    with pytest.raises(ConfigError, match="HUB_JWT_JWKS_FILE"):
        Authenticator(settings(jwt_jwks_file=str(bad), jwt_algorithms=("RS256",)))


# ---- refusals: one Unauthorized for all --------------------------------------------------------


def _none_token(alg: str) -> str:
    return raw_token({"alg": alg, "typ": "JWT"}, claims(), lambda _: b"")


def _signed_raw(payload: dict[str, Any]) -> str:
    """HS256 over a payload JSON that only Python emits (NaN, Infinity)."""
    return raw_token(
        {"alg": "HS256", "typ": "JWT"},
        payload,
        lambda m: hmac.new(SECRET.encode(), m, hashlib.sha256).digest(),
    )


def _tamper(tok: str) -> str:
    head, _, sig = tok.split(".")
    return head + "." + b64(json.dumps(claims("mallory")).encode()) + "." + sig


REFUSALS: dict[str, Callable[[], str]] = {
    "alg none": lambda: _none_token("none"),
    "alg NONE": lambda: _none_token("NONE"),
    "alg None with signature": lambda: raw_token(
        {"alg": "none"}, claims(), lambda m: hmac.new(SECRET.encode(), m, hashlib.sha256).digest()
    ),
    "alg missing": lambda: raw_token(
        {"typ": "JWT"}, claims(), lambda m: hmac.new(SECRET.encode(), m, hashlib.sha256).digest()
    ),
    "alg not a string": lambda: raw_token(
        {"alg": ["HS256"]},
        claims(),
        lambda m: hmac.new(SECRET.encode(), m, hashlib.sha256).digest(),
    ),
    "missing exp": lambda: hs({"sub": "alice"}),
    "exp 10**30": lambda: hs({"sub": "alice", "exp": 10**30}),
    "exp beyond max ttl": lambda: hs(claims(ttl=86400 + 120)),
    "exp as string": lambda: hs({"sub": "alice", "exp": str(int(time.time() + 600))}),
    "exp as bool": lambda: hs({"sub": "alice", "exp": True}),
    "exp null": lambda: hs({"sub": "alice", "exp": None}),
    "exp NaN": lambda: _signed_raw({"sub": "alice", "exp": float("nan")}),
    "exp Infinity": lambda: _signed_raw({"sub": "alice", "exp": float("inf")}),
    "nbf Infinity": lambda: _signed_raw(claims(nbf=float("inf"))),
    "expired": lambda: hs(claims(ttl=-30)),
    "future nbf": lambda: hs(claims(nbf=int(time.time() + 300))),
    "missing sub": lambda: hs({"exp": int(time.time() + 600)}),
    "empty sub": lambda: hs(claims(sub="")),
    "sub not a string": lambda: hs({"sub": 42, "exp": int(time.time() + 600)}),
    "sub too long": lambda: hs(claims(sub="a" * 257)),
    "name not a string": lambda: hs(claims(name={"x": 1})),
    "tampered payload": lambda: _tamper(hs(claims())),
    "truncated": lambda: hs(claims())[:-6],
    "signature removed": lambda: hs(claims()).rsplit(".", 1)[0] + ".",
    "three dots": lambda: hs(claims()) + ".x",
    "two parts": lambda: ".".join(hs(claims()).split(".")[:2]),
    "non-base64": lambda: "e$y!.%%%.***",
    "header not json": lambda: b64(b"not json") + "." + b64(b"{}") + ".sig",
    "header a json array": lambda: b64(b"[1]") + "." + b64(b"{}") + ".sig",
    "payload not json": lambda: b64(b'{"alg":"HS256"}') + "." + b64(b"[[[") + "." + b64(b"x"),
    "1 MB token": lambda: hs(claims(pad="x" * 1_000_000)),
    "8 KiB token": lambda: hs(claims(pad="x" * 8192)),
    "random words": lambda: "Bearer something",
    "lone surrogate": lambda: "\ud800",  # regression: UnicodeEncodeError escaped
    "lone surrogate in a JWT": lambda: hs(claims())[:-3] + "\udfff",
    "NUL": lambda: "\x00",
    "refresh typ claim": lambda: hs(claims(typ="refresh")),
    "token_type refresh_token": lambda: hs(claims(token_type="refresh_token")),
    "token_use id": lambda: hs(claims(token_use="id")),
    "header typ refresh": lambda: hs(claims(), typ="refresh+jwt"),
    "header typ rt+jwt": lambda: hs(claims(), typ="rt+jwt"),
    "header typ not a string": lambda: hs(claims(), typ=["JWT"]),
    "hub claim a string": lambda: hs(claims(hub="chat:*")),
    "hub claim null": lambda: hs(claims(hub=None)),
    "hub.subscribe a string": lambda: hs(claims(hub={"subscribe": "chat:*"})),
    "hub.publish with a number": lambda: hs(claims(hub={"publish": ["chat:*", 1]})),
    "hub.presence with an empty pattern": lambda: hs(claims(hub={"presence": [""]})),
    "hub.signal pattern too long": lambda: hs(claims(hub={"signal": ["x" * 257]})),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_tokens_look_the_same(case: str) -> None:
    authn = hs_auth(jwt_algorithms=("HS256", "HS384", "HS512"))
    refused(authn, REFUSALS[case]())


def test_refusal_does_not_chain_the_reason() -> None:
    exc = refused(hs_auth(), hs(claims(ttl=-30)))
    assert exc.__cause__ is None and exc.__suppress_context__


def test_exp_within_max_ttl_accepted() -> None:
    authn = hs_auth(jwt_max_ttl=100.0)
    assert authn.authenticate(hs(claims(ttl=90))).sub == "alice"
    refused(authn, hs(claims(ttl=200)))


def test_nbf_in_past_and_typ_jwt_accepted() -> None:
    authn = hs_auth()
    tok = hs(claims(nbf=int(time.time() - 5)), typ="at+jwt")
    assert authn.authenticate(tok).sub == "alice"


def test_audience_and_issuer() -> None:
    authn = hs_auth(jwt_audience="hubbub", jwt_issuer="https://id.example")
    good = claims(aud="hubbub", iss="https://id.example")
    assert authn.authenticate(hs(good)).sub == "alice"
    assert authn.authenticate(hs({**good, "aud": ["other", "hubbub"]})).sub == "alice"
    refused(authn, hs({**good, "aud": "other"}))
    refused(authn, hs({k: v for k, v in good.items() if k != "aud"}))
    refused(authn, hs({**good, "iss": "https://evil.example"}))
    refused(authn, hs({k: v for k, v in good.items() if k != "iss"}))


def test_audience_not_configured_ignores_aud() -> None:
    assert hs_auth().authenticate(hs(claims(aud="anything"))).sub == "alice"


def test_key_confusion_rsa_public_key_as_hmac_secret(keys: Keys) -> None:
    """HS256 signed with the server's RSA public key PEM (PyJWT GHSA-ffqj-6fqr-9h24)."""
    pem = keys.rsa_public_pem.encode()
    forged = raw_token(
        {"alg": "HS256", "typ": "JWT"},
        claims(),
        lambda m: hmac.new(pem, m, hashlib.sha256).digest(),
    )
    # Only RS256 accepted: HS256 is not even considered.
    refused(
        Authenticator(settings(jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("RS256",))),
        forged,
    )
    # Both families accepted: HS* only ever uses the shared secret, never the public key.
    both = Authenticator(
        settings(
            jwt_secret=SECRET, jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("HS256", "RS256")
        )
    )
    refused(both, forged)
    assert both.authenticate(hs(claims())).sub == "alice"
    assert (
        both.authenticate(jwt.encode(claims(), keys.rsa_private, algorithm="RS256")).sub == "alice"
    )
    # An HS token when no secret is configured at all.
    refused(
        Authenticator(
            settings(jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("HS256", "RS256"))
        ),
        forged,
    )


def test_jku_and_jwk_headers_are_ignored(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    def no_network(*a: Any, **k: Any) -> Any:
        raise AssertionError("a URL from the token was fetched")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    authn = Authenticator(settings(jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("RS256",)))
    attacker = keys.rsa_other
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    evil = {"jku": "https://evil.example/jwks.json", "jwk": jwk, "x5u": "https://evil.example/x"}
    refused(authn, jwt.encode(claims(), attacker, algorithm="RS256", headers=evil))
    # The same headers on a token signed by the configured key change nothing.
    good = jwt.encode(claims(), keys.rsa_private, algorithm="RS256", headers=evil)
    assert authn.authenticate(good).sub == "alice"


def test_kid_path_traversal_with_public_key_makes_no_file_lookup(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    authn = Authenticator(settings(jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("RS256",)))

    def no_files(*a: Any, **k: Any) -> Any:
        raise AssertionError("a file named by the token was read")

    monkeypatch.setattr(Path, "read_text", no_files)
    monkeypatch.setattr(Path, "read_bytes", no_files)
    headers = {"kid": "../../etc/passwd"}
    refused(authn, jwt.encode(claims(), keys.rsa_other, algorithm="RS256", headers=headers))
    ok = jwt.encode(claims(), keys.rsa_private, algorithm="RS256", headers=headers)
    assert authn.authenticate(ok).sub == "alice"  # kid only selects among configured keys


# ---- grants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "room", "ok"),
    [
        ("*", "lobby", True),
        ("*", "chat:1.2-x_y", True),
        ("*", "user:bob", False),
        ("*:bob", "user:bob", False),
        ("u*", "user:bob", False),
        ("user:*", "user:bob", True),
        ("user:alice", "user:alice", True),
        ("user:alice", "user:alicex", False),
        ("chat:*", "chat:", True),
        ("chat:*", "chat:a:b.c", True),
        ("chat:*", "chatx", False),
        ("chat:*", "xchat:1", False),
        ("chat:*", "Chat:1", False),
        ("room*", "room1", True),
        ("room*", "room\x00x", False),
        ("room*", "room/../x", False),
        ("a.b", "axb", False),
        ("a.b", "a.b", True),
        ("a+", "aa", False),
        ("news", "news", True),
        ("news", "news2", False),
        ("chat:*:log", "chat:a:b:log", True),
        ("chat:*:log", "chat:a:logx", False),
    ],
)
def test_grant_matches(pattern: str, room: str, ok: bool) -> None:
    assert grant_matches(pattern, room) is ok


def _reference_glob(pattern: str, room: str) -> bool:
    """The straightforward (backtracking) definition, for small inputs only."""
    if room.startswith("user:") and not pattern.startswith("user:"):
        return False
    rx = "".join("[A-Za-z0-9_.:-]*" if c == "*" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, room) is not None


def test_grant_matches_agrees_with_the_glob_definition() -> None:
    rng = random.Random(1234)
    for _ in range(20_000):
        pattern = "".join(rng.choice("ab:.**") for _ in range(rng.randint(0, 8)))
        room = "".join(rng.choice("ab:.") for _ in range(rng.randint(1, 10)))
        assert grant_matches(pattern, room) is _reference_glob(pattern, room), (pattern, room)
    for pattern, room in (
        ("**", "x"),
        ("a**b", "ab"),
        ("*a*", "a"),
        ("a*a", "a"),
        ("ab*ba", "aba"),
    ):
        assert grant_matches(pattern, room) is _reference_glob(pattern, room), (pattern, room)


def test_grant_matches_hostile_pattern_is_not_exponential() -> None:
    """Regression: a token pattern like ``*a*a*…*b`` against a long room made the regex
    backtrack exponentially and stalled the event loop (no timing asserted: this returns)."""
    assert grant_matches("*a" * 60 + "*b", "a" * 128) is False
    assert grant_matches("*a" * 60 + "*", "a" * 128) is True
    ident = Identity(sub="x", grants={"subscribe": ("*a" * 100 + "*b",)})
    assert not ident.can("subscribe", "a" * 128)


def test_grant_matches_non_room_text() -> None:
    assert grant_matches("a b", "a b")  # no star: plain equality
    assert not grant_matches("a b*", "a bc")  # not a room name: no glob matches it
    assert not grant_matches("*", "a\x00")


def test_identity_can() -> None:
    ident = Identity(
        sub="alice",
        grants={"subscribe": ("chat:*", "news"), "publish": ("chat:*",), "presence": (),
                "signal": ("call:*",)},
    )  # fmt: skip
    assert ident.can("subscribe", "chat:1") and ident.can("subscribe", "news")
    assert not ident.can("subscribe", "other")
    assert ident.can("publish", "chat:1") and not ident.can("publish", "news")
    assert not ident.can("presence", "chat:1")
    assert ident.can("signal", "call:9") and not ident.can("signal", "chat:1")
    # The personal room: always subscribable, never publishable without a user: grant.
    assert ident.can("subscribe", "user:alice")
    assert not ident.can("publish", "user:alice")
    assert not ident.can("presence", "user:alice")
    assert not ident.can("subscribe", "user:bob")
    star = Identity(sub="carol", grants={k: ("*",) for k in GRANT_KINDS})
    assert star.can("publish", "anything") and not star.can("subscribe", "user:bob")
    assert not star.can("publish", "user:carol")
    assert star.can("subscribe", "user:carol")
    explicit = Identity(sub="dave", grants={"publish": ("user:*",)})
    assert explicit.can("publish", "user:bob")
    key = Identity(sub="api-key-0", api_key=True)
    assert all(key.can(k, "user:bob") for k in GRANT_KINDS)


def test_grants_from_token_and_defaults() -> None:
    defaults = {"subscribe": ("news",), "publish": (), "signal": (), "presence": ("news",)}
    authn = hs_auth(default_grants=defaults)
    no_hub = authn.authenticate(hs(claims()))
    assert no_hub.grants == defaults
    assert no_hub.can("subscribe", "news") and not no_hub.can("subscribe", "chat:1")
    with_hub = authn.authenticate(hs(claims(hub={"subscribe": ["chat:*"], "publish": ["chat:1"]})))
    assert with_hub.grants == {"subscribe": ("chat:*",), "publish": ("chat:1",), "signal": (),
                               "presence": ()}  # fmt: skip
    assert not with_hub.can("subscribe", "news")  # an explicit hub claim replaces the defaults
    empty_hub = authn.authenticate(hs(claims(hub={})))
    assert empty_hub.grants == {k: () for k in GRANT_KINDS}
    assert empty_hub.can("subscribe", "user:alice")  # still the personal room


# ---- API keys -----------------------------------------------------------------------------------


def test_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    authn = hs_auth(api_keys=("key-one-0123456789", "key-two-rotated-0123456789"))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("hubbub.hub.auth.hmac.compare_digest", spy)
    one = authn.authenticate("key-one-0123456789")
    two = authn.authenticate("key-two-rotated-0123456789")
    assert one.api_key and two.api_key
    assert one.scope != two.scope and one.scope.startswith("key:")
    assert "key-one" not in one.scope  # the scope never carries the key itself
    assert calls, "API keys must be compared with hmac.compare_digest"
    for bad in ("key-one-012345678", "key-one-0123456789 ", "KEY-ONE-0123456789",
                "key-one-0123456789-x", "ключ"):  # fmt: skip
        refused(authn, bad)
    assert authn.api_key_identity("key-one-012345678") is None


def test_api_key_identity_can_use_tokens_too() -> None:
    authn = hs_auth(api_keys=("k" * 16,))
    assert authn.authenticate(hs(claims())).sub == "alice"


# ---- dev mode and guests -----------------------------------------------------------------------


def test_dev_mode_guests() -> None:
    s = settings()
    assert s.dev_mode
    authn = Authenticator(s)
    g1, g2 = authn.authenticate(None), authn.authenticate("")
    assert g1.guest and g1.sub.startswith("guest-") and g1.sub != g2.sub
    assert g1.scope == f"sub:{g1.sub}"
    assert g1.can("subscribe", "any") and g1.can("publish", "any") and g1.can("presence", "x")
    assert not g1.can("subscribe", "user:someone")
    assert g1.can("subscribe", f"user:{g1.sub}")
    # A token in dev mode cannot be verified (no key): refused, not a guest.
    refused(authn, hs(claims()))


def test_no_credential_without_anonymous_is_refused() -> None:
    authn = hs_auth()
    for cred in (None, ""):
        with pytest.raises(Unauthorized):
            authn.authenticate(cred)
    assert hs_auth(allow_anonymous=True).authenticate(None).guest


# ---- mint_token ----------------------------------------------------------------------------------


def test_mint_token_round_trip() -> None:
    s = settings(
        jwt_secret=SECRET, jwt_audience="hubbub", jwt_issuer="iss", jwt_algorithms=("HS512",)
    )
    tok, exp = mint_token(s, "alice", 60, hub={"subscribe": ["X"]}, name="Alice", info={"a": 1})
    assert jwt.get_unverified_header(tok)["alg"] == "HS512"
    ident = Authenticator(s).authenticate(tok)
    assert ident.sub == "alice" and ident.exp == exp
    assert ident.grants["subscribe"] == ("X",) and ident.grants["publish"] == ()
    assert ident.name == "Alice" and ident.info == {"a": 1}


def test_mint_token_needs_hs_secret(keys: Keys) -> None:
    with pytest.raises(ConfigError, match="HUB_JWT_SECRET"):
        mint_token(settings(), "alice")
    with pytest.raises(ConfigError):
        mint_token(
            settings(
                jwt_secret=SECRET, jwt_public_key=keys.rsa_public_pem, jwt_algorithms=("RS256",)
            ),
            "alice",
        )
