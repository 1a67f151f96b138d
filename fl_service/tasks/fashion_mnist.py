"""Built-in task: Fashion-MNIST (torchvision, or Debian's dataset-fashion-mnist) with
`fl_service.models.FashionMnistCNN`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fl_service import datasets, models
from fl_service.tasks.supervised import test, train

__all__ = ["load_data", "load_model", "test", "train"]


def load_model(cfg: Mapping[str, Any]) -> nn.Module:
    return models.seeded(int(cfg["seed"]), models.FashionMnistCNN)


def load_data(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    return datasets.load_fashion_mnist(cfg)
