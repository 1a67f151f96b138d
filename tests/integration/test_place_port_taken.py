"""Placement checks what it started: a service whose port another process holds (and answers
HTTP 200 on over mutual TLS with the service's own certificate, claiming its name) is reported
failed by place.yml, naming the service, the port and the service's own error, never
"started"."""

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from hfl_helpers import ROOT, local_inventory, playbook, stop_processes_under

pytestmark = pytest.mark.integration


class Impostor(BaseHTTPRequestHandler):
    """Answers 200 to everything, with a /status naming the GA of the pipeline."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"name": "ga", "pipeline": "flat", "state": "waiting"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_service_that_cannot_bind_its_port_fails_placement(tmp_path) -> None:
    def one_client(tiers: dict, cluster_vars: dict) -> None:
        tiers["edge"] = {"c1": tiers["edge"]["c1"]}

    inventory = local_inventory(tmp_path, one_client, source=ROOT / "inventories" / "local-flat")
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    port = hosts["hfl_cluster"]["children"]["cloud"]["hosts"]["ga"]["hfl_port"]
    # The strongest impostor: it holds the GA's own key (the pipeline's credentials first).
    made = playbook("pki.yml", inventory)
    assert made.rc == 0, made.why()
    pki = tmp_path / "controller" / "flat" / "pki"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "services" / "ga.crt", pki / "services" / "ga.key")
    holder = ThreadingHTTPServer(("127.0.0.1", port), Impostor)
    holder.socket = context.wrap_socket(holder.socket, server_side=True)
    threading.Thread(target=holder.serve_forever, daemon=True).start()
    try:
        run = playbook("place.yml", inventory)
        assert run.rc != 0, run.why()
        log = tmp_path / "hosts" / "flat" / "ga" / "service.log"
        assert run.failure is not None and run.failure.endswith(
            f"ga: exited with status 1 before answering on port {port}; port {port} answers as "
            f"name 'ga', pid None; its log {log} ends: fl_service: cannot serve on "
            f"127.0.0.1:{port}: [Errno 98] Address already in use"), run.why()
        assert "on ga" in run.failure
    finally:
        holder.shutdown()
        holder.server_close()
        playbook("reset.yml", inventory)
        stop_processes_under(tmp_path)
