"""Test-only bridge: InfluxDB 2.x ``POST /api/v2/write`` -> InfluxDB 1.x ``POST /write``, and
``GET /query`` with token auth (2.x's 1.x-compatible endpoint) -> 1.x ``GET /query``.

InfluxDB 1.6 (the local server) predates the v2 endpoints and tokens, so the v2 dialect gets 404
or 401 from it. This bridge checks the v2 request the client really sends (token auth, org,
bucket, precision, gzip) and forwards it to the 1.x endpoint, returning the server's answer — so
the v2 dialect is exercised against the real database.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import requests


class V2Bridge:
    def __init__(self, upstream: str, token: str, org: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.org = org
        self.requests: list[dict[str, str]] = []
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if body:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - InfluxQL over /query, the 1.x-compatible endpoint of 2.x
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                bridge.requests.append({"path": url.path, **q})
                if url.path != "/query":
                    return self._reply(404, b'{"code":"not found"}')
                if self.headers.get("Authorization") != f"Token {bridge.token}":
                    return self._reply(401, b'{"code":"unauthorized","message":"bad token"}')
                resp = requests.get(f"{bridge.upstream}/query", params=q, timeout=10)
                self._reply(resp.status_code, resp.content)

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                bridge.requests.append({"path": url.path, **q})
                if url.path != "/api/v2/write":
                    return self._reply(404, b'{"code":"not found"}')
                if self.headers.get("Authorization") != f"Token {bridge.token}":
                    return self._reply(401, b'{"code":"unauthorized","message":"bad token"}')
                if q.get("org") != bridge.org or "bucket" not in q:
                    return self._reply(400, b'{"code":"invalid","message":"org/bucket"}')
                resp = requests.post(
                    f"{bridge.upstream}/write",
                    params={"db": q["bucket"], "precision": q.get("precision", "ns")},
                    data=body,
                    timeout=10,
                )
                self._reply(resp.status_code, resp.content)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> V2Bridge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
