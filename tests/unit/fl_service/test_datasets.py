"""Datasets: digits split, Fashion-MNIST from Debian's files, CIFAR-10 in its real file format."""

import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_service import datasets
from fl_service.partition import client_partition
from fl_service.task_loader import load_task

torch.set_num_threads(1)

CFG = {"seed": 0, "batch_size": 16, "download": False}


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = datasets.load_digits(CFG)
    train2, test2 = datasets.load_digits({**CFG, "seed": 7})
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert torch.equal(test.tensors[0], test2.tensors[0])  # every role holds out the same images
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert isinstance(int(label), int)
    assert abs(float(train.tensors[0].mean())) < 0.1  # standardised inputs
    hist = datasets.class_histogram(test)
    assert sorted(hist) == list(range(10))
    assert max(hist.values()) - min(hist.values()) <= 2  # stratified
    train_rows = {row.tobytes() for row in train.tensors[0].numpy()}
    shared = sum(row.tobytes() in train_rows for row in test.tensors[0].numpy())
    assert shared <= 5  # only the few duplicate images load_digits itself contains


def test_digits_are_scikit_learns_read_without_importing_it():
    # A client holds what it imports for its whole life: scikit-learn and scipy are ~50 MB.
    code = ("import sys, numpy as np; from fl_service import datasets; "
            "train, test = datasets.load_digits({}); assert 'sklearn' not in sys.modules; "
            "from sklearn.datasets import load_digits; b = load_digits(); "
            "x = np.concatenate([train.tensors[0].numpy(), test.tensors[0].numpy()]); "
            "want = ((b.images / 16.0 - datasets.DIGITS_MEAN) / datasets.DIGITS_STD)"
            ".astype(np.float32)[:, None]; "
            "key = lambda a: sorted(r.tobytes() for r in a); assert key(x) == key(want)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


def test_a_stratified_test_split_takes_its_share_of_every_class():
    labels = np.repeat(np.arange(3), [10, 7, 3])
    test = datasets.stratified_test_indices(labels, 0.25, seed=1)
    assert len(test) == 5 and len(set(test)) == 5  # ceil(0.25 * 20)
    # 2.5, 1.75, 0.75 of 5: floors 2, 1, 0, the two left over to the largest remainders
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 2, 1]
    assert np.array_equal(test, datasets.stratified_test_indices(labels, 0.25, seed=1))
    assert not np.array_equal(test, datasets.stratified_test_indices(labels, 0.25, seed=2))


def test_class_histogram_of_a_subset_counts_only_its_examples():
    train, _ = datasets.load_digits(CFG)
    labels = datasets.dataset_labels(train)
    subset = torch.utils.data.Subset(train, np.flatnonzero(labels == 3)[:5].tolist())
    assert datasets.class_histogram(subset) == {3: 5}


def test_loader_batches_and_repeats_its_shuffle_for_a_seed():
    train, _ = datasets.load_digits(CFG)
    first = [y.tolist() for _, y in datasets.make_loader(train, CFG, shuffle=True)]
    again = [y.tolist() for _, y in datasets.make_loader(train, CFG, shuffle=True)]
    other = [y.tolist() for _, y in datasets.make_loader(train, {**CFG, "seed": 1}, True)]
    assert first == again != other
    assert len(first[0]) == 16


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file as Fashion-MNIST ships it: magic, dimensions (big-endian int32), uint8 data."""
    magic = 0x0800 | array.ndim
    header = struct.pack(f">{1 + array.ndim}i", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_debian_fashion_mnist(tmp_path):
    source = tmp_path / "debian"
    source.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("t10k", 5)):
        write_idx(source / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(source / f"{split}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return source


def test_fashion_mnist_is_read_from_debian_files(tmp_path, small_debian_fashion_mnist, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", small_debian_fashion_mnist)
    train, test = datasets.load_fashion_mnist({**CFG, "data_dir": str(tmp_path / "data")})
    assert (len(train), len(test)) == (12, 5)
    image, label = train[3]
    assert image.shape == (1, 28, 28) and label == 3
    assert datasets.class_histogram(test) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    assert sorted(p.name for p in (tmp_path / "data/FashionMNIST/raw").iterdir()) == sorted(
        datasets.FASHION_MNIST_FILES
    )


def test_fashion_mnist_missing_everywhere_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist({**CFG, "data_dir": str(tmp_path / "data")})


@pytest.mark.skipif(
    not datasets.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist absent"
)
def test_fashion_mnist_full_debian_copy(tmp_path):
    train, test = datasets.load_fashion_mnist({**CFG, "data_dir": str(tmp_path)})
    assert (len(train), len(test)) == (60000, 10000)
    assert set(datasets.class_histogram(test).values()) == {1000}


class Python2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str`, the way the CIFAR-10 python version was written."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_cifar_file(path: Path, content: dict) -> None:
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(content)


def build_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    """cifar-10-batches-py/ with 5 training batches, a test batch and batches.meta; returns the
    test images as N x 32 x 32 x 3."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]
    test_data = None
    for i, name in enumerate([*names, "test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        write_cifar_file(
            folder / name,
            {
                b"batch_label": f"batch {i}".encode(),
                b"labels": [(per_batch * i + j) % 10 for j in range(per_batch)],
                b"data": data,
                b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)],
            },
        )
        test_data = data
    labels = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    labels += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_cifar_file(
        folder / "batches.meta",
        {b"num_cases_per_batch": per_batch, b"label_names": labels, b"num_vis": 3072},
    )
    return test_data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_files_are_in_the_real_pickle_format(tmp_path):
    build_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py/data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # how the official files load
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (4, 3072)


def test_cifar10_local_copy_is_loaded(tmp_path):
    test_images = build_cifar10(tmp_path)
    train, test = datasets.load_cifar10({**CFG, "data_dir": str(tmp_path)})
    assert (len(train), len(test)) == (20, 4)
    assert test.classes[0] == "airplane"
    assert datasets.class_histogram(train) == {i: 2 for i in range(10)}
    image, label = test[1]
    assert image.shape == (3, 32, 32) and label == (5 * 4 + 1) % 10
    np.testing.assert_array_equal(test.data, test_images)


def test_cifar10_missing_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        datasets.load_cifar10({**CFG, "data_dir": str(tmp_path)})


TASK_CFG = {
    **CFG,
    "task": "",
    "learning_rate": 0.01,
    "local_epochs": 1,
    "partitioner": "iid",
    "partition_id": 0,
    "num_partitions": 2,
}


@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_builtin_task_trains_and_tests_on_local_files(
    dataset, tmp_path, small_debian_fashion_mnist, monkeypatch
):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", small_debian_fashion_mnist)
    build_cifar10(tmp_path)
    cfg = {**TASK_CFG, "dataset": dataset, "data_dir": str(tmp_path)}
    task = load_task(cfg)
    train_set, test_set = task.load_data(cfg)
    model, device = task.load_model(cfg), torch.device("cpu")
    part = client_partition(cfg, train_set)
    metrics = task.train(model, datasets.make_loader(part, cfg, shuffle=True), cfg, device)
    assert metrics["num_examples"] == len(part) == len(train_set) // 2
    loss, accuracy = task.test(model, datasets.make_loader(test_set, cfg, False), cfg, device)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
