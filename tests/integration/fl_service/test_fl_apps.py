"""Flower apps through the hierarchy, real processes: our example app (examples/quickstart-hfl,
a Message-API ClientApp) trains GA + 2 LAs + 4 clients on digits to >= 0.85, and a legacy
client_fn/NumPyClient app (examples/legacy-numpyclient) trains through the same client path."""

from pathlib import Path

import pytest
from fl_procs import Pipeline

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
QUICKSTART = {"app_dir": str(EXAMPLES / "quickstart-hfl")}
LEGACY = {"app_dir": str(EXAMPLES / "legacy-numpyclient")}


def finished(status: dict) -> bool:
    return status["state"] == "finished"


def test_quickstart_example_trains_two_las_four_clients_to_85_percent(pipeline: Pipeline
                                                                       ) -> None:
    global_rounds = 5
    ga = pipeline.add("ga", "ga", global_rounds=global_rounds, min_participants=2,
                      round_timeout_s=120, model="quickstart_hfl.task:Net",
                      evaluate_fn="quickstart_hfl.server_app:global_evaluate",
                      evaluate_every=global_rounds, **QUICKSTART)
    for la in ("la0", "la1"):
        pipeline.add("la", la, parent=ga.address, local_rounds=2, min_participants=2,
                     round_timeout_s=60, **QUICKSTART)
    for i in range(4):
        pipeline.add("client", f"c{i}", parent=pipeline[f"la{i // 2}"].address,
                     partition_id=i, num_partitions=4,
                     run_config={"learning-rate": 0.05}, **QUICKSTART)
    status = pipeline.wait_for("ga", finished, "finished run", timeout=420)
    assert status["last_metrics"]["accuracy"] >= 0.85, status["last_metrics"]
    assert [r["participants"] for r in ga.results()] == [["la0", "la1"]] * global_rounds
    lines = pipeline["c0"].results()
    train = [r for r in lines if r["type"] == "train"]
    # Two local rounds per global round, each one train task, all of it through the ClientApp.
    assert len(train) == 2 * global_rounds and all("error" not in r for r in lines)
    assert train[-1]["metrics"]["num-examples"] == train[-1]["num_examples"] > 0
    assert train[-1]["loss"] == train[-1]["metrics"]["train_loss"]
    assert "histogram" not in train[-1]  # a user app reports none
    # The GA's federated evaluation reached the clients' @app.evaluate().
    evaluated = [r for r in lines if r["type"] == "evaluate"]
    assert evaluated and evaluated[-1]["accuracy"] == evaluated[-1]["metrics"]["eval_acc"]
    client = pipeline["c0"].status()
    assert client["last_metrics"]["accuracy"] is not None and client["histogram"] == {}


def test_legacy_numpyclient_app_trains_through_the_same_path(pipeline: Pipeline) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=4, min_participants=1, round_timeout_s=120,
                      model="legacy_numpyclient.task:Net",
                      evaluate_fn="legacy_numpyclient.server_app:global_evaluate", **LEGACY)
    la = pipeline.add("la", "la0", parent=ga.address, local_rounds=2, min_participants=2,
                      round_timeout_s=60, **LEGACY)
    for i in range(2):
        pipeline.add("client", f"c{i}", parent=la.address, partition_id=i, num_partitions=2,
                     **LEGACY)
    status = pipeline.wait_for("ga", finished, "finished run", timeout=300)
    assert status["last_metrics"]["accuracy"] >= 0.8, status["last_metrics"]
    lines = pipeline["c1"].results()
    assert len(lines) == 8 and all(r["type"] == "train" and "error" not in r for r in lines)
    assert lines[-1]["metrics"] == {"train_loss": lines[-1]["loss"],
                                    "num-examples": lines[-1]["num_examples"]}
