"""Flower strategies through real HFL processes on digits: each strategy runs 3 global rounds
(GA + 2 LAs + 4 clients) with federated evaluation after each, no rejected update and no failed
aggregation; a FedAdam GA killed mid-run and restarted ends where an uninterrupted run ends.

The clients are started once per module and moved to each test's LAs with /control (they are
strategy-agnostic), so a strategy costs three process starts, not seven."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fl_procs import Pipeline, free_port

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}
FLOWER = "flwr.serverapp.strategy:"
KWARGS = {
    "FedProx": {"proximal_mu": 0.1},
    "FedAvgM": {"server_momentum": 0.9},
    "MultiKrum": {"num_nodes_to_select": 2},
    # The built-in app reports its training loss as "loss".
    "QFedAvg": {"client_learning_rate": 0.05, "train_loss_key": "loss"},
}
STRATEGIES = ["FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM", "FedMedian",
              "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "QFedAvg"]
# Bulyan needs 4 * num_malicious_nodes + 3 = 3 replies: it runs at la0 (3 clients); the GA
# (2 LAs) and la1 (1 client) use FedAvg.
NEEDS_THREE = {"Bulyan"}
CLIENTS_OF = {"la0": ["c0", "c1", "c2"], "la1": ["c3"]}


def finished(status: dict) -> bool:
    return status["state"] == "finished"


def strategy(name: str) -> dict:
    return {"strategy": FLOWER + name, "strategy_kwargs": KWARGS.get(name, {})}


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Four clients, parented nowhere until a test moves them to its LAs."""
    running = Pipeline(tmp_path_factory.mktemp("clients"))
    nowhere = f"127.0.0.1:{free_port()}"
    try:
        for i in range(4):
            running.add("client", f"c{i}", parent=nowhere, partition_id=i, num_partitions=4,
                        **TRAINING)
        yield running
    finally:
        running.close()


def move(clients: Pipeline, placement: dict[str, list[str]], addresses: dict[str, str]) -> None:
    """Switch each client to its LA (/control), retrying while a busy client answers late."""
    for la, names in placement.items():
        for name in names:
            deadline = time.monotonic() + 120
            while True:
                try:
                    clients[name].request("POST", "/control", {"parent": addresses[la]})
                    break
                except OSError:
                    if time.monotonic() > deadline or not clients[name].alive():
                        raise
                    time.sleep(0.5)


def start_hfl(pipeline: Pipeline, clients: Pipeline, ga_config: dict, la_configs: dict,
              **ga_keys) -> None:
    ga = pipeline.add("ga", "ga", min_participants=2, round_timeout_s=120, **TRAINING,
                      **ga_config, **ga_keys)
    for la, names in CLIENTS_OF.items():
        pipeline.add("la", la, parent=ga.address, local_rounds=1, min_participants=len(names),
                     round_timeout_s=60, **TRAINING, **la_configs[la])
    move(clients, CLIENTS_OF, {la: pipeline[la].address for la in CLIENTS_OF})


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_runs_hfl_with_federated_evaluation(
    pipeline: Pipeline, clients: Pipeline, name: str
) -> None:
    outer = strategy("FedAvg" if name in NEEDS_THREE else name)
    start_hfl(pipeline, clients, outer, {"la0": strategy(name), "la1": outer},
              global_rounds=3, evaluate_every=1)
    status = pipeline.wait_for("ga", finished, "finished run", timeout=400)
    rounds = pipeline["ga"].results()
    assert [r["global_round"] for r in rounds] == [1, 2, 3]
    assert all(r["participants"] == ["la0", "la1"] for r in rounds)
    assert all(math.isfinite(r["accuracy"]) and math.isfinite(r["loss"]) for r in rounds)
    for service in ("ga", "la0", "la1"):
        s = pipeline[service].status()
        assert (s["rejected_updates"], s["failed_aggregations"]) == (0, 0), (service, s)
    la_rounds = pipeline["la0"].results()
    train = [r for r in la_rounds if r.get("phase") != "evaluate"]
    assert [r["participants"] for r in train] == [CLIENTS_OF["la0"]] * 3
    assert all(r["train_metrics"]["num-examples"] == r["num_examples"] for r in train)
    # Federated evaluation after every round, through both tiers.
    evaluated = [r for r in la_rounds if r.get("phase") == "evaluate"]
    assert [r["participants"] for r in evaluated] == [CLIENTS_OF["la0"]] * 3
    la1_evaluated = [r for r in pipeline["la1"].results() if r.get("phase") == "evaluate"]
    total = evaluated[-1]["num_examples"] + la1_evaluated[-1]["num_examples"]
    for r in rounds:
        federated = r["federated"]
        assert set(federated) == {"accuracy", "loss", "num-examples"}, federated
        assert 0.0 <= federated["accuracy"] <= 1.0 and federated["num-examples"] == total
    assert status["last_federated_metrics"] == rounds[-1]["federated"]
    metrics = pipeline["ga"].request("GET", "/metrics")
    assert 'hfl_federated_metric{name="accuracy",role="global_aggregator",service="ga"}' \
           in metrics


def final_model(pipeline: Pipeline, ga: str) -> dict[str, torch.Tensor]:
    path = Path(pipeline[ga].config["state_dir"]) / "final_model.pt"
    return torch.load(path, weights_only=True)


def test_fedadam_ga_killed_and_restarted_ends_where_an_uninterrupted_run_ends(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Deterministic clients (one full batch per epoch) and one client per LA; the GA's
    strategy state (FedAdam's m_t, v_t) is what the restarted GA must carry on with."""
    (tmp_path / "clients").mkdir()
    own = Pipeline(tmp_path / "clients")
    clients_of = {"la0": ["c0"], "la1": ["c1"]}
    full_batch = {**TRAINING, "batch_size": 4096, "local_epochs": 2, "learning_rate": 0.1}
    rounds = 4
    try:
        nowhere = f"127.0.0.1:{free_port()}"
        for i in range(2):
            own.add("client", f"c{i}", parent=nowhere, partition_id=i, num_partitions=2,
                    **full_batch)
        outcome = {}
        for run in ("straight", "killed"):
            ga = pipeline.add("ga", f"ga-{run}", global_rounds=rounds, min_participants=2,
                              round_timeout_s=120, **full_batch, **strategy("FedAdam"))
            for la in clients_of:
                pipeline.add("la", f"{la}-{run}", parent=ga.address, min_participants=1,
                             round_timeout_s=60, **full_batch)
            move(own, clients_of, {la: pipeline[f"{la}-{run}"].address for la in clients_of})
            if run == "killed":
                pipeline.wait_for(ga.name, lambda s: s["global_round"] >= 3, "round 2 done")
                ga.kill()
                checkpoint = torch.load(Path(ga.config["state_dir"]) / "checkpoint.pt",
                                        weights_only=True)
                assert 2 <= checkpoint["round"] < rounds
                assert checkpoint["strategy_state"]  # FedAdam's moments went with it
                ga.start()
                pipeline.wait_for(ga.name, lambda s: True, "the restarted GA's first answer")
                assert "with the strategy's state" in ga.log_path.read_text()
            status = pipeline.wait_for(ga.name, finished, "finished run", timeout=400)
            assert status["rejected_updates"] == 0 and status["failed_aggregations"] == 0
            outcome[run] = (final_model(pipeline, ga.name), ga.results())
            for service in (ga.name, f"la0-{run}", f"la1-{run}"):
                pipeline[service].stop()
    finally:
        own.close()
    (straight, straight_rounds), (killed, killed_rounds) = outcome["straight"], outcome["killed"]
    assert [r["global_round"] for r in killed_rounds][-1] == rounds
    gaps = {k: float((straight[k] - killed[k]).abs().max()) for k in straight}
    print(f"largest difference between the runs' final weights: {max(gaps.values()):.3g}")
    assert max(gaps.values()) < 1e-4, gaps
    assert killed_rounds[-1]["accuracy"] == pytest.approx(straight_rounds[-1]["accuracy"],
                                                          abs=0.01)
