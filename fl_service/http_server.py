"""The service's one HTTP port: a threaded HTTP/1.1 server with routes and per-peer byte counts.

Routes are plain functions `(query, body) -> Reply`; a reply that names a `peer` has the bytes of
its exchange (request line, headers and body in, status line, headers and body out) added to
that peer's link counters.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger("fl_service.http")


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"
    peer: str | None = None


Route = Callable[[dict[str, str], bytes], Reply]


class _Counters(Protocol):
    def add(self, peer: str, sent: int, received: int) -> None: ...


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode())


class CountingReader:
    """Wraps a socket file and counts the bytes read through it (both ends of a link)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data = self.raw.read(*args)
        self.count += len(data)
        return data

    def read1(self, *args: Any) -> bytes:
        data = self.raw.read1(*args)
        self.count += len(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data = self.raw.readline(*args)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.count += n or 0
        return n

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.raw, attr)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per child for the whole run
    disable_nagle_algorithm = True  # small replies must not wait for a delayed ACK
    server: ServiceHTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile = CountingReader(self.rfile)

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self.server.routes.get((method, url.path))
        if route is None:
            reply = json_reply({"error": f"no route {method} {url.path}"}, 404)
        else:
            try:
                reply = route(dict(parse_qsl(url.query)), body)
            except Exception as exc:  # a bad request must not take the service down
                log.exception("%s %s failed", method, url.path)
                reply = json_reply({"error": f"{type(exc).__name__}: {exc}"}, 500)
        phrase = HTTPStatus(reply.status).phrase
        head = (
            f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n\r\n"
        ).encode()
        received = self.rfile.count
        self.rfile.count = 0
        self.wfile.write(head)
        if reply.body:
            self.wfile.write(reply.body)
        if reply.peer:
            self.server.links.add(reply.peer, len(head) + len(reply.body), received)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


class ServiceHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[tuple[str, str], Route],
        links: _Counters,
        tls_cert: str = "",
        tls_key: str = "",
    ) -> None:
        self.routes = routes
        self.links = links
        super().__init__((host, port), _Handler)
        if tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
            # Handshake in the request thread, not in accept(): a slow peer must not block others.
            self.socket = context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
