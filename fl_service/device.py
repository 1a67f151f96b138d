"""Pick the torch device from the config key `device`: auto (CUDA when present), cpu, cuda."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fl_service.choices import DEVICES


def pick_device(cfg: Mapping[str, Any]) -> torch.device:
    choice = cfg["device"]
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {choice!r}")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but torch sees no CUDA device")
    return torch.device(choice)
