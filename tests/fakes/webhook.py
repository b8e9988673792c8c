"""A requester's webhook receiver: records every POST with its headers and raw body."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class WebhookReceiver:
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answer_status: int = 204

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.answer_status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-webhook").start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/keyturn/events"

    def states(self, action_id: str) -> list[str]:
        return [json.loads(body)["state"] for _, body in self.received if json.loads(body)["action_id"] == action_id]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
