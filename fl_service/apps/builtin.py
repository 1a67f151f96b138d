"""The built-in tasks as a Flower ClientApp of ours: `fl_service.apps.builtin:app`.

The client service runs it, through the same runner as any user's app, when neither
`client_app` nor `app_dir` is set. It runs the task module `fl_service.task_loader.load_task`
picks: the built-in one for `dataset` (digits, fashion_mnist, cifar10), or a user's old-style
task module (config key `task`; the task contract of docs/architecture.md survives only as what
this app runs).

Everything comes from the Context: `run_config` holds the service's keys `RUN_CONFIG_KEYS`
under their own names (the client fills them from its config: `run_config(cfg)`; the config key
`run_config` may override them), `node_config` the partition (`partition-id`,
`num-partitions`, `label-slices`). The task functions get them as one `cfg` mapping (those keys
plus `partition_id`, `num_partitions` and `label_slices`).

Per process, and per such cfg, the model, the data partition and the loaders are built once
(`prepare`), never per message; the task's datasets once per process and per task, dataset,
`data_dir`, `download` and `seed` (`DATA_KEYS`), so a pool's virtual clients share them.
Train: load the arrays into the model, `task.train` for `local_epochs` on the partition, reply
`arrays` + `metrics {"loss", "num-examples"}`. Evaluate: `task.test` on this node's slice of the
test split (cut by the same partitioner), reply `metrics {"loss", "accuracy", "num-examples"}`.
The label histogram of the partition goes into `context.state` (fl_service.apps.STATE_HISTOGRAM)
and the pure training time of each train call into STATE_TIMING, for the client service to
report; neither travels in the reply.
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from fl_service.apps import STATE_HISTOGRAM, STATE_TIMING
from fl_service.datasets import class_histogram, dataset_labels, make_loader
from fl_service.device import pick_device
from fl_service.flower_app import array_from_numpy, ndarray_view, state_record
from fl_service.partition import client_partition, parse_label_slices
from fl_service.task_loader import load_task

RUN_CONFIG_KEYS = (
    "dataset", "task", "data_dir", "download", "partitioner", "dirichlet_alpha",
    "classes_per_client", "local_epochs", "batch_size", "learning_rate", "seed", "device",
    "threads",
)

app = ClientApp()


def run_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The built-in app's run config from the service config (the keys it has)."""
    return {key: cfg[key] for key in RUN_CONFIG_KEYS if key in cfg}


def task_config(context: Context) -> dict[str, Any]:
    """The `cfg` the task functions get: run_config plus the node's partition."""
    return {**context.run_config,
            "partition_id": int(context.node_config.get("partition-id", 0)),
            "num_partitions": int(context.node_config.get("num-partitions", 1)),
            "label_slices": str(context.node_config.get("label-slices", ""))}


@dataclass
class Local:
    """What one process keeps for one cfg: built once, reused by every message."""

    cfg: dict[str, Any]
    task: ModuleType
    device: torch.device
    model: nn.Module
    train_loader: DataLoader
    train_examples: int
    histogram: dict[str, int]
    test_loader: DataLoader
    test_examples: int
    loads_in_place: bool  # _state_is_its_own(model)


_local: dict[tuple, Local] = {}
# What a task's load_data may depend on: the datasets are loaded once per these values.
DATA_KEYS = ("dataset", "data_dir", "download", "seed")
_data: dict[tuple, tuple[Dataset, Dataset]] = {}
_data_lock = threading.Lock()


def check(context: Context) -> None:
    """Fail early (ValueError naming the key) on a task module or device that cannot work."""
    cfg = task_config(context)
    load_task(cfg)
    pick_device(cfg)


def prepare(context: Context) -> Local:
    """This process's model and data for `context`, built on first use; also records the
    partition's histogram in context.state."""
    cfg = task_config(context)
    key = tuple(sorted(cfg.items()))
    local = _local.get(key)
    if local is None:
        local = _local[key] = _build(cfg)
    if state_record(context.state, STATE_HISTOGRAM, MetricRecord) is None:
        context.state[STATE_HISTOGRAM] = MetricRecord(dict(local.histogram))
    return local


def _build(cfg: dict[str, Any]) -> Local:
    task = load_task(cfg)
    device = pick_device(cfg)
    if "threads" in cfg:
        torch.set_num_threads(int(cfg["threads"]))
    model = task.load_model(cfg).to(device)
    train_set, test_set = _datasets(task, cfg)
    partition = client_partition(cfg, train_set)
    test_part = _test_slice(cfg, test_set)
    return Local(
        cfg=cfg, task=task, device=device, model=model,
        train_loader=make_loader(partition, cfg, shuffle=True), train_examples=len(partition),
        histogram={str(k): int(v) for k, v in class_histogram(partition).items()},
        test_loader=make_loader(test_part, cfg, shuffle=False), test_examples=len(test_part),
        loads_in_place=_state_is_its_own(model),
    )


def _datasets(task: ModuleType, cfg: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """The task's (train, test) datasets, loaded once per process for `DATA_KEYS`."""
    key = (task.__name__, *(cfg.get(k) for k in DATA_KEYS))
    with _data_lock:
        if key not in _data:
            _data[key] = task.load_data(cfg)
        return _data[key]


def _test_slice(cfg: dict[str, Any], test_set: Any) -> Subset:
    """This node's share of the test split, cut like the training split (a stated label mix:
    every test example of its classes); all of it if that share would be empty."""
    if cfg.get("label_slices"):
        classes = list(parse_label_slices(cfg["label_slices"]))
        part = Subset(test_set, np.flatnonzero(np.isin(dataset_labels(test_set), classes))
                      .tolist())
    else:
        part = client_partition(cfg, test_set)
    return part if len(part) else Subset(test_set, list(range(len(test_set))))


def _state_is_its_own(model: nn.Module) -> bool:
    """Whether each state_dict entry is one of the model's parameters or buffers, as torch's
    modules keep them, so that copying into it loads the model. A module that computes its
    state when saved (quantized ones, say) is loaded by load_state_dict."""
    own = {(t.data_ptr(), t.shape) for t in itertools.chain(model.parameters(), model.buffers())}
    return all(isinstance(t, torch.Tensor) and (t.data_ptr(), t.shape) in own
               for t in model.state_dict().values())


def _load(local: Local, arrays: ArrayRecord) -> None:
    """Load `arrays` into the model: copied into its parameters and buffers in place where
    they are its whole state, which is what load_state_dict does for names that match exactly
    without its per-module walk (a quarter of a millisecond for the digits model, a task of
    each of a pool's clients)."""
    state = local.model.state_dict()  # detached tensors sharing the model's storage
    keys = list(arrays.keys())
    if keys != list(state) and keys != [str(i) for i in range(len(state))]:
        raise ValueError(f"arrays do not match the model: got {len(keys)} arrays "
                         f"({', '.join(keys[:3])}...), the model has {len(state)}")
    with warnings.catch_warnings():
        # A tensor over read-only bytes is only read, by the copy.
        warnings.simplefilter("ignore", UserWarning)
        sources = {name: torch.from_numpy(ndarray_view(arrays[key]))
                   for name, key in zip(state, keys, strict=True)}
    if not local.loads_in_place:
        local.model.load_state_dict(sources)
        return
    with torch.no_grad():
        for name, target in state.items():
            if sources[name].shape != target.shape:
                raise ValueError(f"array {name} has shape {list(sources[name].shape)}, the "
                                 f"model's {list(target.shape)}")
            target.copy_(sources[name])


def _arrays(model: nn.Module) -> ArrayRecord:
    record = ArrayRecord()
    for name, tensor in model.state_dict().items():
        record[name] = array_from_numpy(tensor.detach().cpu().numpy())
    return record


@app.train()
def train(msg: Message, context: Context) -> Message:
    local = prepare(context)
    _load(local, msg.content["arrays"])
    start = time.perf_counter()
    result = local.task.train(local.model, local.train_loader, local.cfg, local.device)
    context.state[STATE_TIMING] = MetricRecord({"train_time_s": time.perf_counter() - start})
    metrics = MetricRecord({"loss": float(result["loss"]), "num-examples": local.train_examples})
    return Message(RecordDict({"arrays": _arrays(local.model), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    local = prepare(context)
    _load(local, msg.content["arrays"])
    loss, accuracy = local.task.test(local.model, local.test_loader, local.cfg, local.device)
    metrics = MetricRecord({"loss": float(loss), "accuracy": float(accuracy),
                            "num-examples": local.test_examples})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
