"""The strategy seam: our FedAvg fast path equals Flower's FedAvg; FedAvg through the hierarchy
equals flat FedAvg; every Message-API strategy of Flower 1.42 aggregates through the seam (a
BatchNorm model's int64 buffer included) and what it gives back passes validation; a strategy's
state survives a checkpoint; bad strategies are config errors or failed rounds, never a bad
model."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from fl_service.aggregation import cast_like, validate_update
from fl_service.config import ConfigError
from fl_service.strategy import (
    AggregationFailed,
    FedAvgAggregation,
    StrategyAggregation,
    StrategyDriver,
    build_driver,
    common_metrics,
)

FLOWER = "flwr.serverapp.strategy:"
# Every Message-API strategy of flwr 1.42 but the XGBoost ones (their models are bytes, not
# arrays) and the DifferentialPrivacy* wrappers (they wrap another strategy object, which a
# YAML strategy_kwargs cannot build).
STRATEGIES = {
    "FedAvg": {}, "FedProx": {"proximal_mu": 0.1}, "FedAdam": {}, "FedYogi": {},
    "FedAdagrad": {}, "FedAvgM": {"server_momentum": 0.9}, "FedMedian": {},
    "FedTrimmedAvg": {}, "Krum": {}, "MultiKrum": {"num_nodes_to_select": 2}, "Bulyan": {},
    "QFedAvg": {"client_learning_rate": 0.1},
}
SHAPES = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "fc.weight": (10, 200),
          "fc.bias": (10,)}


@pytest.fixture(autouse=True)
def frozen_heap() -> Iterator[None]:
    """As the aggregators do (gc.freeze at start): Flower's QFedAvg and Bulyan call
    gc.collect() per reply, 0.7 s each over a heap holding torch and flwr, ~0 once frozen."""
    gc.freeze()
    yield
    gc.unfreeze()


def model(seed: int, batchnorm: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    if batchnorm:
        arrays["bn.running_mean"] = rng.standard_normal(8).astype(np.float32)
        arrays["bn.running_var"] = rng.random(8).astype(np.float32) + 0.5
        arrays["bn.num_batches_tracked"] = np.array(int(rng.integers(1, 100)), dtype=np.int64)
    return arrays


def updates(count: int, seed: int = 0, batchnorm: bool = False) -> list:
    """[(arrays, num_examples, metrics), ...]"""
    rng = np.random.default_rng(seed + 1000)
    out = []
    for i in range(count):
        n = int(rng.integers(10, 500))
        out.append((model(seed + i + 1, batchnorm), n,
                    {"train_loss": float(rng.random()), "steps": int(rng.integers(1, 9)),
                     "per_class": [float(v) for v in rng.random(3)], "num-examples": n}))
    return out


def flower_replies(items: list) -> list[Message]:
    replies = []
    for node, (arrays, _, metrics) in enumerate(items, start=1):
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "metrics": MetricRecord(dict(metrics))})
        metadata = Metadata(run_id=1, message_id=str(node), src_node_id=node, dst_node_id=0,
                            reply_to_message_id="", group_id="1", created_at=time.time(),
                            ttl=DEFAULT_TTL, message_type="train")
        replies.append(Message(content=content, metadata=metadata))
    return replies


def aggregate(driver: StrategyDriver, server_round: int, reference: dict, items: list):
    sent, _ = driver.configure_train(server_round, reference, {})
    aggregation = driver.train_aggregation(server_round, sent)
    for i, (arrays, n, metrics) in enumerate(items):
        aggregation.add(f"c{i}", arrays, n, metrics)
    return aggregation.result()


def assert_arrays_close(ours: dict, theirs: dict, tol: float = 1e-6) -> None:
    assert list(ours) == list(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=tol, atol=tol, err_msg=name)


# ---------------------------------------------------------------- the fast path
@pytest.mark.parametrize("name", ["FedAvg", "FedProx"])
def test_the_fast_path_equals_flowers_fedavg_aggregate_train(name: str) -> None:
    driver = build_driver({"strategy": FLOWER + name, "strategy_kwargs": STRATEGIES[name]})
    assert driver.fast
    items = updates(7, batchnorm=True)
    aggregation = driver.train_aggregation(1, model(0, batchnorm=True))
    assert isinstance(aggregation, FedAvgAggregation)
    for i, (arrays, n, metrics) in enumerate(items):
        aggregation.add(f"c{i}", arrays, n, metrics)
    ours, our_metrics = aggregation.result()
    record, flower_metrics = FedAvg().aggregate_train(1, flower_replies(items))
    theirs = {k: a.numpy() for k, a in record.items()}
    # Flower keeps integer buffers as float64 and drops num-examples; we keep the model's
    # dtypes (integers rounded) and put the examples back.
    assert theirs["bn.num_batches_tracked"].dtype == np.float64
    assert ours["bn.num_batches_tracked"].dtype == np.int64
    assert_arrays_close(ours, cast_like(ours, theirs))
    # The same float operations in the same order as Flower's metric aggregation: exact.
    assert our_metrics == {**dict(flower_metrics), "num-examples": sum(n for _, n, _ in items)}


def test_a_fedavg_subclass_or_another_weighting_key_takes_flowers_path() -> None:
    class MyFedAvg(FedAvg):
        pass

    assert not StrategyDriver(MyFedAvg).fast
    assert not StrategyDriver(lambda: FedAvg(weighted_by_key="n")).fast
    generic = StrategyDriver(MyFedAvg)
    items = updates(3)
    ours, _ = aggregate(generic, 1, model(0), items)
    fast, _ = aggregate(StrategyDriver(FedAvg), 1, model(0), items)
    assert_arrays_close(ours, fast)


def test_hierarchical_fedavg_equals_flat_flower_fedavg() -> None:
    """2 LAs x 2 clients: FedAvg at each LA, then at the GA weighted by each LA's reported
    num-examples, equals Flower's FedAvg over the four clients at once."""
    items = updates(4, seed=5)
    ga = StrategyDriver(FedAvg)
    reference = model(0)
    la_results = []
    for la in (items[:2], items[2:]):
        arrays, metrics = aggregate(StrategyDriver(FedAvg), 1, reference, la)
        la_results.append((arrays, metrics["num-examples"], metrics))
    hierarchical, metrics = aggregate(ga, 1, reference, la_results)
    record, flat_metrics = FedAvg().aggregate_train(1, flower_replies(items))
    assert_arrays_close(hierarchical, {k: a.numpy() for k, a in record.items()})
    assert metrics["num-examples"] == sum(n for _, n, _ in items)
    assert metrics["train_loss"] == pytest.approx(flat_metrics["train_loss"], abs=1e-9)


# ---------------------------------------------------------------- every strategy
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_aggregates_a_batchnorm_model_through_the_seam(name: str) -> None:
    driver = build_driver({"strategy": FLOWER + name, "strategy_kwargs": STRATEGIES[name]})
    reference = model(0, batchnorm=True)
    for server_round in (1, 2):  # the second round runs on the state the first left
        arrays, metrics = aggregate(driver, server_round, reference,
                                    updates(4, seed=server_round, batchnorm=True))
        assert validate_update(reference, arrays) is None  # names, shapes, dtypes, finite
        assert arrays["bn.num_batches_tracked"].dtype == np.int64
        assert metrics["num-examples"] > 0 and "train_loss" in metrics
        reference = arrays


def test_stateful_strategies_use_the_arrays_configure_train_was_given() -> None:
    """FedAdam's step starts from the model it was configured with (current_arrays)."""
    reference = model(0)
    driver = build_driver({"strategy": FLOWER + "FedAdam"})
    items = updates(2)
    ours, _ = aggregate(driver, 1, reference, items)
    flower = build_driver({"strategy": FLOWER + "FedAdam"}).strategy
    flower.current_arrays = {k: v.copy() for k, v in reference.items()}
    record, _ = flower.aggregate_train(1, flower_replies(items))
    assert_arrays_close(ours, {k: a.numpy() for k, a in record.items()})


def test_configure_train_gives_the_strategys_config_and_never_waits_for_nodes() -> None:
    driver = build_driver({"strategy": FLOWER + "FedProx",
                           "strategy_kwargs": {"proximal_mu": 0.5, "min_available_nodes": 50,
                                               "min_train_nodes": 40}})
    done: list = []
    thread = threading.Thread(target=lambda: done.append(
        driver.configure_train(3, model(0), {"lr": 0.01})))
    thread.start()
    thread.join(10)
    assert done, "configure_train waited for nodes"
    sent, config = done[0]
    assert config == {"lr": 0.01, "proximal-mu": 0.5, "server-round": 3}
    assert sent.keys() == model(0).keys()
    _, evaluate_config = driver.configure_evaluate(3, model(0), {"batches": 2})
    assert evaluate_config == {"batches": 2, "server-round": 3}


def test_evaluate_aggregation_weights_metrics_and_puts_num_examples_back() -> None:
    aggregation = build_driver({}).evaluate_aggregation(4)
    assert isinstance(aggregation, StrategyAggregation)
    aggregation.add("la0", None, 30, {"accuracy": 0.9, "num-examples": 30})
    aggregation.add("la1", None, 10, {"accuracy": 0.5, "num-examples": 10})
    arrays, metrics = aggregation.result()
    assert arrays is None
    assert metrics == pytest.approx({"accuracy": 0.8, "num-examples": 40})


# ---------------------------------------------------------------- metric keys
def test_metric_keys_not_in_every_reply_are_left_out_instead_of_failing_the_round() -> None:
    cut, dropped = common_metrics([
        {"loss": 1.0, "acc": 0.5, "per_class": [1.0, 2.0], "num-examples": 3},
        {"loss": 2.0, "per_class": [1.0], "num-examples": 1},
    ])
    assert cut == [{"loss": 1.0, "num-examples": 3}, {"loss": 2.0, "num-examples": 1}]
    assert dropped == ["acc", "per_class"]
    items = updates(2)
    items[0][2]["only_here"] = 1.0
    for name in ("FedAvg", "FedMedian"):  # the fast path and Flower's
        _, metrics = aggregate(build_driver({"strategy": FLOWER + name}), 1, model(0), items)
        assert "only_here" not in metrics and "train_loss" in metrics


# ---------------------------------------------------------------- bad aggregates
class Returns(FedAvg):
    """A strategy whose aggregate is whatever the test says."""

    def __init__(self, make=None) -> None:
        super().__init__()
        self.make = make

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        return self.make(arrays), metrics


def bad_shape(record: ArrayRecord) -> ArrayRecord:
    record["fc.bias"] = Array(np.zeros(3, dtype=np.float32))
    return record


def non_finite(record: ArrayRecord) -> ArrayRecord:
    record["fc.bias"] = Array(np.full(10, np.nan, dtype=np.float32))
    return record


def missing(record: ArrayRecord) -> ArrayRecord:
    del record["fc.bias"]
    return record


def raises(record: ArrayRecord) -> ArrayRecord:
    raise RuntimeError("boom")


def text(record: ArrayRecord) -> ArrayRecord:
    record["fc.bias"] = Array(np.array(["a"] * 10))
    return record


@pytest.mark.parametrize(("make", "reason"), [
    (lambda r: None, "returned no arrays"), (bad_shape, "shape"), (non_finite, "NaN"),
    (missing, "missing"), (raises, "RuntimeError: boom"), (text, "ValueError"),
])
def test_an_unusable_aggregate_fails_the_round(make, reason: str) -> None:
    driver = StrategyDriver(lambda: Returns(make))
    with pytest.raises(AggregationFailed, match=reason):
        aggregate(driver, 1, model(0), updates(2))


# ---------------------------------------------------------------- state
@pytest.mark.parametrize("name", ["FedAdam", "FedYogi", "FedAdagrad", "FedAvgM"])
def test_a_strategy_restored_from_its_state_goes_on_as_if_never_stopped(name: str) -> None:
    config = {"strategy": FLOWER + name, "strategy_kwargs": STRATEGIES[name]}
    rounds = [updates(3, seed=10 * r) for r in range(4)]

    def run(driver: StrategyDriver, reference: dict, first: int, last: int) -> dict:
        for server_round in range(first, last + 1):
            reference, _ = aggregate(driver, server_round, reference, rounds[server_round - 1])
        return reference

    uninterrupted = run(build_driver(config), model(0), 1, 4)
    before = build_driver(config)
    halfway = run(before, model(0), 1, 2)
    blob = before.state()
    after = build_driver(config)
    assert after.restore(blob)
    assert_arrays_close(run(after, halfway, 3, 4), uninterrupted, tol=0)
    # Without the state the run differs: the state is what carried it.
    assert not np.allclose(run(build_driver(config), halfway, 3, 4)["fc.weight"],
                           uninterrupted["fc.weight"])


def test_state_of_another_strategy_or_kwargs_is_not_restored() -> None:
    blob = build_driver({"strategy": FLOWER + "FedAdam"}).state()
    assert not build_driver({"strategy": FLOWER + "FedYogi"}).restore(blob)
    assert not build_driver({"strategy": FLOWER + "FedAdam",
                             "strategy_kwargs": {"eta": 0.5}}).restore(blob)
    assert not build_driver({"strategy": FLOWER + "FedAdam"}).restore(b"not a pickle")


# ---------------------------------------------------------------- building
@pytest.mark.parametrize(("cfg", "key", "text"), [
    ({"strategy": "flwr.serverapp.strategy:NoSuch"}, "strategy", "no attribute"),
    ({"strategy": "no_such_module:FedAvg"}, "strategy", "cannot import"),
    ({"strategy": "flwr.server.strategy:FedAvg"}, "strategy", "legacy"),
    ({"strategy": "numpy:ndarray"}, "strategy", "not a flwr.serverapp.strategy.Strategy"),
    ({"strategy_kwargs": {"no_such": 1}}, "strategy_kwargs", "no_such"),
    ({"strategy": FLOWER + "QFedAvg"}, "strategy_kwargs", "client_learning_rate"),
    ({"strategy": FLOWER + "FedTrimmedAvg", "strategy_kwargs": {"beta": 0.7}},
     "strategy_kwargs", "beta"),
    ({"strategy_kwargs": {"fraction_train": 1.5}}, "strategy_kwargs", "fraction_train"),
])
def test_a_bad_strategy_is_a_config_error_naming_the_key(cfg: dict, key: str, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as caught:
        build_driver(cfg)
    assert caught.value.key == key


def test_the_default_is_flowers_fedavg_and_renew_makes_a_new_object() -> None:
    driver = build_driver({})
    assert type(driver.strategy) is FedAvg and isinstance(driver.strategy, Strategy)
    first = driver.strategy
    driver.renew()
    assert driver.strategy is not first and type(driver.strategy) is FedAvg
    assert isinstance(build_driver({"strategy": FLOWER + "FedProx"}).strategy, FedProx)
    assert ConfigRecord({"a": 1})  # the config a driver hands out is a ConfigRecord's content
