"""The GA's global_rounds can be lowered and raised while it runs (the orchestrator's stop)."""

import urllib.error

import pytest
from fl_procs import Pipeline

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}


def test_global_rounds_control_stops_and_resumes_the_run(pipeline: Pipeline) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=100_000, min_participants=2, round_timeout_s=30,
                      **TRAINING)
    for i in range(2):
        pipeline.add("client", f"c{i}", parent=ga.address, partition_id=i, num_partitions=2,
                     **TRAINING)
    pipeline.wait_for("ga", lambda s: s["global_round"] >= 3, "round 3")
    with pytest.raises(urllib.error.HTTPError) as bad:
        ga.request("POST", "/control", {"global_rounds": 0})
    assert bad.value.code == 400

    # Lower than the round in progress: that round still completes, then the GA finishes.
    stop_at = ga.request("POST", "/control", {"global_rounds": 1})["global_rounds"]
    assert stop_at >= 3
    status = pipeline.wait_for("ga", lambda s: s["state"] == "finished", "finished run")
    assert status["global_rounds"] == stop_at == len(ga.results())
    assert status["final_model"]
    pipeline.wait_for("c0", lambda s: s["state"] == "finished", "client finished")

    # More rounds: the same processes go on from where they stopped.
    more = ga.request("POST", "/control", {"global_rounds": stop_at + 2})
    assert more == {"global_rounds": stop_at + 2}
    status = pipeline.wait_for("ga", lambda s: s["state"] == "finished" and
                               s["global_round"] == stop_at + 2, "two more rounds")
    rounds = ga.results()
    assert [r["global_round"] for r in rounds] == list(range(1, stop_at + 3))
    # Every completed round's accuracy and loss, for a reader that polls less often.
    assert status["recent_metrics"] == [[r["global_round"], r["accuracy"], r["loss"]]
                                        for r in rounds]
    assert rounds[-1]["participants"] == ["c0", "c1"]
