"""A real HTTP peer on 127.0.0.1 for tests of Keyturn's outbound calls (OPA, JWKS, webhooks)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer_json(
    handler: BaseHTTPRequestHandler, status: int, document: Any, content_type: str = "application/json"
) -> None:
    """Send ``document`` as the JSON answer to the request ``handler`` is serving."""
    payload = json.dumps(document).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


Respond = Callable[[str, str, bytes], tuple[int, Any]]
"""(method, path, body) → (status, JSON document to answer with)."""


class JsonPeer:
    """Answers every request with ``respond``; ``requests`` lists (method, path, body) received."""

    def __init__(self, respond: Respond) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                peer.requests.append((self.command, self.path, body))
                answer_json(self, *respond(self.command, self.path, body))

            do_GET = do_POST = _answer  # noqa: N815 - the standard library's handler names

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
