"""Task contract: loading built-in and user tasks; the digits task learns under FedAvg."""

import sys
import textwrap

import numpy as np
import pytest
import torch

from fl_service.aggregation import fedavg
from fl_service.datasets import make_loader
from fl_service.device import pick_device
from fl_service.partition import client_partition
from fl_service.task_loader import load_task

torch.set_num_threads(1)

CFG = {
    "dataset": "digits",
    "task": "",
    "seed": 0,
    "batch_size": 32,
    "learning_rate": 0.05,
    "local_epochs": 1,
    "partitioner": "iid",
    "dirichlet_alpha": 0.5,
    "classes_per_client": 2,
    "partition_id": 0,
    "num_partitions": 1,
    "data_dir": "unused",
    "download": False,
    "device": "cpu",
}


@pytest.mark.parametrize("dataset", ["digits", "fashion_mnist", "cifar10"])
def test_builtin_task_is_chosen_by_dataset(dataset):
    task = load_task({**CFG, "dataset": dataset})
    assert task.__name__ == f"fl_service.tasks.{dataset}"


def test_unknown_dataset_is_an_error():
    with pytest.raises(ValueError, match="dataset: must be one of"):
        load_task({**CFG, "dataset": "mnist"})


def write_module(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_user_task_overrides_the_dataset(tmp_path, monkeypatch):
    write_module(
        tmp_path,
        monkeypatch,
        "my_task_ok",
        """
        def load_model(cfg): return "model"
        def load_data(cfg): return [], []
        def train(model, loader, cfg, device): return {}
        def test(model, loader, cfg, device): return 0.0, 1.0
        """,
    )
    task = load_task({**CFG, "task": "my_task_ok"})
    assert task.load_model(CFG) == "model"


def test_user_task_missing_a_callable_is_named(tmp_path, monkeypatch):
    write_module(
        tmp_path,
        monkeypatch,
        "my_task_bad",
        """
        def load_model(cfg): return None
        def load_data(cfg): return [], []
        test = "not callable"
        def train(model, loader, cfg, device): return {}
        """,
    )
    with pytest.raises(ValueError, match="^task: my_task_bad lacks test$"):
        load_task({**CFG, "task": "my_task_bad"})


def test_unimportable_task_is_an_error():
    with pytest.raises(ValueError, match="task: cannot import no_such_task_module"):
        load_task({**CFG, "task": "no_such_task_module"})


def test_same_seed_gives_the_same_initial_model_and_leaves_global_rng_alone():
    task = load_task(CFG)
    before = torch.random.get_rng_state()
    a, b = task.load_model(CFG), task.load_model(CFG)
    assert torch.equal(torch.random.get_rng_state(), before)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    c = task.load_model({**CFG, "seed": 1})
    assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))


def to_arrays(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def from_arrays(model, arrays):
    model.load_state_dict({k: torch.from_numpy(a) for k, a in arrays.items()})


def test_digits_reaches_90_percent_in_a_few_fedavg_rounds_on_three_clients():
    cfg = {**CFG, "num_partitions": 3}
    task, device = load_task(cfg), pick_device(cfg)
    train_set, test_set = task.load_data(cfg)
    global_model = task.load_model(cfg)
    test_loader = make_loader(test_set, cfg, shuffle=False)
    initial_loss, _ = task.test(global_model, test_loader, cfg, device)
    parts = [client_partition({**cfg, "partition_id": p}, train_set) for p in range(3)]
    for _ in range(6):
        updates = []
        for part in parts:
            model = task.load_model(cfg)
            from_arrays(model, to_arrays(global_model))
            metrics = task.train(model, make_loader(part, cfg, shuffle=True), cfg, device)
            assert np.isfinite(metrics["loss"])
            updates.append((to_arrays(model), len(part)))
        from_arrays(global_model, fedavg(updates))
    loss, accuracy = task.test(global_model, test_loader, cfg, device)
    assert accuracy >= 0.90
    assert loss < initial_loss


def test_the_built_in_momentum_sgd_steps_exactly_as_torch_optim_sgd():
    from fl_service.tasks.supervised import MOMENTUM, momentum_sgd

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    theirs.load_state_dict(ours.state_dict())
    start = ours[0].weight.detach().clone()
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=MOMENTUM)
    step = momentum_sgd(list(ours.parameters()), 0.05)
    for _ in range(4):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for model, advance in ((ours, step), (theirs, optimizer.step)):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            advance()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)
    assert not torch.allclose(ours[0].weight, start)  # it did train
