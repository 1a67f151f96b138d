"""The task of bench/paper_scenarios.py: Fashion-MNIST with a small MLP.

The built-in Fashion-MNIST CNN (421,642 parameters) takes about a minute of CPU per global round
of the paper's fleet on this machine's shared cores; this MLP (784-64-10, 50,890 parameters)
does the same round in about a second, and on Fashion-MNIST it still climbs for the paper's 50
rounds instead of saturating. The images are kept as the uint8 tensors torchvision loads and
normalised a batch at a time, without the PIL round trip of the built-in transform. The services
import it by the task key `paper_task` (PYTHONPATH is bench/). CIFAR-10 keeps the built-in task.

A local round takes at least MIN_TRAIN_S of wall time, as on a small edge device: the MLP trains
a client's data in about 0.15 s, which made a global round 0.7 s on a quiet machine, and the
orchestrator's attach and a join's placement (about 17 s each) then took 25 rounds of the
budget's 55, where the paper's join lands within a few rounds. The wait sleeps, so the cores
stay free for Ansible; what a round learns is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fl_service import datasets, models
from fl_service.tasks import supervised
from fl_service.tasks.supervised import test

__all__ = ["load_data", "load_model", "test", "train"]

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's, as the built-in transform uses
MIN_TRAIN_S = 1.0


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(),
                                    nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Normalised(Dataset):
    """A torchvision MNIST-style dataset's uint8 images as normalised float tensors."""

    def __init__(self, source: Any) -> None:
        self.data, self.targets = source.data, source.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch normalised at once (DataLoader and Subset fetch batches this way)."""
        images = (self.data[indices].float() / 255 - MEAN) / STD
        return list(zip(images.unsqueeze(1), self.targets[indices].tolist(), strict=True))


def load_model(cfg: Mapping[str, Any]) -> nn.Module:
    return models.seeded(int(cfg["seed"]), Mlp)


def load_data(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    train_set, test_set = datasets.load_fashion_mnist(cfg)
    return Normalised(train_set), Normalised(test_set)


def train(model: nn.Module, loader: Any, cfg: Mapping[str, Any],
          device: torch.device) -> dict[str, float]:
    """The built-in training, taking at least MIN_TRAIN_S."""
    began = time.monotonic()
    result = supervised.train(model, loader, cfg, device)
    time.sleep(max(0.0, MIN_TRAIN_S - (time.monotonic() - began)))
    return result
