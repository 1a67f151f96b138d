"""The attacks of issue 9 against a real pipeline placed by site.yml on the local inventory with
its default settings (mutual TLS from the controller's per-pipeline CA), sent from this test
process as an attacker on the network would send them:

- without a certificate: /status says only that the service is alive; join, task, update, leave,
  /metrics and /control are refused (401), and plain HTTP gets no answer at all;
- with a valid certificate of the pipeline (a client's, read from the controller's pki folder)
  speaking for another service: refused (403), and /control is not a client's;
- with a valid client certificate (a client the CA signed but the plan does not have): counts of
  10^12, 10^39 and 10^400 and NaN/Inf header fields are each refused with a reason, and neither
  change the global model beyond the cap nor stop the GA or an LA;
- 300 idle connections to the GA do not stop rounds from completing;
- the controller's certificate ends the run; after it, a 300 MB body is refused without the GA's
  memory growing by 10 MB.
A service that cannot bind its port is reported failed by placement: test_place_port_taken.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hfl_helpers import (
    ROOT,
    call,
    local_inventory,
    pki_context,
    playbook,
    stop_processes_under,
)
from pki_fixtures import issue_from

from fl_service.transport import FRAME_TYPE, client_context

# The attacks of fl_service's own tests (forged updates, misnamed calls, the limits' sockets).
sys.path.insert(0, str(ROOT / "tests" / "integration" / "fl_service"))
import test_fl_forged_updates as forged  # noqa: E402
from test_fl_limits import HUGE, connect, post_huge  # noqa: E402
from test_fl_mtls import speaking_as  # noqa: E402

pytestmark = pytest.mark.integration
PIPELINE = "demo"
MB = 1024 * 1024


class Site:
    """The pipeline site.yml placed: its services' URLs, pids and results, and the pipeline's
    credentials as the controller holds them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = tmp / "controller" / PIPELINE / "pki"
        self.controller = pki_context(self.pki)
        self.nobody = pki_context(self.pki, None)

    def folder(self, service: str) -> Path:
        return self.tmp / "hosts" / PIPELINE / service

    def port(self, service: str) -> int:
        return self.config(service)["port"]

    def config(self, service: str) -> dict:
        return yaml.safe_load((self.folder(service) / "config.yaml").read_text())

    def url(self, service: str, path: str) -> str:
        return f"https://127.0.0.1:{self.port(service)}{path}"

    def status(self, service: str) -> dict:
        code, doc = call(self.url(service, "/status"), self.controller)
        assert code == 200, (service, code, doc)
        return doc

    def pid(self, service: str) -> int:
        return int((self.folder(service) / "pid").read_text())

    def results(self, service: str) -> list[dict]:
        path = self.folder(service) / "state" / "results.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def wait_rounds(self, n: int, what: str, timeout: float = 300) -> dict:
        """Wait until the GA completed ``n`` more global rounds than now."""
        target = self.status("ga")["global_round"] + n
        deadline = time.monotonic() + timeout
        while (status := self.status("ga"))["global_round"] < target:
            assert status["state"] != "finished", f"the run finished during {what}"
            assert time.monotonic() < deadline, f"no {n} rounds in {timeout} s during {what}"
            time.sleep(0.5)
        return status

    def identity(self, name: str, role: str = "client") -> ssl.SSLContext:
        """A client of the pipeline's CA that the plan does not have."""
        cert, key = issue_from(self.pki, name, role, self.tmp / "attackers")
        return client_context(str(cert), str(key), str(self.pki / "ca.crt"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """site.yml with the local inventory's defaults, training until the controller stops it
    (no wait: the attacks run while it trains); everything is stopped at the end."""
    tmp = tmp_path_factory.mktemp("attacks")
    inventory = local_inventory(tmp, lambda tiers, cv: cv.update(hfl_global_rounds=100_000))
    try:
        run = playbook("site.yml", inventory, "-e", "hfl_wait=false")
        assert run.rc == 0, run.why()
        placed = Site(tmp)
        placed.wait_rounds(1, "the first round")
        yield placed
    finally:
        playbook("reset.yml", inventory)
        stop_processes_under(tmp)


def test_the_pipeline_runs_mutual_tls_by_default(site):
    config = site.config("c1")
    tls = site.folder("c1") / "tls"
    assert (config["tls_cert"], config["tls_key"], config["tls_ca"]) == (
        str(tls / "service.crt"), str(tls / "service.key"), str(tls / "ca.crt"))
    assert (tls / "service.key").stat().st_mode & 0o777 == 0o600
    assert "TLS IS OFF" not in (site.folder("ga") / "service.log").read_text()


def test_without_a_certificate_a_service_says_only_that_it_is_alive(site):
    for service in ("ga", "la1", "c1"):
        assert call(site.url(service, "/status"), site.nobody) == (200, {"alive": True})
        for path, body in (("/metrics", None), ("/control", {"global_rounds": 1})):
            code, reply = call(site.url(service, path), site.nobody, body)
            assert code == 401 and "a client certificate" in reply["error"], (service, path)
    for aggregator in ("ga", "la1"):
        for (method, path), body in speaking_as("c1").items():
            code, reply = protocol_call(site, aggregator, method, path, body, site.nobody)
            assert code == 401 and "a client certificate" in reply["error"], (aggregator, path)
    # Plain HTTP on the TLS port gets no HTTP answer at all.
    with pytest.raises((OSError, http.client.HTTPException)):
        call(site.url("ga", "/status").replace("https:", "http:"))


def test_a_pipeline_certificate_speaking_for_another_service_is_refused(site):
    c1 = pki_context(site.pki, "c1")  # a real client's credentials
    for (method, path), body in speaking_as("c2").items():
        code, reply = protocol_call(site, "la1", method, path, body, c1)
        assert (code, reply) == (403, {"error": "certificate 'c1' may not speak for 'c2'"}), path
    for service in ("ga", "la1", "c2"):
        code, reply = call(site.url(service, "/control"), c1, {"global_rounds": 1})
        assert code == 403 and reply["error"].startswith("only the controller"), service
    # The forged leave dropped no one: c2 is still in la1's rounds.
    after = len(site.results("la1"))
    site.wait_rounds(2, "the misnamed calls' aftermath")
    assert all("c2" in r["participants"] for r in site.results("la1")[after:])


def test_forged_counts_neither_steer_nor_stop_training(site):
    identities = {name: site.identity(name) for name in forged.ATTACKS}
    rejected = {s: site.status(s)["rejected_updates"] for s in ("ga", "la1")}
    done = len(site.results("ga"))
    threads, at_ga = forged.launch(site.port("ga"), identities)
    la_threads, at_la = forged.launch(site.port("la1"), identities)
    for thread in threads + la_threads:
        thread.join(300)
    forged.assert_all_rejected(at_ga, "ga")
    forged.assert_all_rejected(at_la, "la1")
    site.wait_rounds(2, "after the forged updates")
    for service in ("ga", "la1"):
        assert site.status(service)["rejected_updates"] == rejected[service] + len(forged.ATTACKS)
    # Every later round took the honest children only, each with its own clients' count.
    rounds = site.results("ga")[done:]
    assert rounds and all(sorted(r["participants"]) == ["la1", "la2"] for r in rounds)
    las = {la: {r["global_round"]: r for r in site.results(la)} for la in ("la1", "la2")}
    for r in rounds:
        if all(r["global_round"] in las[la] for la in las):
            parts = [las[la][r["global_round"]] for la in las]
            assert r["num_examples"] == sum(p["num_examples"] for p in parts), r
            assert set().union(*(p["participants"] for p in parts)) <= {"c1", "c2", "c3", "c4"}


def test_300_idle_connections_do_not_stop_rounds_from_completing(site):
    idle = []
    try:
        for i in range(300):
            if i % 2:  # half finish the handshake and say nothing, half do not even say hello
                sock = connect(site.port("ga"), site.nobody)
            else:
                sock = socket.create_connection(("127.0.0.1", site.port("ga")), timeout=30)
            idle.append(sock)
        site.wait_rounds(2, "300 idle connections")
    finally:
        for sock in idle:
            sock.close()


def test_the_controller_alone_ends_the_run(site):
    ga = site.status("ga")
    code, reply = call(site.url("ga", "/control"), site.controller,
                       {"global_rounds": ga["global_round"] + 1})
    assert code == 200, reply
    deadline = time.monotonic() + 300
    while (status := site.status("ga"))["state"] != "finished":
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["global_round"] == ga["global_round"] + 1
    assert status["last_metrics"]["accuracy"] >= 0.8
    checkpoint = torch.load(site.folder("ga") / "state" / "checkpoint.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint["model"].values()
               if t.is_floating_point())


def test_a_300_mb_body_is_refused_without_the_ga_growing(site):
    before = rss_bytes(site.pid("ga"))
    reply, sent = post_huge(site.port("ga"), pki_context(site.pki, "c1"))
    assert reply.startswith("HTTP/1.1 413 ") and f"Content-Length {HUGE} is over" in reply
    assert sent < HUGE  # the GA closed the connection instead of reading
    growth = rss_bytes(site.pid("ga")) - before
    assert growth < 10 * MB, f"the GA grew by {growth} bytes"
    assert site.status("ga")["state"] == "finished"  # and it still answers


def protocol_call(site, service, method, path, body, context):
    """An FL protocol call as speaking_as() spells it, to ``service``."""
    kind = FRAME_TYPE if path == "/fl/update" else "application/json"
    return call(site.url(service, path), context, body, method=method, content_type=kind)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
