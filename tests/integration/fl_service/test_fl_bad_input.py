"""Bad updates from a rogue client are rejected and counted; bad configs stop a service with one
line naming the key, before it touches the network."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fl_procs import Pipeline, free_port

from fl_service.transport import LinkCounters, ParentLink

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}


def corruptions(arrays: dict[str, np.ndarray]) -> dict[str, tuple[dict, object, dict]]:
    """kind -> (arrays, num_examples, metrics) of a bad update."""
    first, last = next(iter(arrays)), list(arrays)[-1]
    nan = {k: a.copy() for k, a in arrays.items()}
    nan[first].flat[0] = np.nan
    inf = {k: a.copy() for k, a in arrays.items()}
    inf[last].flat[-1] = np.inf
    wrong_shape = {**arrays, first: np.zeros((3, 3), dtype=arrays[first].dtype)}
    renamed = {("renamed" if k == first else k): a for k, a in arrays.items()}
    return {
        "shape": (wrong_shape, 10, {}),
        "missing tensor": ({k: a for k, a in arrays.items() if k != last}, 10, {}),
        "renamed tensor": (renamed, 10, {}),
        "nan": (nan, 10, {}),
        "inf": (inf, 10, {}),
        "zero examples": (arrays, 0, {}),
        "negative examples": (arrays, -5, {}),
        "fractional examples": (arrays, 2.5, {}),
        "text metric": (arrays, 10, {"loss": "low"}),
        "weight mismatch": (arrays, 10, {"num-examples": 11}),
    }


def test_bad_updates_are_rejected_counted_and_never_aggregated(pipeline: Pipeline) -> None:
    ga = pipeline.add("ga", "ga", global_rounds=40, min_participants=1, round_timeout_s=30,
                      **TRAINING)
    pipeline.add("client", "c0", parent=ga.address, **TRAINING)
    pipeline.wait_for("ga", lambda s: s["children"] == ["c0"], "c0 joined")
    rogue = ParentLink(("127.0.0.1", ga.port), "rogue", "client", LinkCounters())
    assert rogue.join() == "ga"
    after, reasons = "", {}
    try:
        for kind in corruptions({"w": np.zeros(1)}):
            task = None
            while task is None:
                task = rogue.poll_task(after)
            header, arrays = task
            after = header["task_id"]
            bad_arrays, num_examples, metrics = corruptions(arrays)[kind]
            accepted, reasons[kind] = rogue.send_update(
                {"task_id": after, "num_examples": num_examples, "metrics": metrics},
                bad_arrays)
            assert not accepted, kind
    finally:
        rogue.close()
    assert "shape" in reasons["shape"] and "NaN" in reasons["nan"]
    assert "positive" in reasons["zero examples"] and "names" in reasons["renamed tensor"]
    assert "differs" in reasons["weight mismatch"]
    status = pipeline.wait_for("ga", lambda s: s["state"] == "finished", "finished run")
    assert status["rejected_updates"] == len(reasons)
    assert f'hfl_rejected_updates_total{{role="global_aggregator",service="ga"}} ' \
           f'{float(len(reasons))}' in ga.request("GET", "/metrics")
    assert all(r["participants"] == ["c0"] for r in ga.results())
    assert status["last_metrics"]["accuracy"] >= 0.5  # poisoned rounds would wreck it


BAD_CONFIGS = [
    ("client", {"bogus_key": 1}, {}, "bogus_key"),
    ("client", {"parent": None}, {}, "parent"),
    ("local_aggregator", {"parent": "nohostport"}, {}, "parent"),
    ("local_aggregator", {"local_rounds": 0}, {}, "local_rounds"),
    ("client", {"dataset": "imagenet"}, {}, "dataset"),
    ("client", {"partitioner": "random"}, {}, "partitioner"),
    ("global_aggregator", {"global_rounds": "many"}, {}, "global_rounds"),
    ("global_aggregator", {"round_timeout_s": -1}, {}, "round_timeout_s"),
    ("local_aggregator", {}, {"HFL_LOCAL_ROUNDS": "0"}, "local_rounds"),
    ("client", {}, {"HFL_BATCH_SIZE": "big"}, "batch_size"),
    ("client", {"task": "no.such.module"}, {}, "task"),
]


@pytest.mark.parametrize(("role", "change", "env", "key"), BAD_CONFIGS,
                         ids=[f"{c[0]}-{c[3]}" for c in BAD_CONFIGS])
def test_bad_config_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, role: str, change: dict, env: dict, key: str
) -> None:
    port = free_port()
    config = {"name": "svc", "port": port, "parent": "127.0.0.1:1",
              "state_dir": str(tmp_path / "state"), **change}
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "fl_service", role, "--config", str(path)],
        capture_output=True, text=True, timeout=120, env={**_clean_env(), **env},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fl_service: config error: {key}"), lines[0]
    assert not (tmp_path / "state").exists()  # it stopped before doing anything


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("HFL_")}
