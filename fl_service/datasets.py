"""Built-in datasets and the helpers every role uses on them.

Each loader takes the service config `cfg` (a `Mapping[str, Any]` with the keys of the
fl_service config table) and returns `(train_dataset, test_dataset)`; labels are ints 0..9.
The test split is fixed (the same for every role, whatever `seed` says): the GA evaluates on it
and no client trains on it; clients partition the train split (see `fl_service.partition`).

- digits: scikit-learn's digits table (inside its wheel, offline; read without importing
  scikit-learn), 1x8x8 float images standardised (pixels / 16, minus mean, over std), a
  stratified 20% test split drawn with a constant seed.
- fashion_mnist: torchvision `FashionMNIST` under `data_dir`. IDX files missing from
  `<data_dir>/FashionMNIST/raw/` are unpacked there from Debian's `dataset-fashion-mnist`
  (/usr/share/datasets/fashion-mnist/*.gz) when it is installed; else `download` decides.
- cifar10: torchvision `CIFAR10` under `data_dir` (`download` decides), the official archive
  layout `cifar-10-batches-py/`. A local copy in that layout whose files differ from the
  official archive (torchvision checks md5s) is read too, when `download` is false: see
  `local_cifar10_class`.

Helpers: `dataset_labels(dataset)` (all labels as a numpy int array, without loading images),
`class_histogram(dataset)` ({label: count}) and `make_loader(dataset, cfg, shuffle)`.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

DIGITS_TEST_FRACTION = 0.2
# Mean and standard deviation of load_digits' pixels / 16: centred inputs train much faster.
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760
# A constant, not cfg["seed"]: every role must hold out the very same test images.
DIGITS_SPLIT_SEED = 20240601
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# The IDX files torchvision's FashionMNIST reads from <root>/FashionMNIST/raw/.
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_digits(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    """scikit-learn digits as (train, test) TensorDatasets of 1x8x8 float32 images, int64 labels."""
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float64)
    images = ((table[:, :-1] / 16.0 - DIGITS_MEAN) / DIGITS_STD).astype(np.float32)
    images = images.reshape(-1, 1, 8, 8)
    labels = table[:, -1].astype(np.int64)
    test = stratified_test_indices(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return (
        TensorDataset(torch.from_numpy(images[train]), torch.from_numpy(labels[train])),
        TensorDataset(torch.from_numpy(images[test]), torch.from_numpy(labels[test])),
    )


def _digits_file() -> Path:
    """The digits table inside the installed scikit-learn, found without importing it (its
    import and scipy's cost a client about 50 MB of memory it never uses again)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset digits: scikit-learn, which ships it, is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def stratified_test_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a test split of ceil(fraction * n) examples holding each class in
    proportion (largest remainders get the odd ones), drawn with `seed`."""
    classes, counts = np.unique(labels, return_counts=True)
    n_test = int(np.ceil(fraction * len(labels)))
    exact = counts * n_test / len(labels)
    share = np.floor(exact).astype(int)
    share[np.argsort(share - exact, kind="stable")[: n_test - share.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share,
                                                                               strict=True)]
    return np.sort(np.concatenate(picked))


def data_root(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["data_dir"]).expanduser()


def unpack_debian_fashion_mnist(root: Path, source: Path) -> bool:
    """Gunzip Debian's Fashion-MNIST IDX files into torchvision's raw folder under `root`.

    Returns True when the raw folder holds all four files (it already did, or they were unpacked
    from `source`), False when neither has them.
    """
    raw = root / "FashionMNIST" / "raw"
    missing = [name for name in FASHION_MNIST_FILES if not (raw / name).is_file()]
    if not missing:
        return True
    if not all((source / f"{name}.gz").is_file() for name in missing):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:
        partial = raw / f"{name}.partial-{os.getpid()}"
        with gzip.open(source / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(raw / name)  # atomic: services sharing data_dir never see half a file
    return True


def load_fashion_mnist(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    from torchvision import datasets, transforms

    root = data_root(cfg)
    found_locally = unpack_debian_fashion_mnist(root, DEBIAN_FASHION_MNIST)
    if not found_locally and not cfg["download"]:
        raise FileNotFoundError(
            f"fashion_mnist: no Fashion-MNIST under {root / 'FashionMNIST' / 'raw'} nor in "
            f"{DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist, or download: true)"
        )
    download = not found_locally
    to_tensor = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]
    )
    train = datasets.FashionMNIST(root, train=True, download=download, transform=to_tensor)
    test = datasets.FashionMNIST(root, train=False, download=download, transform=to_tensor)
    return train, test


def local_cifar10_class() -> type:
    """torchvision's CIFAR10 for a local copy that is not byte-identical to the official archive.

    torchvision checks every file against the md5 of the official archive, so a copy rebuilt
    elsewhere (another pickling, a subset of the images) is refused as "corrupted". This class
    reads the same `cifar-10-batches-py/` layout and pickle format with the same code, but only
    requires the files to exist. Local copies are not the official archive: use it only when
    the official check has failed and the user has not asked to download.
    """
    from torchvision import datasets

    class LocalCIFAR10(datasets.CIFAR10):
        def _check_integrity(self) -> bool:
            return cifar10_files_present(Path(self.root))

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return LocalCIFAR10


def cifar10_files_present(root: Path) -> bool:
    from torchvision import datasets

    folder = root / datasets.CIFAR10.base_folder
    names = [name for name, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
    names.append(datasets.CIFAR10.meta["filename"])
    return all((folder / name).is_file() for name in names)


def load_cifar10(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset]:
    from torchvision import datasets, transforms

    root = data_root(cfg)
    to_tensor = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )
    download = bool(cfg["download"])
    try:
        train = datasets.CIFAR10(root, train=True, download=download, transform=to_tensor)
        test = datasets.CIFAR10(root, train=False, download=download, transform=to_tensor)
    except RuntimeError as official_error:  # torchvision: "Dataset not found or corrupted"
        if download or not cifar10_files_present(root):
            raise FileNotFoundError(
                f"cifar10: no CIFAR-10 (python version) under {root / 'cifar-10-batches-py'}; "
                "copy it there or set download: true"
            ) from official_error
        local = local_cifar10_class()
        train = local(root, train=True, transform=to_tensor)
        test = local(root, train=False, transform=to_tensor)
    return train, test


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """All labels of `dataset` as an int64 array, read from metadata where possible."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy().astype(np.int64)
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return np.asarray(targets, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def class_histogram(dataset: Dataset) -> dict[int, int]:
    """{label: number of examples} for the labels present in `dataset`."""
    labels, counts = np.unique(dataset_labels(dataset), return_counts=True)
    return {int(label): int(count) for label, count in zip(labels, counts, strict=True)}


def make_loader(dataset: Dataset, cfg: Mapping[str, Any], shuffle: bool) -> DataLoader:
    """A DataLoader with cfg["batch_size"]; shuffling is seeded by cfg["seed"] (repeatable)."""
    generator = torch.Generator().manual_seed(int(cfg["seed"])) if shuffle else None
    return DataLoader(
        dataset, batch_size=int(cfg["batch_size"]), shuffle=shuffle, generator=generator
    )
