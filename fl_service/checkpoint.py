"""GA checkpoints, the final model and small state files, written atomically (temp file + fsync +
os.replace; the temp file is removed when a write fails), readable by the service's user only.

A checkpoint holds the global model (a torch state_dict), the last completed global round, the
history of round results and the GA strategy's state (bytes from StrategyDriver.state(): the
optimiser moments of FedAdam/FedYogi/FedAdagrad, FedAvgM's momentum, ...), so a restarted GA
goes on exactly where it stopped. It is verified when read (`load_checkpoint`, `verify_model`):
a GA never resumes from a poisoned or foreign model; a bad one is one `CheckpointError` line
naming the file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from fl_service.config import ConfigError

CHECKPOINT = "checkpoint.pt"
FINAL_MODEL = "final_model.pt"
FILE_MODE = 0o600  # models, histories and counters are the pipeline owner's business only


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed from; the message names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__("checkpoint", f"{path}: {problem} (move the file away to start over)")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)`: a crash leaves the old file or the new one, never
    half of one, and a failed write leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda out: out.write(json.dumps(payload).encode()))


def save_checkpoint(
    state_dir: Path, model_state: dict[str, torch.Tensor], round_: int, history: list[dict],
    strategy_state: bytes | None = None,
) -> Path:
    path = state_dir / CHECKPOINT
    atomic_write(path, lambda out: torch.save({
        "model": model_state, "round": round_, "history": history,
        "strategy_state": strategy_state}, out))
    return path


def load_checkpoint(state_dir: Path) -> dict[str, Any] | None:
    """{model, round, history, strategy_state} of the last completed global round, or None.
    The strategy state stays bytes (its unpickling is the strategy driver's). CheckpointError
    if the file does not read, its fields are not what save_checkpoint writes, or a tensor is
    not finite."""
    path = state_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and pickle raise many kinds on a damaged file
        raise CheckpointError(path, f"unreadable: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a checkpoint")
    checkpoint.setdefault("strategy_state", None)  # written before strategies were kept
    problem = _problem(checkpoint)
    if problem is not None:
        raise CheckpointError(path, problem)
    return checkpoint


def _problem(checkpoint: dict[str, Any]) -> str | None:
    model, round_, history = (checkpoint.get(k) for k in ("model", "round", "history"))
    if not isinstance(model, dict) or not model or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()
    ):
        return "model is not a state_dict of tensors"
    for name, tensor in model.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"model tensor {name} holds NaN or Inf"
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        return f"round must be an integer >= 0, got {round_!r}"
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "history is not a list of round results"
    if history and history[-1].get("global_round") != round_:
        return (f"the history ends at round {history[-1].get('global_round')!r}, "
                f"the checkpoint says {round_}")
    if not isinstance(checkpoint["strategy_state"], bytes | None):
        return "strategy_state is not bytes"
    return None


def verify_model(
    state_dir: Path, saved: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor]
) -> None:
    """CheckpointError unless the checkpoint's `saved` state_dict has `model`'s names, shapes
    and dtypes (a checkpoint of another model must not be loaded, nor silently converted)."""
    path = state_dir / CHECKPOINT
    if saved.keys() != model.keys():
        missing = [k for k in model if k not in saved][:3]
        extra = [k for k in saved if k not in model][:3]
        raise CheckpointError(path, f"tensor names differ from the model's: missing {missing}, "
                              f"extra {extra}")
    for name, tensor in model.items():
        got = saved[name]
        if got.shape != tensor.shape or got.dtype != tensor.dtype:
            raise CheckpointError(path, f"tensor {name} is {got.dtype} {tuple(got.shape)}, the "
                                  f"model's is {tensor.dtype} {tuple(tensor.shape)}")


def save_final_model(state_dir: Path, model_state: dict[str, torch.Tensor]) -> Path:
    path = state_dir / FINAL_MODEL
    atomic_write(path, lambda out: torch.save(model_state, out))
    return path.resolve()
