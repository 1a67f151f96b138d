"""Fixtures of the unit tests that talk HTTP: a local server and a port nothing listens on."""

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def _handler(replies):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            code, doc = replies[self.command]
            if isinstance(self.connection, ssl.SSLSocket) and doc is not None:
                # Which client certificate the request came with (None: none).
                cert = self.connection.getpeercert() or {}
                subject = dict(item[0] for item in cert.get("subject", ()))
                doc = {**doc, "peer": subject.get("commonName")}
            body = b"" if doc is None else json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer  # noqa: N815 - http.server's names

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def serve():
    """serve({method: (status, JSON document or None)}, tls=None) -> the port of an HTTP server
    on 127.0.0.1 that answers every path so, stopped after the test. ``tls`` (certificate, key,
    CA paths) serves HTTPS that asks for a client certificate of that CA (optional) and adds
    its CN to each document as ``peer``."""
    servers = []

    def start(replies, tls=None):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(replies))
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            context.load_verify_locations(tls[2])
            context.verify_mode = ssl.CERT_OPTIONAL
            srv.socket = context.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
