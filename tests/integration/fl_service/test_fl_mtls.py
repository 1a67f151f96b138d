"""Mutual TLS against a running GA -> LA -> clients pipeline (every link authenticated by a
certificate of the pipeline's CA): training completes, and each attack of issue 9 gets a refusal
while the rounds go on with the honest children only (docs/security.md)."""

import json
import ssl
import time
import urllib.error
import urllib.request

import pytest
from fl_procs import Pipeline, Service
from throwaway_pki import ThrowawayCA

from fl_service.transport import FRAME_TYPE, client_context, encode_frame

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}


def call(service: Service, method: str, path: str, body: bytes | None,
         tls: ssl.SSLContext) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of one request to `service` over TLS as `tls`."""
    kind = FRAME_TYPE if path == "/fl/update" else "application/json"
    request = urllib.request.Request(f"{service.url}{path}", data=body, method=method,
                                     headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def as_json(payload: dict) -> bytes:
    return json.dumps(payload).encode()


def speaking_as(name: str) -> dict[tuple[str, str], bytes | None]:
    """Every FL protocol call, each speaking for child `name`."""
    return {
        ("POST", "/fl/join"): as_json({"name": name, "role": "client", "num_examples": 100}),
        ("GET", f"/fl/task?name={name}"): None,
        ("POST", "/fl/update"): encode_frame({"task_id": "x", "name": name, "error": "x"}, None),
        ("POST", "/fl/leave"): as_json({"name": name}),
    }


def logged(service: Service, text: str, timeout: float = 10.0) -> None:
    """Wait until `service`'s log holds `text` (it may log just after it answered)."""
    deadline = time.monotonic() + timeout
    while text not in service.log_path.read_text():
        assert time.monotonic() < deadline, f"{service.name} never logged {text!r}"
        time.sleep(0.05)


def test_training_over_mutual_tls_refuses_every_unauthenticated_or_misnamed_call(
    tls_pipeline: Pipeline, tmp_path
) -> None:
    pipeline = tls_pipeline
    ga = pipeline.add("ga", "ga", global_rounds=100_000, min_participants=1, round_timeout_s=30,
                      **TRAINING)
    la = pipeline.add("la", "la0", parent=ga.address, local_rounds=1, min_participants=2,
                      round_timeout_s=30, **TRAINING)
    clients = [pipeline.add("client", f"c{i}", parent=la.address, partition_id=i,
                            num_partitions=2, **TRAINING) for i in range(2)]
    status = pipeline.wait_for("ga", lambda s: s["global_round"] >= 2, "training over mTLS")
    assert status["children"] == ["la0"] and "la0" in status["links"]

    # No certificate: nothing but "alive" from /status, 401 for everything else.
    nobody = pipeline.anonymous()
    for service in (ga, la, *clients):
        assert call(service, "GET", "/status", None, nobody) == (200, {"alive": True})
        for method, path in (("GET", "/metrics"), ("POST", "/control")):
            body = as_json({"global_rounds": 1}) if method == "POST" else None
            code, reply = call(service, method, path, body, nobody)
            assert code == 401 and "a client certificate" in reply["error"], (service.name, path)
    for aggregator in (ga, la):
        for (method, path), body in speaking_as("c1").items():
            code, reply = call(aggregator, method, path, body, nobody)
            assert code == 401 and "a client certificate" in reply["error"], path

    # A valid certificate claiming another child's name; an LA's certificate joining an LA.
    c0 = pipeline.identity("c0", "client")
    for (method, path), body in speaking_as("c1").items():
        code, reply = call(la, method, path, body, c0)
        assert (code, reply) == (403, {"error": "certificate 'c0' may not speak for 'c1'"}), path
    code, reply = call(la, "POST", "/fl/join", as_json({"name": "la1", "role": "client"}),
                       pipeline.identity("la1", "local_aggregator"))
    assert code == 403 and "a local_aggregator's children are of role client" in reply["error"]

    # /control is the controller's and the service's own: a client's certificate is refused.
    for service in (ga, la, clients[1]):
        code, reply = call(service, "POST", "/control", as_json({"reload": True}), c0)
        assert code == 403 and reply["error"].startswith(
            f"only the controller (hfl-controller) or {service.name} itself may control")
    own = pipeline.identity("la0", "local_aggregator")
    assert call(la, "POST", "/control", as_json({"reload": True}), own) == (
        200, {"parent": ga.address, "switched": False})

    # A certificate of another CA does not get through the handshake.
    stranger = ThrowawayCA(tmp_path / "other").issue("c1", "client")
    # (TLS 1.3: the client may learn of it at the handshake or at its first read.)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionResetError)):
        call(la, "GET", "/status", None,
             client_context(stranger["tls_cert"], stranger["tls_key"], str(pipeline.ca.ca_path)))
    logged(la, "TLS handshake with 127.0.0.1 failed: [SSL: CERTIFICATE_VERIFY_FAILED]")

    # The controller reads /metrics and ends the run.
    assert 'hfl_children{role="global_aggregator",service="ga"} 1.0' in ga.request(
        "GET", "/metrics")
    stop_at = ga.request("POST", "/control", {"global_rounds": 1})["global_rounds"]
    status = pipeline.wait_for("ga", lambda s: s["state"] == "finished", "finished run")
    assert status["global_round"] == stop_at and status["last_metrics"]["accuracy"] >= 0.8
    assert status["rejected_updates"] == 0 and la.status()["rejected_updates"] == 0
    # The forged leave for c1 dropped nothing: every round had both clients.
    assert all(r["participants"] == ["c0", "c1"] for r in la.results())
    assert all(r["participants"] == ["la0"] for r in ga.results())
    la_log = la.log_path.read_text()
    assert ("refused POST /fl/leave from certificate 'c0': certificate 'c0' may not speak for "
            "'c1' (HTTP 403)") in la_log
    assert "Traceback" not in la_log and "TLS IS OFF" not in la_log
