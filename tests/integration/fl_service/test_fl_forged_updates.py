"""Forged updates against a running GA -> LA -> clients pipeline with mutual TLS, sent exactly as
an attacker holding a valid client certificate would (a compromised but authenticated client):
each joins under its own certificate's name, takes the round's task and answers it with one
forged frame. Counts of 10^12, 10^39 and 1e400, NaN/Inf header fields and
values that overflow the aggregate are each rejected with a reason; the GA and the LA stay up,
every round completes with the honest updates only, and the global model stays finite. A
checkpoint poisoned on disk is refused, not resumed from."""

import json
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fl_procs import Pipeline, free_port

from fl_service.transport import FRAME_TYPE, LinkCounters, ParentLink, encode_frame

pytestmark = pytest.mark.integration

TRAINING = {"dataset": "digits", "seed": 0, "learning_rate": 0.05, "batch_size": 32}
DECLARED = 100  # what every attacker declares at join: an ordinary client's count
COUNT = "@count@"  # replaced in the header's JSON text, for numbers json.dumps cannot write


def huge(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The task's model with every float value near float32's largest (3.4e38)."""
    return {k: np.full_like(a, 3e38) if a.dtype.kind == "f" else a for k, a in arrays.items()}


# attacker -> (the count's JSON text, other header fields, arrays from the task's, the reason)
ATTACKS = {
    "count-1e12": ("1000000000000", {}, dict, "over the cap 200 (2 x the 100 declared"),
    "count-1e39": (str(10**39), {}, dict, "below 2^53"),
    "count-1e400": ("1e400", {}, dict, "num_examples must be a positive integer"),
    "count-int-1e400": (str(10**400), {}, dict, "below 2^53"),  # does not fit a float
    "count-nan": ("NaN", {}, dict, "num_examples must be"),
    "metric-nan": (str(DECLARED), {"metrics": {"loss": float("nan")}}, dict, "finite numbers"),
    "metric-inf": (str(DECLARED), {"metrics": {"loss": float("inf")}}, dict, "finite numbers"),
    "train-time-inf": (str(DECLARED), {"train_time_s": float("inf")}, dict, "train_time_s"),
    "histogram-inf": (str(DECLARED), {"histogram": {"0": float("inf")}}, dict, "histogram"),
    "overflow": (str(DECLARED), {}, huge, "would overflow the aggregate"),
}


def forged_frame(task_id: str, name: str, count: str, fields: dict,
                 arrays: dict[str, np.ndarray]) -> bytes:
    header = {"task_id": task_id, "name": name, "num_examples": COUNT, **fields}
    head = json.dumps(header).replace(f'"{COUNT}"', count).encode()  # NaN, Infinity as is
    model = encode_frame({}, arrays)[4 + len(b"{}"):]
    return struct.pack(">I", len(head)) + head + model


def post(port: int, frame: bytes, tls: ssl.SSLContext) -> tuple[int, dict]:
    request = urllib.request.Request(f"https://127.0.0.1:{port}/fl/update", data=frame,
                                     method="POST", headers={"Content-Type": FRAME_TYPE})
    try:
        with urllib.request.urlopen(request, timeout=30, context=tls) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def attack(port: int, name: str, tls: ssl.SSLContext, answers: dict[str, tuple[int, dict]]
           ) -> None:
    """Join as `name` (holding `tls`, a certificate for `name`), wait for the next train task,
    answer it with the forged update, leave."""
    count, fields, make, _ = ATTACKS[name]
    link = ParentLink(("127.0.0.1", port), name, "client", LinkCounters(), tls)
    try:
        link.join(DECLARED)
        deadline = time.monotonic() + 120
        task = None
        while task is None and time.monotonic() < deadline:
            task = link.poll_task("")
        assert task is not None, f"{name}: no task from :{port}"
        header, arrays = task
        answers[name] = post(port, forged_frame(header["task_id"], name, count, fields,
                                                make(arrays)), tls)
        link.leave()
    finally:
        link.close()


def launch(port: int, identities: dict[str, ssl.SSLContext]
           ) -> tuple[list[threading.Thread], dict[str, tuple[int, dict]]]:
    answers: dict[str, tuple[int, dict]] = {}
    threads = [threading.Thread(target=attack, args=(port, name, identities[name], answers),
                                daemon=True) for name in ATTACKS]
    for thread in threads:
        thread.start()
    return threads, answers


def assert_all_rejected(answers: dict[str, tuple[int, dict]], where: str) -> None:
    assert sorted(answers) == sorted(ATTACKS), f"{where}: answered {sorted(answers)}"
    for name, (status, reply) in answers.items():
        assert status == 422 and reply["accepted"] is False, (where, name, status, reply)
        assert ATTACKS[name][3] in reply["reason"], (where, name, reply["reason"])


def test_forged_updates_are_rejected_and_training_goes_on_unharmed(
    tls_pipeline: Pipeline,
) -> None:
    pipeline = tls_pipeline
    global_rounds = 4
    ga = pipeline.add("ga", "ga", global_rounds=global_rounds, min_participants=1,
                      round_timeout_s=90, **TRAINING)
    la = pipeline.add("la", "la0", parent=ga.address, local_rounds=1, min_participants=2,
                      round_timeout_s=60, **TRAINING)
    for i in range(2):
        pipeline.add("client", f"c{i}", parent=la.address, partition_id=i, num_partitions=2,
                     **TRAINING)
    # Each attacker holds a client certificate of its own name (a GA takes clients: flat FL).
    identities = {name: pipeline.identity(name, "client") for name in ATTACKS}
    pipeline.wait_for("ga", lambda s: s["global_round"] >= 2, "a first completed round")
    # Both tiers at once: the GA's next round and the LA's local round inside it.
    ga_threads, at_ga = launch(ga.port, identities)
    la_threads, at_la = launch(la.port, identities)
    for thread in ga_threads + la_threads:
        thread.join(150)
    assert_all_rejected(at_ga, "ga")
    assert_all_rejected(at_la, "la0")

    status = pipeline.wait_for("ga", lambda s: s["state"] == "finished", "finished run")
    assert status["global_round"] == global_rounds
    assert status["rejected_updates"] == len(ATTACKS)
    assert la.status()["rejected_updates"] == len(ATTACKS)  # the LA is up and counted them
    rounds = ga.results()
    assert [r["global_round"] for r in rounds] == list(range(1, global_rounds + 1))
    assert all(r["participants"] == ["la0"] for r in rounds)
    la_rounds = la.results()
    assert all(r["participants"] == ["c0", "c1"] for r in la_rounds)
    # Honest weights only: the GA's count is its clients' and the model learned.
    honest = sum(pipeline[f"c{i}"].status()["num_examples"] for i in range(2))
    assert all(r["num_examples"] == honest for r in rounds)
    assert status["last_metrics"]["accuracy"] >= 0.8
    checkpoint = torch.load(f"{ga.config['state_dir']}/checkpoint.pt", weights_only=True)
    assert checkpoint["round"] == global_rounds
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint["model"].values()
               if t.is_floating_point())


def test_a_ga_never_resumes_from_a_poisoned_checkpoint(tmp_path: Path) -> None:
    state = tmp_path / "ga"
    state.mkdir()
    poisoned = {"model": {"w": torch.tensor([float("nan")])}, "round": 3,
                "history": [{"global_round": 3}]}
    torch.save(poisoned, state / "checkpoint.pt")
    config = tmp_path / "ga.yaml"
    config.write_text(yaml.safe_dump({"name": "ga", "port": free_port(),
                                      "state_dir": str(state), **TRAINING}))
    done = subprocess.run([sys.executable, "-m", "fl_service", "global_aggregator", "--config",
                           str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"fl_service: config error: checkpoint: {state / 'checkpoint.pt'}: model tensor w holds "
        "NaN or Inf (move the file away to start over)")
