"""Partitioners: repeatable for a seed, disjoint, non-empty, with the label skew they promise."""

import numpy as np
import pytest
import torch

from fl_service import partition
from fl_service.datasets import class_histogram

# 1000 examples, 10 classes of 100, in a shuffled order.
LABELS = np.random.default_rng(42).permutation(np.repeat(np.arange(10), 100))
CFG = {
    "partitioner": "iid",
    "dirichlet_alpha": 0.5,
    "classes_per_client": 2,
    "partition_id": 0,
    "num_partitions": 5,
    "seed": 0,
}


def split(name, **overrides):
    return partition.partition_indices({**CFG, "partitioner": name, **overrides}, LABELS)


def assert_disjoint_and_non_empty(parts):
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist()))
    assert joined.min() >= 0 and joined.max() < len(LABELS)
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("name", partition.PARTITIONERS)
def test_same_seed_same_split_other_seed_other_split(name):
    a, b, c = split(name), split(name), split(name, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("name", partition.PARTITIONERS)
@pytest.mark.parametrize("num_partitions", [1, 3, 7, 40])
def test_partitions_are_disjoint_and_non_empty(name, num_partitions):
    parts = split(name, num_partitions=num_partitions, dirichlet_alpha=0.05)
    assert len(parts) == num_partitions
    assert_disjoint_and_non_empty(parts)


def test_iid_uses_everything_in_near_equal_parts():
    parts = split("iid", num_partitions=3)
    assert sorted(len(p) for p in parts) == [333, 333, 334]
    assert sum(len(p) for p in parts) == len(LABELS)


def test_label_skew_gives_each_client_exactly_k_classes():
    for k in (1, 2, 3):
        parts = split("label_skew", classes_per_client=k, num_partitions=5)
        assert [len(np.unique(LABELS[p])) for p in parts] == [k] * 5
    # 5 clients x 2 classes cover the 10 classes once: every example is used.
    assert sum(len(p) for p in split("label_skew")) == len(LABELS)


def test_label_skew_caps_k_at_the_number_of_classes():
    parts = split("label_skew", classes_per_client=50, num_partitions=2)
    assert [len(np.unique(LABELS[p])) for p in parts] == [10, 10]


def mean_dominant_class_share(parts):
    return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])


def test_dirichlet_skew_grows_as_alpha_shrinks():
    shares = [
        np.mean(
            [
                mean_dominant_class_share(split("dirichlet", dirichlet_alpha=a, seed=s))
                for s in range(5)
            ]
        )
        for a in (100.0, 1.0, 0.1)
    ]
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] < 0.2 < 0.4 < shares[2]  # near-uniform (0.1) vs one class dominating


def test_dirichlet_with_fewer_examples_than_partitions_fills_what_it_can():
    parts = partition.dirichlet(np.array([0, 1, 1]), 5, alpha=0.1, seed=0)
    assert sorted(len(p) for p in parts) == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"partitioner": "shards"}, "partitioner must be one of iid, dirichlet, label_skew"),
        ({"partitioner": "dirichlet", "dirichlet_alpha": 0}, "dirichlet_alpha must be > 0"),
        ({"partitioner": "label_skew", "classes_per_client": 0}, "classes_per_client"),
        ({"num_partitions": 0}, "num_partitions must be >= 1"),
    ],
)
def test_bad_settings_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        partition.partition_indices({**CFG, **overrides}, LABELS)


def test_client_partition_is_this_clients_slice_of_the_train_set():
    dataset = torch.utils.data.TensorDataset(torch.zeros(len(LABELS), 1), torch.from_numpy(LABELS))
    cfg = {**CFG, "partitioner": "label_skew", "classes_per_client": 2}
    subsets = [partition.client_partition({**cfg, "partition_id": p}, dataset) for p in range(5)]
    assert [len(class_histogram(s)) for s in subsets] == [2] * 5
    assert sum(len(s) for s in subsets) == len(LABELS)
    with pytest.raises(ValueError, match="partition_id must be in 0..4"):
        partition.client_partition({**cfg, "partition_id": 5}, dataset)


def test_stated_slices_are_disjoint_hold_their_classes_and_repeat_for_a_seed():
    a = partition.stated(LABELS, {0: (0, 40), 1: (0, 40)}, seed=3)
    b = partition.stated(LABELS, {1: (40, 60), 2: (0, 10)}, seed=3)
    assert not set(a.tolist()) & set(b.tolist())
    assert class_histogram(torch.utils.data.Subset(labelled(), a.tolist())) == {0: 40, 1: 40}
    assert np.array_equal(a, partition.stated(LABELS, {0: (0, 40), 1: (0, 40)}, seed=3))
    assert not np.array_equal(a, partition.stated(LABELS, {0: (0, 40), 1: (0, 40)}, seed=4))


def test_stated_slice_past_the_class_is_an_error_naming_it():
    with pytest.raises(ValueError, match="label_slices: class 2 has 100 examples, this "
                                         "client's slice ends at 101"):
        partition.stated(LABELS, {2: (1, 100)}, seed=0)


def test_client_partition_prefers_label_slices():
    cfg = {**CFG, "label_slices": "4:0:7,9:3:2"}
    part = partition.client_partition(cfg, labelled())
    assert sorted(LABELS[part.indices].tolist()) == [4] * 7 + [9] * 2


def labelled():
    return torch.utils.data.TensorDataset(torch.zeros(len(LABELS), 1), torch.from_numpy(LABELS))
