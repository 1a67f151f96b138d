"""The aggregation rule of the GA and the LAs: a Flower 1.42 Message-API `Strategy`.

`build_driver(cfg)` makes cfg["strategy"] ("module:Class", default Flower's FedAvg) with
cfg["strategy_kwargs"] and wraps it in a `StrategyDriver`, which the roles call per round:
- `configure_train` / `configure_evaluate` call the strategy's own methods with a Grid stand-in
  that only lists node ids, for the content they produce: the ConfigRecord entries they add
  (`server-round`, FedProx's `proximal-mu`, ...) and the arrays (FedOpt and QFedAvg keep
  `current_arrays` from this call). The stand-in lists as many ids as the strategy's minimums,
  so Flower's `sample_nodes` never waits. Which children are asked is the round logic's
  choice (RoundCoordinator: every live child), never the strategy's sampling.
- `train_aggregation` / `evaluate_aggregation` return the object a round's accepted replies go
  into; at the close it builds real Flower reply Messages (content {"arrays": ArrayRecord,
  "metrics": MetricRecord}) and calls `aggregate_train` / `aggregate_evaluate`.
  Fast path: when the strategy is exactly FedAvg or FedProx (FedProx aggregates like FedAvg)
  weighting by "num-examples", our FedAvg kernel folds updates in as they arrive instead
  (tests/unit/fl_service/test_strategy.py proves it equal to Flower's aggregate_train), and
  `weighted_mean` repeats Flower's default metric aggregation without building records.
- Replies whose MetricRecords have different keys would make Flower reject the whole round
  (InconsistentMessageReplies): only the keys every reply has (with the same list/scalar
  shape) are handed to the strategy; the others are dropped for that round and logged.
- Integer arrays (BatchNorm's num_batches_tracked) are handed to the strategy as float64
  (Flower's averages return float64 for them anyway; QFedAvg's in-place updates need floats);
  every aggregate is cast back to the model's dtypes, then must pass `validate_update`.
  "num-examples" is put back into aggregated metrics (Flower drops it): the accepted replies'
  sum. An aggregate that is None, raises, or fails validation (names, shapes, dtypes, every
  value finite; on both paths) or whose metrics are not all finite raises `AggregationFailed`:
  the round's model is never committed (the round logic keeps the previous one).
- `state()` / `restore()`: the strategy's instance attributes that are not constructor keywords
  (FedOpt's m_t, v_t, current_arrays; FedAvgM's momentum_vector, ...), pickled; the GA keeps
  them in its checkpoint.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import pickle
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.task_identity import TaskIdentity

from fl_service.aggregation import Arrays, FedAvgAccumulator, cast_like, validate_update
from fl_service.config import ConfigError
from fl_service.flower_app import records_of
from fl_service.imports import load_object

log = logging.getLogger("fl_service.strategy")
DEFAULT_STRATEGY = "flwr.serverapp.strategy:FedAvg"
NUM_EXAMPLES = "num-examples"
_FAST = (FedAvg, FedProx)


class AggregationFailed(Exception):
    """The strategy gave no usable aggregate for this round."""


# ---------------------------------------------------------------- building
def config_record(value: Mapping[str, Any], key: str) -> ConfigRecord:
    """`value` as a ConfigRecord; ConfigError naming `key` if Flower would not take it."""
    try:
        return ConfigRecord(dict(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"not a ConfigRecord: {exc}") from None


def build_driver(cfg: Mapping[str, Any]) -> StrategyDriver:
    """The configured strategy, wrapped; ConfigError naming `strategy` / `strategy_kwargs`."""
    path = cfg.get("strategy") or DEFAULT_STRATEGY
    kwargs = dict(cfg.get("strategy_kwargs") or {})
    cls = load_object(path, "strategy")
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise ConfigError("strategy", f"{path} is not a flwr.serverapp.strategy.Strategy class "
                          "(Flower's Message API; flwr.server.strategy is the legacy one)")
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every call at INFO

    def factory() -> Strategy:
        try:
            strategy = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError("strategy_kwargs", f"{path}: {exc}") from None
        for name in ("fraction_train", "fraction_evaluate"):
            # Above 1, Flower's sampling waits forever for more nodes than it will ever see.
            value = getattr(strategy, name, 0.0)
            if isinstance(value, int | float) and not 0.0 <= value <= 1.0:
                raise ConfigError("strategy_kwargs", f"{path}: {name} must be in [0, 1]")
        return strategy

    return StrategyDriver(factory, path, kwargs)


def freeze_heap() -> None:
    """Move everything allocated so far (torch, flwr, the model) out of the garbage collector's
    sight. Flower's QFedAvg and Bulyan call gc.collect() per reply (ArrayRecord.
    to_numpy_ndarrays(keep_input=False)): 0.7 s each over a heap holding torch and flwr,
    ~10 us once the start-up objects are frozen. Call it once, when the service has started."""
    gc.collect()
    gc.freeze()


class _NodeIds(Grid):
    """A Grid that only lists node ids, for configure_train/configure_evaluate."""

    def __init__(self, count: int) -> None:
        self._ids = list(range(1, count + 1))

    def get_node_ids(self) -> Iterable[int]:
        return self._ids

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("fl_service's grid stand-in only lists node ids")

    set_run = run = create_message = get_nodes = push_messages = pull_messages = _unsupported
    send_and_receive = _unsupported


def _ensure_task_identity() -> None:
    # Flower's instruction Messages (built by configure_*) read the process's task identity,
    # which only a Flower runtime sets.
    for attr in ("run_id", "node_id", "task_id"):
        try:
            getattr(TaskIdentity, attr)
        except RuntimeError:
            setattr(TaskIdentity, attr, 0)


# ---------------------------------------------------------------- records
def _to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    record = ArrayRecord()
    for name, arr in arrays.items():
        record[name] = Array(arr.astype(np.float64) if arr.dtype.kind in "iub" else arr)
    return record


def _from_record(record: ArrayRecord) -> Arrays:
    return {name: array.numpy() for name, array in record.items()}


def _json_config(record: ConfigRecord) -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, bytes) or (isinstance(value, list) and value
                                        and isinstance(value[0], bytes)):
            log.warning("config %s: bytes do not travel in a JSON header; not sent", key)
            continue
        out[key] = value
    return out


def _reply(content: RecordDict, node_id: int, server_round: int, kind: str) -> Message:
    metadata = Metadata(run_id=0, message_id=str(node_id), src_node_id=node_id, dst_node_id=0,
                        reply_to_message_id="", group_id=str(server_round),
                        created_at=time.time(), ttl=DEFAULT_TTL, message_type=kind)
    return Message(content=content, metadata=metadata)


def _shape(value: Any) -> int | None:
    return len(value) if isinstance(value, list) else None


def weighted_mean(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Flower's aggregate_metricrecords (FedAvg's default metric aggregation), the same float
    operations in the same order, without building records: each key but "num-examples"
    weighted by the replies' "num-examples" (lists element-wise)."""
    total = sum(m[NUM_EXAMPLES] for m in metrics)
    out: dict[str, Any] = {}
    for m in metrics:
        weight = m[NUM_EXAMPLES] / total
        for key, value in m.items():
            if key == NUM_EXAMPLES:
                continue
            if isinstance(value, list):
                scaled = [v * weight for v in value]
                out[key] = ([a + b for a, b in zip(out[key], scaled, strict=True)]
                            if key in out else scaled)
            else:
                out[key] = out[key] + value * weight if key in out else value * weight
    return out


def common_metrics(metrics: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each reply's metrics cut to the keys all have with one shape; (cut, dropped keys)."""
    if not metrics:
        return [], []
    keys = [k for k in metrics[0] if all(k in m for m in metrics[1:])]
    keep = [k for k in keys if len({_shape(m[k]) for m in metrics}) == 1]
    dropped = sorted({k for m in metrics for k in m} - set(keep))
    return [{k: m[k] for k in keep} for m in metrics], dropped


# ---------------------------------------------------------------- per-round aggregations
class _Aggregation:
    def __init__(self, driver: StrategyDriver, server_round: int) -> None:
        self.driver = driver
        self.server_round = server_round
        self.metrics: list[dict[str, Any]] = []
        self.num_examples = 0

    def _cut_metrics(self) -> list[dict[str, Any]]:
        cut, dropped = common_metrics(self.metrics)
        if dropped:
            log.warning("round %d: metrics %s not in every reply; aggregated without them",
                        self.server_round, ", ".join(dropped))
        return cut

    def _finish_metrics(self, aggregated: Mapping[str, Any] | None) -> dict[str, Any]:
        """The aggregated metrics with "num-examples" put back; AggregationFailed if one is
        not finite (a NaN or Inf must never reach results, /status or a parent)."""
        out = {**dict(aggregated or {}), NUM_EXAMPLES: self.num_examples}
        for key, value in out.items():
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise AggregationFailed(f"aggregated metric {key} is not finite: {value!r}")
        return out

    @staticmethod
    def _checked(reference: Arrays, arrays: Arrays, name: str) -> Arrays:
        reason = validate_update(reference, arrays)
        if reason is not None:
            raise AggregationFailed(f"{name}'s aggregate: {reason}")
        return arrays


class FedAvgAggregation(_Aggregation):
    """The fast path: our kernel folds arrays in as they arrive."""

    def __init__(self, driver: StrategyDriver, server_round: int, reference: Arrays) -> None:
        super().__init__(driver, server_round)
        self.reference = reference
        self.acc = FedAvgAccumulator(batch=1)

    def add(self, child: str, arrays: Arrays | None, num_examples: int,
            metrics: dict[str, Any]) -> None:
        assert arrays is not None
        self.acc.add(arrays, num_examples)
        self.metrics.append(metrics)
        self.num_examples += num_examples

    def result(self) -> tuple[Arrays, dict[str, Any]]:
        try:
            arrays = self.acc.result()
        except ValueError as exc:  # an update failed mid-fold: the sums are not trustworthy
            raise AggregationFailed(f"FedAvg: {exc}") from None
        arrays = self._checked(self.reference, arrays, "FedAvg")
        return arrays, self._finish_metrics(weighted_mean(self._cut_metrics()))


class StrategyAggregation(_Aggregation):
    """Replies become Flower Messages as they arrive; the strategy aggregates at the close."""

    def __init__(self, driver: StrategyDriver, server_round: int, kind: str,
                 reference: Arrays | None) -> None:
        super().__init__(driver, server_round)
        self.kind = kind
        self.reference = reference
        self.records: list[tuple[str, RecordDict]] = []

    def add(self, child: str, arrays: Arrays | None, num_examples: int,
            metrics: dict[str, Any]) -> None:
        content = RecordDict()
        if self.kind == MessageType.TRAIN:
            assert arrays is not None
            content["arrays"] = _to_record(arrays)
        self.records.append((child, content))
        self.metrics.append(metrics)
        self.num_examples += num_examples

    def result(self) -> tuple[Arrays | None, dict[str, Any]]:
        # In the children's name order, not their arrival order: the same replies give the
        # same float sums whatever the timing (a resumed run repeats an uninterrupted one).
        cut = self._cut_metrics()
        order = sorted(range(len(self.records)), key=lambda i: self.records[i][0])
        replies = []
        for node_id, i in enumerate(order, start=1):
            content = self.records[i][1]
            content["metrics"] = MetricRecord(cut[i])
            replies.append(_reply(content, node_id, self.server_round, self.kind))
        name = type(self.driver.strategy).__name__
        try:
            return self._aggregate(replies, name)
        except AggregationFailed:
            raise
        except Exception as exc:  # InconsistentMessageReplies, AggregationError, user bugs
            raise AggregationFailed(f"{name}: {type(exc).__name__}: {exc}") from None

    def _aggregate(self, replies: list[Message], name: str
                   ) -> tuple[Arrays | None, dict[str, Any]]:
        strategy = self.driver.strategy
        if self.kind == MessageType.EVALUATE:
            metrics = strategy.aggregate_evaluate(self.server_round, replies)
            if metrics is None:
                raise AggregationFailed(f"{name}.aggregate_evaluate returned None")
            return None, self._finish_metrics(metrics)
        record, metrics = strategy.aggregate_train(self.server_round, replies)
        if record is None:
            raise AggregationFailed(f"{name}.aggregate_train returned no arrays")
        assert self.reference is not None
        # Dtypes are cast back (FedOpt returns float64, Flower's averages float64 for integer
        # buffers); names, shapes and finiteness must then be the model's.
        arrays = self._checked(self.reference, cast_like(self.reference, _from_record(record)),
                               name)
        return arrays, self._finish_metrics(metrics)


Aggregation = FedAvgAggregation | StrategyAggregation


# ---------------------------------------------------------------- the driver
class StrategyDriver:
    def __init__(self, factory: Any, path: str = "", kwargs: Mapping[str, Any] | None = None
                 ) -> None:
        self.factory = factory
        self.path = path
        self.kwargs = dict(kwargs or {})
        _ensure_task_identity()
        self.strategy: Strategy = factory()

    def renew(self) -> None:
        """A new strategy object: its state starts over."""
        self.strategy = self.factory()

    @property
    def fast(self) -> bool:
        s = self.strategy
        return (type(s) in _FAST and s.weighted_by_key == NUM_EXAMPLES
                and s.train_metrics_aggr_fn is aggregate_metricrecords)

    def _grid(self) -> _NodeIds:
        # As many ids as the strategy's minimums: its sampling never waits, and no more
        # Messages are built than needed (they all share one content).
        s = self.strategy
        minimums = [getattr(s, a, 0) for a in
                    ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")]
        return _NodeIds(max(1, *(m for m in minimums if isinstance(m, int))))

    def _configure(self, method: str, server_round: int, arrays: Arrays,
                   config: Mapping[str, Any], fast: bool) -> tuple[Arrays, dict[str, Any]]:
        record = ArrayRecord() if fast else _to_record(arrays)
        config_rec = ConfigRecord(dict(config))
        messages = list(getattr(self.strategy, method)(server_round, record, config_rec,
                                                       self._grid()))
        if not messages:
            return arrays, _json_config(config_rec)
        content = messages[0].content
        configs = list(records_of(content, ConfigRecord).values())
        out_config = _json_config(configs[0]) if configs else dict(config)
        sent = arrays
        records = list(records_of(content, ArrayRecord).values())
        if not fast and records and records[0] is not record:
            sent = cast_like(arrays, _from_record(records[0]))
        return sent, out_config

    def configure_train(self, server_round: int, arrays: Arrays, config: Mapping[str, Any]
                        ) -> tuple[Arrays, dict[str, Any]]:
        """(arrays to send, config to send) of a train round."""
        return self._configure("configure_train", server_round, arrays, config, self.fast)

    def configure_evaluate(self, server_round: int, arrays: Arrays, config: Mapping[str, Any]
                           ) -> tuple[Arrays, dict[str, Any]]:
        return self._configure("configure_evaluate", server_round, arrays, config, self.fast)

    def train_aggregation(self, server_round: int, reference: Arrays) -> Aggregation:
        if self.fast:
            return FedAvgAggregation(self, server_round, reference)
        return StrategyAggregation(self, server_round, MessageType.TRAIN, reference)

    def evaluate_aggregation(self, server_round: int) -> Aggregation:
        return StrategyAggregation(self, server_round, MessageType.EVALUATE, None)

    # ------------------------------------------------------------ state for the checkpoint
    def state(self) -> bytes | None:
        """The strategy's state (instance attributes that are not constructor keywords),
        pickled with what it belongs to; None if it does not pickle."""
        keywords = set(inspect.signature(type(self.strategy)).parameters)
        attrs = {k: v for k, v in vars(self.strategy).items() if k not in keywords}
        try:
            return pickle.dumps({"strategy": self.path, "kwargs": self.kwargs, "attrs": attrs})
        except Exception as exc:  # an attribute that does not pickle (a lambda, a lock)
            log.warning("strategy state not checkpointed: %s", exc)
            return None

    def restore(self, blob: bytes | None) -> bool:
        """Put back `state()`'s attributes if they belong to this strategy and kwargs."""
        if not blob:
            return False
        try:
            saved = pickle.loads(blob)  # our own checkpoint in our own state_dir
        except Exception as exc:
            log.warning("strategy state in the checkpoint unreadable (%s); starting fresh", exc)
            return False
        if saved.get("strategy") != self.path or saved.get("kwargs") != self.kwargs:
            log.warning("strategy or strategy_kwargs changed since the checkpoint; its state "
                        "starts fresh")
            return False
        for key, value in saved["attrs"].items():
            setattr(self.strategy, key, value)
        return True
