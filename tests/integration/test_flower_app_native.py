"""Our example Flower app (examples/quickstart-hfl) runs unchanged under Flower's own runtime:
a SuperLink, two SuperNodes and `flwr run`, started as bench/round_overhead.py starts them."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from round_overhead import flower_deployment  # noqa: E402

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 900  # a process per message: ~1 min a round here, 4 with the cores busy


def test_quickstart_hfl_runs_two_rounds_under_flwr_run(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "quickstart-hfl", app,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with flower_deployment(tmp_path, app, 2, "num-server-rounds=2") as (_, runner):
        try:
            code = runner.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
    log = (tmp_path / "flwr_run.log").read_text(errors="replace")
    assert code == 0, f"flwr run: exit {code}\n{log[-3000:]}"
    # The ServerApp ran both rounds of training, federated and central evaluation, and saved.
    assert "Saving final model to disk" in log, log[-3000:]
    for stage in ("[ROUND 1/2]", "[ROUND 2/2]", "Global evaluation", "'eval_acc'"):
        assert stage in log, f"{stage!r} missing:\n{log[-3000:]}"
