"""The service's one HTTP port: a threaded HTTP/1.1 server with routes and per-peer byte counts.

Routes are plain functions `(query, body, peer) -> Reply`; a reply that names a `peer` has the
bytes of its exchange (request line, headers and body in, status line, headers and body out)
added to that peer's link counters.

Mutual TLS (docs/security.md): given a `server_context`, the port speaks TLS >= 1.2 only and
asks every caller for a certificate from the pipeline's CA. The certificate is optional at the
handshake (probes carry none); a certificate that does not chain to the CA fails the handshake.
A route is handed the caller's `Peer` (its certificate's CN and OU), or None. Without a
certificate only ANONYMOUS_ROUTES are served; anything else is answered 401 before its body is
read. Plain HTTP (no context) hands every route None and checks nothing.

Resource limits (docs/architecture.md, "Resource limits"), so that no peer can exhaust the
service's memory or threads:
- a request body is read only when its Content-Length is at most the route's limit (`body_limits`,
  else BODY_LIMIT); a POST without a length (411), a malformed or negative length (400) or one
  over the limit (413) is refused before any byte of the body is read, and the connection closed;
- request headers are bounded (HEAD_LIMIT; http.server bounds the request line at 64 KiB);
- a connection idle for `idle_timeout_s` (between requests or inside one) is closed; a TLS
  handshake must end within TLS_HANDSHAKE_TIMEOUT_S;
- at most `max_connections` connections (one handler thread each) are open at once; one more is
  answered 503 and closed at once;
- a refused request, a failed route or a broken connection is one log line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import resource
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlsplit

from fl_service.config import ConfigError

log = logging.getLogger("fl_service.http")

BODY_LIMIT = 64 * 1024  # bytes of any request body whose route has no limit of its own
HEAD_LIMIT = 64 * 1024  # bytes of request headers (the request line has http.server's 64 KiB)
# The longest a connection may wait for a peer's next bytes. Children hold one connection each and
# long-poll on it (transport.POLL_HOLD_S: the server holds those, they are not idle), but between a
# task and its update the connection is idle for the child's whole training: aggregators add their
# round timeout (roles/service.py), after which an update is stale anyway.
IDLE_TIMEOUT_S = 60.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0
# Connections (one handler thread each) open at once: every child holds one, so this is the most
# children an aggregator can serve, with room for probes and the controller (at 1000, an LA that
# took 500 moved clients on top of its 500 refused the orchestrator's /status and was taken for
# dead). The open-file limit is raised towards it (up to the hard limit); never above that limit
# less FD_RESERVE (files, libraries, the listening socket).
MAX_CONNECTIONS = 4096
FD_RESERVE = 100
_LENGTH = re.compile(r"[0-9]{1,19}")
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
# What a caller without a client certificate may ask a TLS port (Kubernetes probes carry none);
# the route answers it a document that helps no attacker.
ANONYMOUS_ROUTES = frozenset({("GET", "/status")})


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"
    peer: str | None = None


class Peer(NamedTuple):
    """Who is calling: the subject of the client certificate the TLS handshake verified."""

    name: str  # CN: the service's name ("" when the subject has none or several)
    role: str  # OU: its role as the inventory spells it, or "controller"
    # A pool's virtual clients (`<CN>-<n>`), which the CA listed as DNS names of its certificate
    # because the pool speaks for them.
    members: frozenset[str] = frozenset()


Route = Callable[[dict[str, str], bytes, Peer | None], Reply]


def peer_identity(certificate: Mapping[str, Any] | None) -> Peer | None:
    """The Peer of a verified certificate as `SSLSocket.getpeercert()` gives it; None for none."""
    if not certificate:
        return None
    fields: dict[str, list[str]] = {}
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            fields.setdefault(key, []).append(value)

    def one(key: str) -> str:
        values = fields.get(key, [])
        return values[0] if len(values) == 1 else ""

    name = one("commonName")
    members = frozenset(value for kind, value in certificate.get("subjectAltName", ())
                        if kind == "DNS" and _is_member(name, value))
    return Peer(name, one("organizationalUnitName"), members)


def _is_member(pool: str, name: str) -> bool:
    prefix = f"{pool}-"
    return bool(pool) and name.startswith(prefix) and name[len(prefix):].isdigit()


def load_identity(context: ssl.SSLContext, cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Give `context` our certificate and key and the CA that vouches for peers (TLS >= 1.2);
    ConfigError naming the config key whose file cannot be used."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_ca", f"{ca}: no CA certificate: {exc}") from None
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_cert", f"{cert} with key {key}: {exc}") from None
    return context


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """Serve with `cert`; a caller's certificate is optional, and verified against `ca` when
    one is sent."""
    context = load_identity(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class _Counters(Protocol):
    def add(self, peer: str, sent: int, received: int) -> None: ...


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode())


def body_refusal(
    method: str, path: str, content_length: list[str], transfer_encoding: bool, limit: int
) -> tuple[int, str] | None:
    """(HTTP status, one-line reason) when a request's body must not be read, else None.
    `content_length`: every Content-Length header value the request carries."""
    where = f"{method} {path}"
    if transfer_encoding:
        return 411, f"{where}: Transfer-Encoding is not accepted; send a Content-Length"
    if not content_length:
        return (411, f"{where}: Content-Length missing") if method == "POST" else None
    if len(set(content_length)) > 1:
        return 400, f"{where}: conflicting Content-Length headers"
    text = content_length[0].strip()
    if not _LENGTH.fullmatch(text):
        return 400, f"{where}: Content-Length {text[:40]!r} is not a non-negative integer"
    if int(text) > limit:
        return 413, f"{where}: Content-Length {int(text)} is over the limit of {limit} bytes"
    return None


class CountingReader:
    """Wraps a socket file and counts the bytes read through it (both ends of a link). While
    `budget` is set, readline() reads no more than that many bytes in all (the request head)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.count = 0
        self.budget: int | None = None

    def read(self, *args: Any) -> bytes:
        data = self.raw.read(*args)
        self.count += len(data)
        return data

    def read1(self, *args: Any) -> bytes:
        data = self.raw.read1(*args)
        self.count += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        if self.budget is not None:
            if self.budget <= 0:
                return b""
            size = self.budget if size is None or size < 0 else min(size, self.budget)
        data = self.raw.readline(size)
        self.count += len(data)
        if self.budget is not None:
            self.budget -= len(data)
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
        self.timeout = self.server.idle_timeout_s  # StreamRequestHandler sets it on the socket
        super().setup()
        self.rfile = CountingReader(self.rfile)

    def parse_request(self) -> bool:
        self.rfile.budget = HEAD_LIMIT
        try:
            ok = super().parse_request()
        finally:
            left, self.rfile.budget = self.rfile.budget, None
        if ok and left <= 0:
            self.send_error(431, f"request headers over {HEAD_LIMIT} bytes")
            return False
        return ok

    def _peer(self) -> Peer | None:
        if not isinstance(self.connection, ssl.SSLSocket):
            return None
        return peer_identity(self.connection.getpeercert())

    def _refuse(self, path: str, status: int, reason: str) -> None:
        """Answer `status` with a one-line JSON error, log it, and close: an unread body must
        not be taken for the next request."""
        log.warning("refused %s from %s: %s (HTTP %d)", path, self.client_address[0], reason,
                    status)
        self.close_connection = True
        self._reply(json_reply({"error": reason}, status))

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        peer = self._peer()
        if self.server.tls and peer is None and (method, url.path) not in ANONYMOUS_ROUTES:
            self._refuse(url.path, 401, f"{method} {url.path}: a client certificate from the "
                         "pipeline's CA is required")
            return
        limit = self.server.body_limit(method, url.path)
        refusal = body_refusal(method, url.path, self.headers.get_all("Content-Length") or [],
                               "Transfer-Encoding" in self.headers, limit)
        if refusal is not None:
            status, reason = refusal
            self._refuse(url.path, status, reason)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the peer went away mid-body
            self.close_connection = True
            return
        route = self.server.routes.get((method, url.path))
        if route is None:
            reply = json_reply({"error": f"no route {method} {url.path}"}, 404)
        else:
            try:
                reply = route(dict(parse_qsl(url.query)), body, peer)
            except Exception as exc:  # a bad request must not take the service down
                log.error("%s %s from %s failed: %s: %s", method, url.path,
                          self.client_address[0], type(exc).__name__, exc)
                reply = json_reply({"error": f"{type(exc).__name__}: {exc}"}, 500)
        self._reply(reply)

    def _reply(self, reply: Reply) -> None:
        phrase = HTTPStatus(reply.status).phrase
        close = "Connection: close\r\n" if self.close_connection else ""
        head = (
            f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n{close}\r\n"
        ).encode()
        received = self.rfile.count
        self.rfile.count = 0
        # Counted before it is sent: the peer may read its answer and look at both ends' counts
        # before this thread runs again.
        if reply.peer:
            self.server.links.add(reply.peer, len(head) + len(reply.body), received)
        self.wfile.write(head)
        if reply.body:
            self.wfile.write(reply.body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        # http.server's own refusals (bad request line, headers too long) and timeouts.
        log.warning("%s: " + format, self.client_address[0], *args)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def _raise_open_files(wanted: int) -> int:
    """Raise this process's open-file soft limit to `wanted` where the hard limit allows (a
    systemd service starts at 1024); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


class ServiceHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() must not wait for idle keep-alive connections
    request_queue_size = 64

    def __init__(
        self,
        host: str,
        port: int,
        routes: dict[tuple[str, str], Route],
        links: _Counters,
        tls: ssl.SSLContext | None = None,
        body_limits: Mapping[tuple[str, str], Callable[[], int]] | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """`tls`: a `server_context` (None: plain HTTP). `body_limits`: (method, path) -> a
        function giving that route's current body limit in bytes (read per request: an
        aggregator's grows once it knows its model's size)."""
        self.tls = tls is not None
        self.routes = routes
        self.links = links
        self.body_limits = dict(body_limits or {})
        self.idle_timeout_s = idle_timeout_s
        open_files = _raise_open_files(max_connections + FD_RESERVE)
        if open_files != resource.RLIM_INFINITY:
            max_connections = min(max_connections, max(1, open_files - FD_RESERVE))
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), _Handler)
        if tls is not None:
            # Handshake in the request thread, not in accept(): a slow peer must not block others.
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def server_bind(self) -> None:
        # HTTPServer's own looks up the bound address's name (reverse DNS), which nothing here
        # reads: where no resolver answers (a container, an offline fleet) that held every
        # start, and so every restart after a crash, for 10 s.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def body_limit(self, method: str, path: str) -> int:
        limit = self.body_limits.get((method, path))
        return BODY_LIMIT if limit is None else limit()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("refused a connection from %s: %d connections open (the limit)",
                        client_address[0], self.max_connections)
            if not isinstance(request, ssl.SSLSocket):  # a TLS peer has not even said hello
                request.setblocking(False)
                with contextlib.suppress(OSError):
                    request.send(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
                try:
                    request.do_handshake()
                except (OSError, ValueError) as exc:
                    log.warning("TLS handshake with %s failed: %s", client_address[0],
                                exc or type(exc).__name__)
                    return
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not socketserver's traceback: a peer that goes away is no bug of ours."""
        exc = sys.exc_info()[1]
        level = logging.INFO if isinstance(exc, OSError) else logging.ERROR
        log.log(level, "connection from %s ended: %s: %s", client_address[0],
                type(exc).__name__, exc)
