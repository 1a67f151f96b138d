"""GA checkpoints and the final model, written atomically (temp file + os.replace)."""

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
    state_dir: Path, model_state: dict[str, torch.Tensor], round_: int, history: list[dict]
) -> Path:
    path = state_dir / CHECKPOINT
    _atomic_save({"model": model_state, "round": round_, "history": history}, path)
    return path


def load_checkpoint(state_dir: Path) -> dict[str, Any] | None:
    """{model, round, history} of the last completed global round, or None."""
    path = state_dir / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_final_model(state_dir: Path, model_state: dict[str, torch.Tensor]) -> Path:
    path = state_dir / FINAL_MODEL
    _atomic_save(model_state, path)
    return path.resolve()
