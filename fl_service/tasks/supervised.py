"""Training and evaluation loops shared by the built-in classification tasks.

Local training is plain SGD with momentum 0.9 on cross-entropy, for cfg["local_epochs"] epochs
at cfg["learning_rate"]; the optimizer is created per call, as FL clients start each round
from the model they were sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

MOMENTUM = 0.9


def train(
    model: nn.Module, loader: DataLoader, cfg: Mapping[str, Any], device: torch.device
) -> dict[str, float]:
    """Train in place; returns the mean training loss of the last epoch and the example count."""
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=float(cfg["learning_rate"]), momentum=MOMENTUM
    )
    loss_fn = nn.CrossEntropyLoss()
    total_loss, seen = 0.0, 0
    for _ in range(int(cfg["local_epochs"])):
        total_loss, seen = 0.0, 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "num_examples": float(seen)}


@torch.no_grad()
def test(
    model: nn.Module, loader: DataLoader, cfg: Mapping[str, Any], device: torch.device
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) over `loader`."""
    model.to(device).eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += loss_fn(logits, labels).item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    if seen == 0:
        raise ValueError("test: the loader holds no examples")
    return total_loss / seen, correct / seen
