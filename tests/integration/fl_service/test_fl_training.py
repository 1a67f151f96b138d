"""Flat FL and HFL on digits with real processes: both learn, and the GA's links carry what
the hierarchy says they should."""

from pathlib import Path

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
    # What a service writes is its user's alone: the state folder 0700, every file in it 0600.
    state = Path(ga.config["state_dir"])
    assert state.stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in state.iterdir() if p.is_file()}
    assert {"results.jsonl", "checkpoint.pt", "final_model.pt"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


def model_bytes() -> int:
    from fl_service.tasks import digits

    model = digits.load_model({"seed": 0})
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def start_hfl(pipeline: Pipeline, global_rounds: int, **ga_config) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=global_rounds, min_participants=2,
                      round_timeout_s=60, **TRAINING, **ga_config)
    for la in ("la0", "la1"):
        pipeline.add("la", la, parent=ga.address, local_rounds=2, min_participants=2,
                     round_timeout_s=30, **TRAINING)
    for i in range(4):
        parent = pipeline[f"la{i // 2}"]
        pipeline.add("client", f"c{i}", parent=parent.address, partition_id=i,
                     num_partitions=4, **TRAINING)


def test_hfl_two_las_four_clients_learns_and_ga_links_carry_two_models_per_la_round(
    pipeline: Pipeline,
) -> None:
    global_rounds = 6
    start_hfl(pipeline, global_rounds)
    status = pipeline.wait_for("ga", finished, "finished run", timeout=180)
    assert status["last_metrics"]["accuracy"] >= 0.90
    rounds = pipeline["ga"].results()
    assert [r["participants"] for r in rounds] == [["la0", "la1"]] * global_rounds
    # Each LA ran two local rounds per global round with both its clients.
    la_rounds = pipeline["la0"].results()
    assert [(r["global_round"], r["local_round"]) for r in la_rounds] == [
        (g, lr) for g in range(1, global_rounds + 1) for lr in (1, 2)]
    assert all(r["participants"] == ["c0", "c1"] for r in la_rounds)
    # The LA reports the examples behind its aggregate, not a running total.
    assert [r["num_examples"] for r in rounds] == [
        sum(pipeline[f"c{i}"].status()["num_examples"] for i in range(4))] * global_rounds
    # Measured at the GA's transport: one model down and one up per LA and global round.
    links = status["links"]
    assert sorted(links) == ["la0", "la1"]
    measured = sum(link["sent_bytes"] + link["received_bytes"] for link in links.values())
    expected = 2 * model_bytes() * 2 * global_rounds
    assert abs(measured - expected) <= 0.05 * expected, (measured, expected)
    # The per-round byte deltas in results.jsonl add up to what the link counters say.
    per_round = sum(v["sent_bytes"] + v["received_bytes"]
                    for r in rounds for v in r["links"].values())
    assert per_round <= measured
