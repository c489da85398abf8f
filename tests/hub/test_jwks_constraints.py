"""JWKS key constraints (hardening case 58): a key published with ``alg`` serves that algorithm
only, one published with ``use`` serves signatures only when it is ``sig``; any other token is
refused exactly like a bad one, on a real node over HTTP and WebSocket alike."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa

from hubbub.hub.auth import Authenticator
from hubbub.hub.errors import Unauthorized
from hubbub.hub.settings import Settings
from tests.wsclient import WS

ALGS = ("RS256", "RS384", "PS256")


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_file(tmp_path: Path, key: rsa.RSAPrivateKey, entries: dict[str, dict[str, Any]]) -> str:
    """A JWKS holding ``key``'s public half once per kid, with the given extra members."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    doc = {"keys": [{**public, "kid": kid, **extra} for kid, extra in entries.items()]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(doc))
    return str(path)


ENTRIES: dict[str, dict[str, Any]] = {
    "plain": {},
    "rs256": {"alg": "RS256", "use": "sig"},
    "enc": {"use": "enc"},
    "ps256": {"alg": "PS256"},
}


def tok(key: rsa.RSAPrivateKey, kid: str | None, alg: str, sub: str = "alice") -> str:
    headers = {"kid": kid} if kid is not None else None
    body = {"sub": sub, "exp": int(time.time() + 600)}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


def test_alg_and_use_of_a_jwks_key_are_honoured(rsa_key: Any, tmp_path: Path) -> None:
    path = jwks_file(tmp_path, rsa_key, ENTRIES)
    s = Settings(jwt_jwks_file=path, jwt_algorithms=ALGS)
    s.validate()
    authn = Authenticator(s)
    ok = [("plain", "RS256"), ("plain", "RS384"), ("plain", "PS256"), ("rs256", "RS256"),
          ("ps256", "PS256")]  # fmt: skip
    for kid, alg in ok:
        assert authn.authenticate(tok(rsa_key, kid, alg)).sub == "alice", (kid, alg)
    bad = [("rs256", "RS384"), ("rs256", "PS256"), ("ps256", "RS256"), ("enc", "RS256")]
    generic = Unauthorized()
    for kid, alg in bad:
        with pytest.raises(Unauthorized) as info:
            authn.authenticate(tok(rsa_key, kid, alg))
        assert info.value.body() == generic.body(), (kid, alg)
    assert authn.failures["key_algorithm"] == 3 and authn.failures["key_use"] == 1
    # the single key of a one-key JWKS is held to the same rules when the token names no kid
    single = jwks_file(tmp_path, rsa_key, {"only": {"alg": "RS256", "use": "enc"}})
    one = Authenticator(Settings(jwt_jwks_file=single, jwt_algorithms=ALGS))
    with pytest.raises(Unauthorized):
        one.authenticate(tok(rsa_key, None, "RS256"))


async def test_a_node_refuses_tokens_a_jwks_key_does_not_serve(
    node_factory: Any, rsa_key: Any, tmp_path: Path
) -> None:
    path = jwks_file(tmp_path, rsa_key, ENTRIES)
    node = await node_factory(jwt_secret=None, jwt_jwks_file=path, jwt_algorithms=ALGS)
    async with httpx.AsyncClient(base_url=node.url) as http:

        async def history(token: str) -> httpx.Response:
            auth = {"Authorization": f"Bearer {token}"}
            return await http.get("/v1/rooms/news/messages", headers=auth)

        good = await history(tok(rsa_key, "rs256", "RS256"))
        assert good.status_code == 200, good.text
        garbage = await history("not.a.token")
        assert garbage.status_code == 401
        for kid, alg in (("rs256", "RS384"), ("ps256", "RS256"), ("enc", "RS256")):
            r = await history(tok(rsa_key, kid, alg))
            assert r.status_code == 401, (kid, alg, r.text)
            assert r.content == garbage.content
            assert r.headers["www-authenticate"] == garbage.headers["www-authenticate"]
        metrics = (await http.get("/metrics")).text
    assert 'hubbub_auth_refusals_total{reason="key_algorithm"} 2' in metrics
    assert 'hubbub_auth_refusals_total{reason="key_use"} 1' in metrics
    c = await WS.connect(node.ws_url, tok(rsa_key, "plain", "RS384"))
    assert c.welcome["user"] == "alice"
    conn = await websockets.connect(node.ws_url + "?token=" + tok(rsa_key, "enc", "RS256"))
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await conn.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4501


async def test_an_unknown_key_id_is_logged_as_such(
    node_factory: Any, rsa_key: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token naming a ``kid`` the JWKS does not hold: 401 like any refusal, and the reason
    ``unknown_key`` in the node's log line and metrics, never in the answer."""
    path = jwks_file(tmp_path, rsa_key, ENTRIES)
    node = await node_factory(jwt_secret=None, jwt_jwks_file=path, jwt_algorithms=ALGS)
    with caplog.at_level(logging.INFO, logger="hubbub.edge"):
        async with httpx.AsyncClient(base_url=node.url) as http:
            auth = {"Authorization": f"Bearer {tok(rsa_key, 'not-published', 'RS256')}"}
            r = await http.get("/v1/rooms/news/messages", headers=auth)
            metrics = (await http.get("/metrics")).text
    assert r.status_code == 401 and "unknown" not in r.text and "kid" not in r.text, r.text
    assert "http: login refused: unknown_key" in caplog.text, caplog.text
    assert 'hubbub_auth_refusals_total{reason="unknown_key"} 1' in metrics
