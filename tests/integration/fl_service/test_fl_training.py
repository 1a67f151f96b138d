"""Flat FL and HFL on digits with real processes: both learn, and the GA's links carry what
the hierarchy says they should."""

import pytest
from fl_procs import Pipeline

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}


def finished(status: dict) -> bool:
    return status["state"] == "finished"


def test_flat_fl_with_three_clients_reaches_90_percent(pipeline: Pipeline) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=8, min_participants=3, round_timeout_s=60,
                      **TRAINING)
    for i in range(3):
        pipeline.add("client", f"c{i}", parent=ga.address, partition_id=i, num_partitions=3,
                     **TRAINING)
    status = pipeline.wait_for("ga", finished, "finished run", timeout=180)
    assert status["last_metrics"]["accuracy"] >= 0.90
    rounds = ga.results()
    assert [r["global_round"] for r in rounds] == list(range(1, 9))
    assert all(r["participants"] == ["c0", "c1", "c2"] for r in rounds)
    # Every client took part in every round, and each round's weight is this round's examples.
    assert rounds[-1]["num_examples"] == sum(
        pipeline[f"c{i}"].status()["num_examples"] for i in range(3))
    assert status["final_model"].endswith("final_model.pt")
    for i in range(3):
        pipeline.wait_for(f"c{i}", finished, "finished state", timeout=30)
