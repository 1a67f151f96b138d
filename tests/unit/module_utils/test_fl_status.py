"""fl_status's fetch: live services answer with their /status, dead ones are reported, not fatal."""

import json

import pytest
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (
    fetch_all,
    tls_options,
)
from pki_fixtures import make_ca, write_pki


def test_live_and_dead_services_side_by_side(serve, closed_port):
    server = serve({"GET": (200, {"name": "ga", "state": "training", "global_round": 3})})
    out = fetch_all([
        {"name": "ga", "url": f"http://127.0.0.1:{server}/status"},
        {"name": "la2", "url": f"http://127.0.0.1:{closed_port}/status"},
    ], timeout=2)
    assert out["ga"] == {"name": "ga", "state": "training", "global_round": 3, "reachable": True}
    assert out["la2"]["reachable"] is False and "refused" in out["la2"]["error"].lower()


def test_no_services_is_no_work():
    assert fetch_all([]) == {}


@pytest.fixture
def pki(tmp_path):
    return write_pki(tmp_path / "pki", {"ga": ("global_aggregator", "127.0.0.1"),
                                        "la1": ("local_aggregator", "127.0.0.1")})


def test_an_https_service_is_read_with_the_pipeline_ca_and_a_client_certificate(serve, pki):
    server = serve({"GET": (200, {"name": "la1"})},
                   tls=(pki / "services/la1.crt", pki / "services/la1.key", pki / "ca.crt"))
    url = f"https://127.0.0.1:{server}/status"
    tls = tls_options(str(pki / "ca.crt"), str(pki / "services/ga.crt"),
                      str(pki / "services/ga.key"))
    assert fetch_all([{"name": "la1", "url": url}], 5, tls)["la1"] == {
        "name": "la1", "peer": "ga", "reachable": True}
    # The CA alone verifies the service but presents no certificate.
    assert fetch_all([{"name": "la1", "url": url}], 5, tls_options(str(pki / "ca.crt")))[
        "la1"]["peer"] is None


def test_an_https_service_of_another_ca_is_not_read(serve, pki, tmp_path):
    other = write_pki(tmp_path / "other", {"la1": ("local_aggregator", "127.0.0.1")},
                      ca=make_ca("hfl-other CA"))
    server = serve({"GET": (200, {"name": "la1"})},
                   tls=(other / "services/la1.crt", other / "services/la1.key",
                        other / "ca.crt"))
    tls = tls_options(str(pki / "ca.crt"), str(pki / "services/ga.crt"),
                      str(pki / "services/ga.key"))
    out = fetch_all([{"name": "la1", "url": f"https://127.0.0.1:{server}/status"}], 5, tls)
    assert out["la1"]["reachable"] is False
    assert "CERTIFICATE_VERIFY_FAILED" in out["la1"]["error"], out


def test_tls_options_are_only_those_given():
    assert tls_options() is None
    assert tls_options("ca.crt", "c.crt", "c.key") == {
        "ca_path": "ca.crt", "client_cert": "c.crt", "client_key": "c.key"}


# ---------------------------------------------------------------- Watch: waits that fail fast
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (  # noqa: E402
    WaitFailed,
    Watch,
    podman_probe,
)

SERVICES = [{"name": "ga", "url": "u-ga", "parent": None},
            {"name": "la1", "url": "u-la1", "parent": "ga"}]
UP = {"reachable": True, "state": "waiting"}
REFUSED = {"reachable": False, "error": "[Errno 111] Connection refused", "timed_out": False}
TIMEOUT = {"reachable": False, "error": "timed out", "timed_out": True}


class Scripted:
    """A fetch_all stand-in that answers one scripted poll per call; a clock that each poll and
    each sleep moves on."""

    def __init__(self, polls):
        self.polls, self.now = list(polls), 100.0

    def fetch(self, services, timeout):
        """Each answer names its service and pipeline p, unless the script says otherwise."""
        self.now += 0.1
        poll = self.polls.pop(0)
        return {s["name"]: ({"name": s["name"], "pipeline": "p", **poll[s["name"]]}
                            if poll[s["name"]].get("reachable") else dict(poll[s["name"]]))
                for s in services}

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def watch(polls, probe=None, services=SERVICES, **identity):
    s = Scripted(polls)
    return Watch(services, probe=probe, fetch=s.fetch, clock=s.clock, **identity), s


def la(error=None, age=None, **extra):
    return {**UP, "parent": "ga:8080", "parent_error": error, "parent_error_age_s": age, **extra}


def test_reachable_waits_for_a_parent_still_starting_then_succeeds():
    # la1 failed to join while the GA was not up yet (its attempt is older than the GA's
    # answer), then joins: no failure, the wait ends at the poll after.
    w, s = watch([
        {"ga": REFUSED, "la1": la("ga:8080: [Errno 111] Connection refused", 0.5)},
        {"ga": UP, "la1": la("ga:8080: [Errno 111] Connection refused", 2.6)},
        {"ga": UP, "la1": la()},
    ])
    assert w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)["la1"]["parent_error"] is None


def test_a_child_that_cannot_resolve_an_answering_parent_fails_at_its_next_attempt():
    err = "ga:8080: [Errno -2] Name or service not known"
    w, s = watch([
        {"ga": UP, "la1": la(err, 1.0)},   # attempt before the GA was seen: undecided
        {"ga": UP, "la1": la(err, 0.3)},   # a retry after the GA answered: decided
    ])
    with pytest.raises(WaitFailed) as failed:
        w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)
    assert str(failed.value) == ("la1: cannot reach its parent ga at ga:8080, which answers "
                                 f"/status: {err}")


def test_a_child_still_on_its_old_parent_is_not_judged_against_the_new_one():
    # Placement moved la1 to the GA (port 8080) and signalled it; its last failure is about the
    # old parent (port 9090) until it takes the move up, a moment later.
    services = [{"name": "ga", "url": "http://ga:8080/status"},
                {"name": "la1", "url": "http://la1:8081/status", "parent": "ga"}]
    old = {**la("old:9090: [Errno 111] Connection refused", 0.1), "parent": "old:9090"}
    w, s = watch([{"ga": UP, "la1": old}, {"ga": UP, "la1": old}, {"ga": UP, "la1": la()}],
                 services=services)
    assert w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)["la1"]["parent"] == "ga:8080"


POOL = [*SERVICES, {"name": "c1", "url": "u-c1", "parent": None,
                    "virtual_clients": {"c1-0": {"parent": "la1"}, "c1-1": {"parent": "ga"}}}]


def pool(**clients):
    return {**UP, "virtual_clients": {name: {"name": name, "pipeline": "p", **doc}
                                      for name, doc in clients.items()}}


def test_a_pools_virtual_clients_are_each_judged_against_their_own_parent():
    err = "la1:8081: [Errno 111] Connection refused"
    joined = {"state": "waiting", "parent": "ga:8080", "parent_error": None}
    w, s = watch([
        {"ga": UP, "la1": la(), "c1": pool(**{"c1-1": joined})},  # c1-0 not listed yet
        {"ga": UP, "la1": la(), "c1": pool(**{"c1-0": {**joined, "parent": "la1:8081"},
                                              "c1-1": joined})},
    ], services=POOL)
    statuses = w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)
    assert statuses["c1-0"]["parent"] == "la1:8081" and statuses["c1-1"]["reachable"]
    failing = {"ga": UP, "la1": la(), "c1": pool(**{
        "c1-0": {"parent": "la1:8081", "parent_error": err, "parent_error_age_s": 0.1},
        "c1-1": joined})}
    w, s = watch([failing, failing], services=POOL)  # the second attempt began after la1 answered
    with pytest.raises(WaitFailed) as failed:
        w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)
    assert str(failed.value) == ("c1-0: cannot reach its parent la1 at la1:8081, which answers "
                                 f"/status: {err}")


def test_a_pool_that_does_not_answer_leaves_its_virtual_clients_waiting_and_is_no_root():
    w, s = watch([{"ga": {**UP, "state": "finished"}, "la1": la(), "c1": REFUSED}],
                 services=POOL)
    assert w.roots() == ["ga"]
    with pytest.raises(WaitFailed) as failed:
        w.wait("reachable", timeout=1, poll_s=2, sleep=s.sleep)
    assert "c1-0: not answering /status: its pool c1: [Errno 111] Connection refused" in str(
        failed.value)


def test_no_parent_error_without_the_parent_answering():
    w, s = watch([{"ga": REFUSED, "la1": la("ga:8080: refused", 0.1)}] * 3)
    with pytest.raises(WaitFailed) as failed:
        w.wait("reachable", timeout=5, poll_s=2, sleep=s.sleep)
    assert str(failed.value).startswith("not every service answers /status and reaches its "
                                        "parent within 5 s:\nga: not answering /status: "
                                        "[Errno 111]")


def test_a_probe_names_a_dead_service_at_once():
    w, s = watch([{"ga": REFUSED, "la1": la()}],
                 probe=lambda names: {"ga": "ga: its container exited; boom"} if "ga" in names
                 else {})
    with pytest.raises(WaitFailed, match="ga: its container exited; boom"):
        w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)


def test_finished_ends_at_the_ga_finishing_and_fails_when_it_stops_answering():
    done = {**UP, "state": "finished"}
    w, s = watch([{"ga": UP, "la1": la()}, {"ga": done, "la1": la()}])
    assert w.wait("finished", timeout=60, poll_s=2, sleep=s.sleep)["ga"]["state"] == "finished"
    w, s = watch([{"ga": UP, "la1": la()}, {"ga": REFUSED, "la1": la()}])
    with pytest.raises(WaitFailed, match="ga: the global aggregator stopped answering"):
        w.wait("finished", timeout=600, poll_s=2, sleep=s.sleep)
    # A slow answer is not a dead GA until it repeats.
    w, s = watch([{"ga": TIMEOUT, "la1": la()}, {"ga": TIMEOUT, "la1": la()},
                  {"ga": {**UP, "state": "finished"}, "la1": la()}])
    assert w.wait("finished", timeout=600, poll_s=2, sleep=s.sleep)["ga"]["reachable"]


def test_a_started_service_that_stops_answering_fails_with_its_log(tmp_path):
    log = tmp_path / "service.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "FileNotFoundError: cifar-10\n")
    # As on a client's host: its own service (started, with its log) and its parent, listed
    # only to judge it (its own host's check waits for it and reports it).
    services = [{"name": "ga", "url": "u-ga", "wait": False},
                {"name": "la1", "url": "u-la1", "parent": "ga", "started": True,
                 "log": str(log)}]
    w, s = watch([{"ga": UP, "la1": REFUSED}], services=services)
    with pytest.raises(WaitFailed) as failed:
        w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)
    lines = str(failed.value).splitlines()
    assert lines[0] == ("la1: stopped answering u-la1 after it started: [Errno 111] Connection "
                        f"refused; the end of its log {log}:")
    assert lines[1:] == [f"line {i}" for i in range(16, 30)] + ["FileNotFoundError: cifar-10"]
    # The parent not answering holds nothing up and fails nothing here.
    w, s = watch([{"ga": REFUSED, "la1": la()}], services=services)
    assert w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)["ga"] == REFUSED


@pytest.mark.parametrize(("answer", "identity", "seen", "wanted"), [
    ({"name": "other"}, {}, "name 'other'", "name 'ga'"),
    ({"pipeline": "q"}, {"pipeline": "p"}, "name 'ga', pipeline 'q'", "name 'ga', pipeline 'p'"),
    ({"pid": 41}, {"pipeline": "p", "pids": {"ga": 42}}, "name 'ga', pipeline 'p', pid 41",
     "name 'ga', pipeline 'p', pid 42"),
])
def test_a_port_answered_by_another_service_fails_at_once(answer, identity, seen, wanted):
    services = [{"name": "ga", "url": "http://h:8080/status", "started": True},
                {"name": "la1", "url": "http://h:8081/status", "parent": "ga"}]
    w, s = watch([{"ga": {**UP, **answer}, "la1": la(pid=7)}], services=services, **identity)
    with pytest.raises(WaitFailed) as failed:
        w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)
    assert str(failed.value) == (f"ga: port 8080 (http://h:8080/status) answers as {seen}, not "
                                 f"as {wanted}: another process holds the port")
    assert failed.value.statuses["ga"]["impostor"] is True


def test_services_answering_as_themselves_pass_the_identity_check():
    w, s = watch([{"ga": {**UP, "pid": 42}, "la1": la(pid=7)}], pipeline="p",
                 pids={"ga": 42, "la1": 7})
    assert w.wait("reachable", timeout=60, poll_s=2, sleep=s.sleep)["ga"]["pid"] == 42


def test_podman_probe_reads_pods_and_gives_the_log_tail():
    pods = [{"Labels": {"app.kubernetes.io/instance": "ga"}, "InfraId": "i1",
             "Containers": [{"Id": "i1"}, {"Id": "c1"}]},
            {"Labels": {"app.kubernetes.io/instance": "la1"}, "InfraId": "i2",
             "Containers": [{"Id": "i2"}, {"Id": "c2"}]}]
    inspect = [{"Id": "c1", "Name": "ga-pod-0-fl-service", "RestartCount": 2,
                "State": {"Status": "running", "ExitCode": 0, "Error": ""}},
               {"Id": "c2", "Name": "la1-pod-0-fl-service", "RestartCount": 0,
                "State": {"Status": "running"}}]
    calls = []

    def run(argv):
        calls.append(argv)
        if argv[1:3] == ["pod", "ps"]:
            return 0, json.dumps(pods), ""
        if argv[1:3] == ["container", "inspect"]:
            return 0, json.dumps(inspect), ""
        return 0, "", "Traceback...\nValueError: boom\n"

    gone = podman_probe(run, "demo")(["ga", "la1", "c9"])
    assert gone == {
        "ga": "ga: its container ga-pod-0-fl-service is running (restarted 2 times after "
              "exiting); the end of its log:\nTraceback...\nValueError: boom",
        "c9": "c9: no pod of pipeline demo on this host",
    }
    assert calls[0][-1] == "label=hfl.io/pipeline=demo"
