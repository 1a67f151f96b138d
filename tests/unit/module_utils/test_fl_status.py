"""fl_status's fetch: live services answer with their /status, dead ones are reported, not fatal."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import fetch_all


class Status(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"name": "ga", "state": "training", "global_round": 3}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_live_and_dead_services_side_by_side(server):
    out = fetch_all([
        {"name": "ga", "url": f"http://127.0.0.1:{server}/status"},
        {"name": "la2", "url": f"http://127.0.0.1:{closed_port()}/status"},
    ], timeout=2)
    assert out["ga"] == {"name": "ga", "state": "training", "global_round": 3, "reachable": True}
    assert out["la2"]["reachable"] is False and "refused" in out["la2"]["error"].lower()


def test_no_services_is_no_work():
    assert fetch_all([]) == {}
