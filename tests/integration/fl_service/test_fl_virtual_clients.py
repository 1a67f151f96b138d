"""A pool of virtual clients (config key `virtual_clients`): one client process runs twenty
clients under two real LAs, which see twenty ordinary children; the pool moves them one by
one, many at once and by config reload, and trains with them to the GA's finish."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fl_procs import Pipeline, free_port, send_signal

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}
MEMBERS = 20


def round_with(pipeline: Pipeline, la: str, since: float, names: set[str]) -> dict:
    """The first round of `la` ending after `since` in which all of `names` took part."""
    def found() -> dict | None:
        return next((r for r in pipeline[la].results()
                     if r["ts"] > since and names <= set(r["participants"])), None)

    pipeline.wait_for(la, lambda s: found() is not None, f"a round of {la} with {sorted(names)}")
    return found()


def children_are(pipeline: Pipeline, la: str, names: set[str]) -> dict:
    return pipeline.wait_for(la, lambda s: names <= set(s["children"]),
                             f"{sorted(names)} under {la}")


def test_a_pool_of_twenty_trains_under_two_las_and_its_clients_move(pipeline: Pipeline) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=10_000, min_participants=2, round_timeout_s=20,
                      **TRAINING)
    las = [pipeline.add("la", f"la{i}", parent=ga.address, local_rounds=1, min_participants=1,
                        round_timeout_s=10, **TRAINING) for i in range(2)]
    names = [f"c1-{i}" for i in range(MEMBERS)]
    entries = [{"name": name, "partition_id": i, "parent": las[i * 2 // MEMBERS].address}
               for i, name in enumerate(names)]
    pool = pipeline.add("client", "c1", virtual_clients=entries, num_partitions=MEMBERS,
                        partitioner="iid", **TRAINING)

    # Each LA sees its ten as ordinary children, and the GA completes rounds with them.
    children_are(pipeline, "la0", set(names[:10]))
    children_are(pipeline, "la1", set(names[10:]))
    pipeline.wait_for("ga", lambda s: s["global_round"] >= 2, "round 2")
    status = pool.status()
    assert (status["name"], status["role"]) == ("c1", "client")
    assert sorted(status["virtual_clients"]) == sorted(names)
    pid = status["pid"]
    assert {doc["pid"] for doc in status["virtual_clients"].values()} == {pid}
    assert status["virtual_clients"]["c1-3"]["parent_name"] == "la0"

    # One, by /control.
    moved = pool.request("POST", "/control", {"client": "c1-3", "parent": las[1].address})
    assert moved == {"client": "c1-3", "parent": las[1].address, "switched": True}
    since = time.time()
    round_with(pipeline, "la1", since, {"c1-3"})
    pipeline.wait_for("la0", lambda s: "c1-3" not in s["children"], "c1-3 gone from la0")

    # Several in one call, both ways.
    moves = {"c1-4": las[1].address, "c1-5": las[1].address, "c1-12": las[0].address,
             "c1-3": las[1].address}  # already there: not moved
    assert pool.request("POST", "/control", {"parents": moves}) == {
        "switched": ["c1-4", "c1-5", "c1-12"]}
    since = time.time()
    round_with(pipeline, "la1", since, {"c1-3", "c1-4", "c1-5"})
    round_with(pipeline, "la0", since, {"c1-12"})
    # Their farewells told the old LAs they left.
    pipeline.wait_for("la0", lambda s: not {"c1-4", "c1-5"} & set(s["children"]),
                      "c1-4 and c1-5 gone from la0")
    pipeline.wait_for("la1", lambda s: "c1-12" not in s["children"], "c1-12 gone from la1")

    # By editing the config file and SIGHUP (what placement does on the process runtime).
    config = pool.config
    config["virtual_clients"][6]["parent"] = las[1].address
    pool.config_path.write_text(yaml.safe_dump(config))
    send_signal(pool, signal.SIGHUP)
    since = time.time()
    round_with(pipeline, "la1", since, {"c1-6"})
    assert pool.status()["virtual_clients"]["c1-6"]["parent_name"] == "la1"

    # Stop after the round in progress: every virtual client finishes.
    ga.request("POST", "/control", {"global_rounds": 1})
    pipeline.wait_for("ga", lambda s: s["state"] == "finished", "the GA's finish")
    status = pipeline.wait_for("c1", lambda s: s["state"] == "finished", "the pool's finish")
    assert {doc["state"] for doc in status["virtual_clients"].values()} == {"finished"}
    assert status["pid"] == pid  # never restarted

    # One results file: every virtual client's lines, each as a client writes it.
    lines = pool.results()
    assert {line["service"] for line in lines} == set(names)
    assert {line["role"] for line in lines} == {"client"}
    assert {line["parent"] for line in lines if line["service"] == "c1-12"} == {"la1", "la0"}
    metrics = pool.request("GET", "/metrics")
    assert all(f'hfl_global_round{{role="client",service="{n}"}}' in metrics for n in names)


def test_a_bad_virtual_client_exits_2_with_one_line_naming_it(tmp_path: Path) -> None:
    entries = [{"name": "c1-0", "partition_id": 0, "parent": "127.0.0.1:1"},
               {"name": "c1-1", "partition_id": 1, "parent": "la1"}]
    path = tmp_path / "c1.yaml"
    path.write_text(yaml.safe_dump({"name": "c1", "port": free_port(), "num_partitions": 2,
                                    "state_dir": str(tmp_path / "state")}))
    done = subprocess.run(
        [sys.executable, "-m", "fl_service", "client", "--config", str(path)],
        capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("HFL_")},
             "HFL_VIRTUAL_CLIENTS": json.dumps(entries)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "fl_service: config error: virtual_clients[1].parent: expected host:port, got 'la1'"]
    assert not (tmp_path / "state").exists()


def test_under_mutual_tls_a_pool_speaks_only_for_the_names_its_certificate_lists(
        tls_pipeline: Pipeline) -> None:
    ga = tls_pipeline.add("ga", "ga", global_rounds=10_000, min_participants=1,
                          round_timeout_s=20, **TRAINING)
    la = tls_pipeline.add("la", "la0", parent=ga.address, local_rounds=1, min_participants=1,
                          round_timeout_s=10, **TRAINING)
    listed = ("c1-0", "c1-1")
    entries = [{"name": name, "partition_id": i, "parent": la.address}
               for i, name in enumerate([*listed, "c1-2"])]
    pool = tls_pipeline.add("client", "c1", start=False, virtual_clients=entries,
                            num_partitions=3, **TRAINING)
    tls_pipeline.ca.issue("c1", "client", listed)  # its certificate, now naming two of three
    pool.start()

    since = time.time()
    round_with(tls_pipeline, "la0", since, set(listed))
    status = tls_pipeline.wait_for("c1", lambda s: s["virtual_clients"]["c1-2"]["parent_error"],
                                   "c1-2 refused")
    refusal = status["virtual_clients"]["c1-2"]["parent_error"]
    assert "HTTP 403" in refusal and "may not speak for" in refusal and "c1-2" in refusal
    assert "c1-2" not in la.status()["children"]
