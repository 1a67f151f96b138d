"""GA checkpoints and the final model, written atomically (temp file + os.replace).

A checkpoint holds the global model (a torch state_dict), the last completed global round, the
history of round results and the GA strategy's state (bytes from StrategyDriver.state(): the
optimiser moments of FedAdam/FedYogi/FedAdagrad, FedAvgM's momentum, ...), so a restarted GA
goes on exactly where it stopped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
FINAL_MODEL = "final_model.pt"


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as out:
        torch.save(obj, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)  # a crash leaves either the old or the new file, never half of one


def save_checkpoint(
    state_dir: Path, model_state: dict[str, torch.Tensor], round_: int, history: list[dict],
    strategy_state: bytes | None = None,
) -> Path:
    path = state_dir / CHECKPOINT
    _atomic_save({"model": model_state, "round": round_, "history": history,
                  "strategy_state": strategy_state}, path)
    return path


def load_checkpoint(state_dir: Path) -> dict[str, Any] | None:
    """{model, round, history, strategy_state} of the last completed global round, or None.
    The strategy state stays bytes (its unpickling is the strategy driver's)."""
    path = state_dir / CHECKPOINT
    if not path.exists():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.setdefault("strategy_state", None)  # written before strategies were kept
    return checkpoint


def save_final_model(state_dir: Path, model_state: dict[str, torch.Tensor]) -> Path:
    path = state_dir / FINAL_MODEL
    _atomic_save(model_state, path)
    return path.resolve()
