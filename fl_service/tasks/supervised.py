"""Training and evaluation loops shared by the built-in classification tasks.

Local training is plain SGD with momentum 0.9 on cross-entropy, for cfg["local_epochs"] epochs
at cfg["learning_rate"]; the optimizer is created per call, as FL clients start each round
from the model they were sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    step = momentum_sgd([p for p in model.parameters() if p.requires_grad],
                        float(cfg["learning_rate"]))
    loss_fn = nn.CrossEntropyLoss()
    total_loss, seen = 0.0, 0
    for _ in range(int(cfg["local_epochs"])):
        total_loss, seen = 0.0, 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "num_examples": float(seen)}


def momentum_sgd(params: list[torch.Tensor], lr: float) -> Callable[[], None]:
    """One step of torch.optim.SGD(params, lr, momentum=MOMENTUM) per call, the same update
    (buffer = momentum * buffer + grad, the first buffer the grad; param -= lr * buffer). Not
    torch.optim itself: its first step imports torch's compiler stack, about 80 MB of memory in
    every client for nothing it uses."""
    buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step() -> None:
        for i, param in enumerate(params):
            if param.grad is None:
                continue
            if buffers[i] is None:
                buffers[i] = param.grad.detach().clone()
            else:
                buffers[i].mul_(MOMENTUM).add_(param.grad)
            param.add_(buffers[i], alpha=-lr)

    return step


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
