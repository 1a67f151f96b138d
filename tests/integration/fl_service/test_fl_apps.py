"""Flower apps through the hierarchy, real processes: our example app (examples/quickstart-hfl,
a Message-API ClientApp) trains GA + 2 LAs + 4 clients on digits to >= 0.85, a legacy
client_fn/NumPyClient app (examples/legacy-numpyclient) trains through the same client path,
the app's context.state survives a move to another LA, and a bad app is one config error line."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
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


COUNTING_APP = {
    "pyproject.toml": """\
        [project]
        name = "counting"
        version = "1.0.0"

        [tool.flwr.app]
        publisher = "tests"

        [tool.flwr.app.components]
        serverapp = "counting.apps:server"
        clientapp = "counting.apps:client"
        """,
    "counting/__init__.py": "",
    "counting/apps.py": """\
        import torch
        from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import ServerApp

        client = ClientApp()
        server = ServerApp()


        def model():
            return torch.nn.Linear(2, 2)


        @client.train()
        def train(msg, context):
            calls = context.state.metric_records.get("calls", MetricRecord({"n": 0}))
            calls["n"] = int(calls["n"]) + 1
            context.state["calls"] = calls
            metrics = MetricRecord({"calls": calls["n"], "num-examples": 1})
            arrays = ArrayRecord(msg.content["arrays"].to_torch_state_dict())
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
        """,
}


def write_app(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_context_state_survives_a_move_to_another_la(pipeline: Pipeline, tmp_path: Path
                                                     ) -> None:
    app = {"app_dir": str(write_app(tmp_path / "counting", COUNTING_APP))}
    ga = pipeline.add("ga", "ga", global_rounds=10_000, min_participants=1, round_timeout_s=30,
                      model="counting.apps:model", **app)
    for la in ("la0", "la1"):
        pipeline.add("la", la, parent=ga.address, local_rounds=1, min_participants=1,
                     round_timeout_s=3, **app)
    mover = pipeline.add("client", "c0", parent=pipeline["la0"].address, **app)
    pipeline.wait_for("c0", lambda s: len(mover.results()) >= 3, "three tasks on la0")
    assert mover.request("POST", "/control", {"parent": pipeline["la1"].address})["switched"]
    moved_at = time.time()
    pipeline.wait_for("c0", lambda s: sum(r["ts"] > moved_at for r in mover.results()) >= 3,
                      "three tasks on la1")
    lines = mover.results()
    assert [r["metrics"]["calls"] for r in lines] == list(range(1, len(lines) + 1))
    assert {r["parent"] for r in lines} == {"la0", "la1"}


@pytest.mark.parametrize("cfg, key", [
    ({"app_dir": "/no/such/app"}, "app_dir"),
    ({"client_app": "no_such_module:app"}, "client_app"),
    ({"client_app": "json:dumps"}, "client_app"),
    ({"run_config": {"no-such-key": 1}}, "run_config"),
])
def test_a_bad_app_stops_the_client_with_one_config_error_line(tmp_path: Path, cfg: dict,
                                                                key: str) -> None:
    path = tmp_path / "c0.yaml"
    path.write_text(yaml.safe_dump({"name": "c0", "port": 1, "parent": "127.0.0.1:2",
                                    "state_dir": str(tmp_path / "state"), **cfg}))
    done = subprocess.run([sys.executable, "-m", "fl_service", "client", "--config", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fl_service: config error: {key}: "), lines
    assert not (tmp_path / "state").exists()  # stopped before anything was written
