"""A running client moves to another LA without a restart, by /control and by config reload
(SIGHUP), and takes part in its new LA's next rounds."""

import signal
import time

import pytest
import yaml
from fl_procs import Pipeline, send_signal

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}


def rounds_after(pipeline: Pipeline, la: str, since: float) -> list[dict]:
    return [r for r in pipeline[la].results() if r["ts"] > since]


def wait_for_rounds_with(pipeline: Pipeline, la: str, client: str, since: float) -> list[dict]:
    """The LA's first two rounds ending after `since` (the first may have opened before)."""
    pipeline.wait_for(la, lambda s: len(rounds_after(pipeline, la, since)) >= 2,
                      f"two rounds of {la}")
    return rounds_after(pipeline, la, since)[:2]


def test_client_moves_between_las_mid_run_without_restart(pipeline: Pipeline) -> None:
    pipeline.add_hierarchy(
        [2, 2], ga=dict(global_rounds=10_000, min_participants=2, round_timeout_s=30),
        la=dict(local_rounds=1, min_participants=1, round_timeout_s=10), **TRAINING)
    pipeline.wait_for("la1", lambda s: sorted(s["children"]) == ["c2", "c3"], "c2 and c3")
    pipeline.wait_for("ga", lambda s: s["global_round"] >= 2, "round 2")
    mover = pipeline["c3"]
    pid = mover.status()["pid"]

    # 1. Through the control endpoint.
    reply = mover.request("POST", "/control", {"parent": pipeline["la0"].address})
    assert reply["switched"] is True
    joined = pipeline.wait_for("c3", lambda s: s["parent_name"] == "la0", "join of la0")
    since = time.time()
    assert any("c3" in r["participants"] for r in wait_for_rounds_with(pipeline, "la0", "c3",
                                                                        since))
    pipeline.wait_for("la1", lambda s: "c3" not in s["children"], "c3 gone from la1")
    assert all("c3" not in r["participants"] for r in rounds_after(pipeline, "la1", since))

    # 2. Through a config reload (what placement does on the process runtime).
    config = mover.config
    config["parent"] = pipeline["la1"].address
    mover.config_path.write_text(yaml.safe_dump(config))
    send_signal(mover, signal.SIGHUP)
    pipeline.wait_for("c3", lambda s: s["parent_name"] == "la1", "join of la1")
    since = time.time()
    assert any("c3" in r["participants"] for r in wait_for_rounds_with(pipeline, "la1", "c3",
                                                                        since))
    assert mover.status()["pid"] == pid == joined["pid"]  # never restarted
