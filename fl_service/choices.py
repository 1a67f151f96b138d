"""The closed sets of names config keys take. Import-light on purpose: config validation uses
them before torch loads, and the modules that act on them share the same tuples."""

DATASETS = ("digits", "fashion_mnist", "cifar10")
PARTITIONERS = ("iid", "dirichlet", "label_skew")
DEVICES = ("auto", "cpu", "cuda")
