"""Faults with real processes: a client or an LA dies, the GA restarts. Nothing stalls past a
round timeout and no completed round is lost."""

import time
import urllib.error

import pytest
import torch
from fl_procs import Pipeline

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}


def finished(status: dict) -> bool:
    return status["state"] == "finished"


def test_client_killed_mid_round_closes_the_round_with_the_others(pipeline: Pipeline) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=4, min_participants=2, round_timeout_s=3,
                      **TRAINING)
    # The clients start once the GA answers: a client started earlier backs off between
    # connection attempts, and the other two could finish all four rounds meanwhile.
    pipeline.wait_for("ga", lambda s: True, "the GA's first answer")
    # The victim trains long enough to be caught mid-round.
    pipeline.add("client", "victim", parent=ga.address, partition_id=0, num_partitions=3,
                 local_epochs=400, **TRAINING)
    for i in (1, 2):
        pipeline.add("client", f"c{i}", parent=ga.address, partition_id=i, num_partitions=3,
                     **TRAINING)
    status = pipeline.wait_for("victim", lambda s: s["state"] == "training", "training")
    pipeline["victim"].kill()
    pipeline.wait_for("ga", finished, "finished run", timeout=60)
    rounds = {r["global_round"]: r for r in ga.results()}
    assert sorted(rounds) == [1, 2, 3, 4]
    assert rounds[status["global_round"]]["participants"] == ["c1", "c2"]
    assert all(r["participants"] == ["c1", "c2"] for g, r in rounds.items()
               if g > status["global_round"])


def test_la_killed_mid_run_the_other_la_carries_on(pipeline: Pipeline) -> None:
    ga = pipeline.add_hierarchy(
        [2, 2], ga=dict(global_rounds=6, min_participants=1, round_timeout_s=8),
        la=dict(local_rounds=1, min_participants=2, round_timeout_s=4), **TRAINING)
    pipeline.wait_for("ga", lambda s: any(r["participants"] == ["la0", "la1"]
                                          for r in ga.results()), "a round with both LAs")
    pipeline["la1"].kill()
    killed_at = pipeline["ga"].status()["global_round"]
    pipeline.wait_for("ga", finished, "finished run", timeout=90)
    rounds = {r["global_round"]: r for r in ga.results()}
    assert sorted(rounds) == list(range(1, 7))
    assert all(r["participants"] == ["la0"] for g, r in rounds.items() if g > killed_at)


def test_ga_killed_and_restarted_resumes_at_the_right_round_with_its_history(
    pipeline: Pipeline,
) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=8, min_participants=2, round_timeout_s=30,
                      **TRAINING)
    for i in range(2):
        pipeline.add("client", f"c{i}", parent=ga.address, partition_id=i, num_partitions=2,
                     **TRAINING)
    pipeline.wait_for("ga", lambda s: s["global_round"] >= 3 and s["last_metrics"]["accuracy"],
                      "three rounds")
    ga.kill()
    checkpoint_path = f"{ga.config['state_dir']}/checkpoint.pt"
    before = torch.load(checkpoint_path, weights_only=True)
    assert 0 < before["round"] < 8
    restarted_at = time.time()
    ga.start()
    # Its very first answer already carries the resumed round: a readiness probe or the
    # orchestrator never sees a restarted GA back at round 0.
    first = pipeline.wait_for("ga", lambda s: True, "the restarted GA's first answer")
    assert first["global_round"] >= before["round"]
    status = pipeline.wait_for("ga", finished, "finished run after restart", timeout=120)
    after = torch.load(checkpoint_path, weights_only=True)
    assert after["history"][: before["round"]] == before["history"]
    assert [h["global_round"] for h in after["history"]] == list(range(1, 9))
    resumed = [r for r in ga.results() if r["ts"] > restarted_at]
    assert resumed[0]["global_round"] == before["round"] + 1
    # Both clients reconnected to the new GA process by themselves.
    assert all(r["participants"] == ["c0", "c1"] for r in resumed)
    assert status["last_metrics"]["accuracy"] == after["history"][-1]["accuracy"]


def test_aggregators_told_a_child_is_gone_close_their_round_without_it(
        pipeline: Pipeline) -> None:
    # Round deadlines far beyond the test's waits: only /control {"gone": ...} (what the
    # orchestrator sends on a failure) can close the rounds the dead services were in.
    ga = pipeline.add_hierarchy(
        [1, 2], ga=dict(global_rounds=100_000, min_participants=1, round_timeout_s=3600),
        la=dict(local_rounds=1, min_participants=1, round_timeout_s=3600), **TRAINING)
    pipeline.wait_for("ga", lambda s: any(r["participants"] == ["la0", "la1"]
                                          for r in ga.results()), "a round with both LAs")
    with pytest.raises(urllib.error.HTTPError) as bad:
        ga.request("POST", "/control", {"gone": "la1"})
    assert bad.value.code == 400

    # A client dies: its LA's open local round (and so the GA's round) waits for it until told.
    pipeline["c2"].kill()
    at = ga.status()["global_round"]
    assert pipeline["la1"].request("POST", "/control", {"gone": ["c2"]}) == {"gone": ["c2"]}
    pipeline.wait_for("ga", lambda s: s["global_round"] >= at + 2, "two more global rounds",
                      timeout=120)
    assert {r["global_round"]: r for r in ga.results()}[at + 1]["participants"] == ["la0", "la1"]

    # An LA dies: the GA's open global round waits for it until told.
    pipeline["la1"].kill()
    killed_at = ga.status()["global_round"]
    assert ga.request("POST", "/control", {"gone": ["la1"]}) == {"gone": ["la1"]}
    pipeline.wait_for("ga", lambda s: s["global_round"] >= killed_at + 2,
                      "two more global rounds", timeout=120)
    assert {r["global_round"]: r for r in ga.results()}[killed_at + 1]["participants"] == ["la0"]
