"""``hubbub webhooks listen``: a local webhook receiver for development.

It verifies each request with :func:`hubbub.webhooks.verify` (secrets from ``--secret`` or
``HUB_WEBHOOK_SECRET``, comma-separated), prints every new event as one JSON line on stdout,
skips events whose ``id`` it has seen (delivery is at least once) and answers ``200``; a request
that does not verify gets ``400`` with the reason, printed on stderr. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

from hubbub.webhooks import WebhookError, verify

MAX_BODY = 16 * 1024 * 1024
SEEN = 100_000  # ids remembered for deduplication


class _Seen:
    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = Lock()

    def first(self, ident: str) -> bool:
        with self._lock:
            if ident in self._ids:
                return False
            self._ids[ident] = None
            if len(self._ids) > SEEN:
                self._ids.popitem(last=False)
            return True


def make_handler(secrets: list[str], tolerance: float) -> type[BaseHTTPRequestHandler]:
    seen = _Seen()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY:
                self._answer(413, "body too large")
                return
            body = self.rfile.read(length)
            try:
                doc = verify(secrets, dict(self.headers.items()), body, tolerance)
            except WebhookError as exc:
                print(f"refused: {exc}", file=sys.stderr, flush=True)
                self._answer(400, str(exc))
                return
            for event in doc["events"]:
                if isinstance(event, dict) and seen.first(str(event.get("id"))):
                    print(json.dumps(event, separators=(",", ":")), flush=True)
            self._answer(200, "ok")

        def _answer(self, status: int, text: str) -> None:
            data = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # stdout carries the events only

    return Handler


def cmd_listen(args: argparse.Namespace) -> int:
    raw = args.secret or os.environ.get("HUB_WEBHOOK_SECRET", "")
    secrets = [s.strip() for s in raw.split(",") if s.strip()]
    if not secrets:
        print("hubbub: webhooks listen needs --secret or HUB_WEBHOOK_SECRET", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((args.host, args.port), make_handler(secrets, args.tolerance))
    port = server.server_address[1]
    print(f"listening on http://{args.host}:{port}/ (set HUB_WEBHOOK_URLS to it)", file=sys.stderr,
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8900, help="TCP port (default 8900; 0: any)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--secret", help="the webhook secret(s), comma-separated "
                   "(default: HUB_WEBHOOK_SECRET)")  # fmt: skip
    p.add_argument("--tolerance", type=float, default=300.0,
                   help="accepted age of a signature in seconds (default 300)")  # fmt: skip
