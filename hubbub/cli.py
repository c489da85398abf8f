"""``hubbub serve | token | rooms explain | probe | bench | soak | webhooks listen``
(PROTOCOL.md §7)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from hubbub.hub.auth import mint_token
from hubbub.hub.errors import ConfigError
from hubbub.hub.settings import GRANT_KINDS, Settings


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Flags win over the environment, which wins over the file. Exits 2 on a bad value."""
    try:
        return Settings.load(config_file=getattr(args, "config", None), overrides=overrides)
    except ConfigError as exc:
        print(f"hubbub: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _exit_zero(signum: int, frame: Any) -> None:
    # uvicorn re-raises SIGTERM once its graceful shutdown is over, so that the default action
    # would end the process with -15; a drained node exits 0 (PROTOCOL.md §7).
    raise SystemExit(0)


def _open_files_to_hard_limit() -> None:
    """Every connection is a file descriptor: take the soft RLIMIT_NOFILE up to the hard one
    (often 1024 soft; systemd's unit sets LimitNOFILE, this covers a plain shell)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Cyclic garbage collection for a server process: young collections every 50 000 net
# allocations instead of 700, and objects that live through startup frozen out of the scans.
# With the defaults a reconnect storm of 5 000 clients spent seconds in full collections (each
# a pass over every live object of every connection, repeated as the heap grew by a quarter).
GC_THRESHOLDS = (50_000, 10, 10)


def tune_gc() -> None:
    """Set the collector up for serving (the process is ours: ``hubbub serve`` and its worker
    processes; an app embedded in another server leaves the collector alone)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hubbub.logs import HeldRecords, setup_logging
    from hubbub.transports.server import server_options

    held = HeldRecords("hubbub.settings")  # start-up warnings wait for the log format
    overrides = {"host": args.host, "port": args.port, "broker_url": args.broker,
                 "workers": args.workers}  # fmt: skip
    try:
        settings = Settings.load(config_file=args.config, overrides=overrides)
        settings.check_serving()
    except ConfigError as exc:
        held.pass_on()
        print(f"hubbub: configuration error: {exc}", file=sys.stderr)
        return 2
    log_config = setup_logging(settings.log_format, settings.log_level)
    held.pass_on()
    _open_files_to_hard_limit()
    common: dict[str, Any] = {
        **server_options(settings),
        "log_config": log_config,
        "log_level": settings.log_level,
    }
    if settings.workers > 1:
        # Children rebuild settings from the environment: pass the flags down that way.
        for name, value in (("host", args.host), ("port", args.port), ("broker_url", args.broker)):
            if value is not None:
                os.environ[f"HUB_{name.upper()}"] = str(value)
        if args.config:
            os.environ["HUB_CONFIG"] = args.config
        signal.signal(signal.SIGTERM, _exit_zero)
        # uvicorn's supervisor; each worker builds the app from the environment, and the app
        # drains its own sessions on SIGTERM (hubbub.drain).
        uvicorn.run("hubbub.app:app_from_env", factory=True, workers=settings.workers, **common)
        return 0
    from hubbub.app import create_app

    config = uvicorn.Config(create_app(settings), **common)
    signal.signal(signal.SIGTERM, _exit_zero)
    tune_gc()
    uvicorn.Server(config).run()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    hub_claim: dict[str, list[str]] | None = None
    grants = {k: getattr(args, k) for k in GRANT_KINDS}
    if any(v is not None for v in grants.values()):
        hub_claim = {k: v for k, v in grants.items() if v is not None}
    info = json.loads(args.info) if args.info else None
    try:
        tok, _ = mint_token(settings, args.sub, args.ttl, hub=hub_claim, name=args.name, info=info)
    except ConfigError as exc:
        print(f"hubbub: {exc}", file=sys.stderr)
        return 2
    print(tok)
    return 0


def cmd_rooms(args: argparse.Namespace) -> int:
    """``hubbub rooms explain ROOM``: the effective options of a room and where each comes
    from (a [[rooms]] table of the config file, or the global setting)."""
    from hubbub.hub.envelope import check_room
    from hubbub.hub.errors import BadRequest
    from hubbub.hub.room_options import RoomRules

    settings = load_settings(args)
    try:
        room = check_room(args.room)
    except BadRequest as exc:
        print(f"hubbub: {exc.message}", file=sys.stderr)
        return 2
    rules = RoomRules(settings)
    table = rules.get(room).table
    if args.json:
        out = {
            "room": room,
            "table": table and {"index": table.index, "pattern": table.pattern},
            "options": {k: {"value": v, "from": src} for k, v, src in rules.explain(room)},
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"room {room}: " + (f"{table.name}" if table else "no [[rooms]] table matches"))
    for key, value, src in rules.explain(room):
        shown = json.dumps(value) if not isinstance(value, str) else value
        print(f"  {key:<18} {shown:<12} {src}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    try:
        from hubbub.probe.peer import run_probe
    except ImportError as exc:
        print(f"hubbub: probe needs the webrtc extra (pip install 'hubbub[webrtc]'): {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    return run_probe(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from hubbub.bench.run import cmd_bench as run_bench

    return run_bench(args)


def cmd_soak(args: argparse.Namespace) -> int:
    from hubbub.bench.soak import cmd_soak as run_soak

    return run_soak(args)


def cmd_webhooks_listen(args: argparse.Namespace) -> int:
    from hubbub.webhook_listen import cmd_listen

    return cmd_listen(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubbub", description="Hubbub real-time messaging hub")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a node")
    s.add_argument("--host", help="address to bind (HUB_HOST; default 127.0.0.1)")
    s.add_argument("--port", type=int, help="TCP port to bind (HUB_PORT; default 8000)")
    s.add_argument("--broker", help="memory:// (default), redis://host:6379/0, rediss://…")
    s.add_argument("--workers", type=int, help="processes on one port (needs a Redis broker)")
    s.add_argument("--config", help="TOML file with HUB_* settings")
    s.set_defaults(func=cmd_serve)
    t = sub.add_parser("token", help="print a client JWT signed with HUB_JWT_SECRET")
    t.add_argument("--sub", required=True, help="the user id the token names (its sub claim)")
    t.add_argument("--ttl", type=float, default=3600.0,
                   help="lifetime in seconds, more than 0 and at most HUB_JWT_MAX_TTL "
                   "(default 3600)")  # fmt: skip
    t.add_argument("--name", help="display name shown in presence")
    t.add_argument("--info", help="JSON object shown in presence")
    t.add_argument("--config", help="TOML file with HUB_* settings")
    for kind in GRANT_KINDS:
        t.add_argument(f"--{kind}", action="append", metavar="PATTERN",
                       help=f"grant {kind} on rooms matching PATTERN (repeatable)")  # fmt: skip
    t.set_defaults(func=cmd_token)
    ro = sub.add_parser("rooms", help="per-room options of the config file")
    ro_sub = ro.add_subparsers(dest="rooms_command", required=True, help="what to do")
    ex = ro_sub.add_parser("explain", help="print a room's effective options and their source")
    ex.add_argument("room", help="the room name")
    ex.add_argument("--config", help="TOML file with HUB_* settings and [[rooms]] tables")
    ex.add_argument("--json", action="store_true", help="print JSON")
    ex.set_defaults(func=cmd_rooms)
    pr = sub.add_parser("probe", help="join a call room as a WebRTC peer (aiortc) and echo")
    pr.add_argument("room", help="the call room to join")
    pr.add_argument("--url", default="ws://127.0.0.1:8000/v1/ws", help="the hub's /v1/ws URL")
    pr.add_argument("--token", help="client JWT (default: HUBBUB_TOKEN env, or none in dev mode)")
    pr.add_argument("--record", help="x.json: counters (frames, data-channel messages) "
                    "rewritten live; x.mp4/.mkv/.webm: the received media")  # fmt: skip
    pr.add_argument("--duration", type=float, default=0.0, help="stop after N seconds (0: run)")
    pr.add_argument("--ice-host", action="append", metavar="ADDR",
                    help="gather host candidates only on ADDR and accept only remote candidates "
                    "on it (repeatable; tests use 127.0.0.1)")  # fmt: skip
    pr.set_defaults(func=cmd_probe)
    from hubbub.bench.run import add_arguments as bench_arguments

    b = sub.add_parser("bench", help="measure fan-out: deliveries/s, latency, loss, server cost")
    bench_arguments(b)
    b.set_defaults(func=cmd_bench)
    from hubbub.bench.soak import add_arguments as soak_arguments

    sk = sub.add_parser("soak", help="randomized faults on a private cluster, then check nothing "
                        "acknowledged was lost")  # fmt: skip
    soak_arguments(sk)
    sk.set_defaults(func=cmd_soak)
    from hubbub.webhook_listen import add_arguments as listen_arguments

    wh = sub.add_parser("webhooks", help="webhook tools (docs/webhooks.md)")
    wh_sub = wh.add_subparsers(dest="webhooks_command", required=True, help="what to do")
    wl = wh_sub.add_parser("listen", help="a local receiver that verifies and prints events")
    listen_arguments(wl)
    wl.set_defaults(func=cmd_webhooks_listen)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
