"""Models: the documented sizes and input shapes; each can fit a batch; device selection."""

import pytest
import torch
from torch import nn

from fl_service import models
from fl_service.device import pick_device

torch.set_num_threads(1)

# (model, input shape, parameters as stated in the models module docstring)
CASES = [
    (models.DigitsCNN, (1, 8, 8), 38_282),
    (models.FashionMnistCNN, (1, 28, 28), 421_642),
    (models.Cifar10CNN, (3, 32, 32), 940_362),
]


@pytest.mark.parametrize(("factory", "shape", "params"), CASES)
def test_model_size_and_output(factory, shape, params):
    model = factory()
    assert models.count_parameters(model) == params
    assert model(torch.zeros(4, *shape)).shape == (4, 10)


@pytest.mark.parametrize(("factory", "shape", "params"), CASES)
def test_model_can_fit_a_small_batch(factory, shape, params):
    model = models.seeded(0, factory)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, *shape, generator=generator)
    labels = torch.arange(16) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    first = loss_fn(model(images), labels).item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2


def test_device_auto_is_cuda_exactly_when_cuda_is_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device({"device": "auto"}).type == expected
    assert pick_device({"device": "cpu"}).type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="device: cuda was asked for"):
        pick_device({"device": "cuda"})


def test_device_unknown_is_an_error():
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        pick_device({"device": "tpu"})
