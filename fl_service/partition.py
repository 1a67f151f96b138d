"""Split the training set among clients.

A partitioner maps (labels, num_partitions, seed, ...) to one index array per partition. For a
given seed the result is always the same, so every client computes the same split on its own and
takes its slice: no coordination needed. Every index is used at most once, and no partition is
left empty when there are at least as many examples as partitions.

- `iid`: a seeded shuffle cut into near-equal parts.
- `dirichlet`: per class, shares drawn from Dirichlet(alpha); small alpha = strong label skew.
- `label_skew`: each partition holds `classes_per_client` classes; each class is split evenly
  among the partitions that hold it (classes held by nobody are left out).

A client whose inventory states its label mix (`hfl_partition`) gets `label_slices` instead:
"CLASS:START:COUNT,...", positions in a seeded shuffle of each class (`stated`). The plan gives
every such client its own START per class, so stated partitions never overlap.

`client_partition(cfg, train_dataset)` returns this client's `Subset`, using the config keys
`label_slices`, else `partitioner`, `dirichlet_alpha`, `classes_per_client`, `partition_id`,
`num_partitions`, `seed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from fl_service.choices import PARTITIONERS
from fl_service.datasets import dataset_labels

# Redraws before a Dirichlet split with an empty partition is repaired by moving examples.
DIRICHLET_REDRAWS = 20


def iid(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet(labels: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    if alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = []
    for _ in range(DIRICHLET_REDRAWS):
        parts = [[] for _ in range(num_partitions)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if all(parts):
            break
    _fill_empty(parts)
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _fill_empty(parts: list[list[int]]) -> None:
    """Move one example from the largest partition into each empty one, while possible."""
    for part in parts:
        if part:
            continue
        donor = max(parts, key=len)
        if len(donor) < 2:
            return
        part.append(donor.pop())


def label_skew(
    labels: np.ndarray, num_partitions: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    classes = np.unique(labels)
    if classes_per_client < 1:
        raise ValueError(f"classes_per_client must be >= 1, got {classes_per_client}")
    k = min(classes_per_client, len(classes))
    rng = np.random.default_rng(seed)
    class_order = rng.permutation(classes)
    # Consecutive windows over a shuffled class ring: every class is held by about the same
    # number of partitions, and each partition gets k distinct classes.
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for pid in range(num_partitions):
        for j in range(k):
            holders[int(class_order[(pid * k + j) % len(classes)])].append(pid)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    for cls, pids in holders.items():
        if not pids:
            continue
        members = rng.permutation(np.flatnonzero(labels == cls))
        for pid, chunk in zip(pids, np.array_split(members, len(pids)), strict=True):
            parts[pid].extend(chunk.tolist())
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def parse_label_slices(text: str) -> dict[int, tuple[int, int]]:
    """"3:0:100,7:100:50" -> {3: (0, 100), 7: (100, 50)}: class -> (start, count)."""
    slices = {}
    for item in text.split(","):
        cls, start, count = (int(v) for v in item.split(":"))
        slices[cls] = (start, count)
    return slices


def stated(labels: np.ndarray, slices: Mapping[int, tuple[int, int]], seed: int) -> np.ndarray:
    """Positions start..start+count of each class's seeded shuffle. The shuffle depends only on
    the seed and the class, so clients given disjoint ranges get disjoint examples."""
    parts = []
    for cls, (start, count) in sorted(slices.items()):
        members = np.flatnonzero(labels == cls)
        if start + count > len(members):
            raise ValueError(f"label_slices: class {cls} has {len(members)} examples, this "
                             f"client's slice ends at {start + count}")
        order = np.random.default_rng([seed, cls]).permutation(members)
        parts.append(order[start:start + count])
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def partition_indices(cfg: Mapping[str, Any], labels: np.ndarray) -> list[np.ndarray]:
    """Index arrays of all `num_partitions` partitions, as the config's partitioner makes them."""
    num_partitions = int(cfg["num_partitions"])
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    name = cfg["partitioner"]
    seed = int(cfg["seed"])
    if name == "iid":
        return iid(labels, num_partitions, seed)
    if name == "dirichlet":
        return dirichlet(labels, num_partitions, float(cfg["dirichlet_alpha"]), seed)
    if name == "label_skew":
        return label_skew(labels, num_partitions, int(cfg["classes_per_client"]), seed)
    raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, got {name!r}")


def client_partition(cfg: Mapping[str, Any], train_dataset: Dataset) -> Subset:
    """This client's slice of the training set: its label_slices, else cfg["partition_id"]."""
    if cfg.get("label_slices"):
        slices = parse_label_slices(cfg["label_slices"])
        return Subset(train_dataset, stated(dataset_labels(train_dataset), slices,
                                            int(cfg["seed"])).tolist())
    partition_id = int(cfg["partition_id"])
    num_partitions = int(cfg["num_partitions"])
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in 0..{num_partitions - 1}, got {partition_id}")
    indices = partition_indices(cfg, dataset_labels(train_dataset))
    return Subset(train_dataset, indices[partition_id].tolist())
