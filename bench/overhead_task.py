"""A user task (see docs/architecture.md "Task contract") for bench/round_overhead.py: the
~1M-parameter CIFAR-10 CNN trained for one step on a few random images, so a round's time is
almost all framework overhead. Loaded by import path (`task: overhead_task`, bench/ on
PYTHONPATH), the way a user's own task is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fl_service import models
from fl_service.tasks.supervised import test, train

__all__ = ["load_data", "load_model", "test", "train", "EXAMPLES"]

EXAMPLES = 16  # one batch of 32x32 colour images per client: a single SGD step per round


def load_model(cfg: Mapping[str, Any]) -> nn.Module:
    return models.seeded(int(cfg.get("seed", 0)), models.Cifar10CNN)


def load_data(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    images = torch.rand(2 * EXAMPLES, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (2 * EXAMPLES,), generator=generator)
    return (TensorDataset(images[:EXAMPLES], labels[:EXAMPLES]),
            TensorDataset(images[EXAMPLES:], labels[EXAMPLES:]))
