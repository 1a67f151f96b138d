"""No single update steers or kills a round: header numbers are bounded and finite, a train
update's count is capped by what its child declared at join, updates that would overflow the
aggregate are refused, one update that breaks the fold costs only itself, and an aggregate that
is not finite is never returned."""

import struct
import threading

import numpy as np
import pytest

from fl_service.aggregation import FedAvgAccumulator, OverflowGuard
from fl_service.metrics import ServiceState
from fl_service.roles.child import ParentSide
from fl_service.roles.rounds import RoundCoordinator
from fl_service.strategy import AggregationFailed, build_driver
from fl_service.transport import (
    MAX_COUNT,
    TRAIN,
    LinkCounters,
    Update,
    decode_frame,
    encode_frame,
    parse_declared,
    parse_update,
    train_update,
)

MODEL = {"w": np.ones((2, 3), dtype=np.float32), "n": np.array(4, dtype=np.int64)}


def raw_frame(header_json: str, arrays=MODEL) -> bytes:
    """A frame whose header is exactly `header_json` (JSON text an attacker may write)."""
    head = header_json.encode()
    model = encode_frame({}, arrays)[4 + len(b"{}"):]
    return struct.pack(">I", len(head)) + head + model


def parsed(header_json: str) -> Update:
    return parse_update(*decode_frame(raw_frame(header_json)))


# ---------------------------------------------------------------- header bounds
@pytest.mark.parametrize(("header", "reason"), [
    ('{"num_examples": 1e400}', "num_examples must be a positive integer below 2^53"),
    ('{"num_examples": NaN}', "num_examples"),
    ('{"num_examples": Infinity}', "num_examples"),
    ('{"num_examples": 1e12}', "num_examples"),  # a float, however round
    (f'{{"num_examples": {10**39}}}', "below 2^53"),
    (f'{{"num_examples": {2**53}}}', "below 2^53"),
    ('{"num_examples": 5, "metrics": {"loss": NaN}}', "finite numbers"),
    ('{"num_examples": 5, "metrics": {"loss": -Infinity}}', "finite numbers"),
    ('{"num_examples": 5, "metrics": {"loss": 1e400}}', "finite numbers"),
    ('{"num_examples": 5, "metrics": {"loss": 1e300}}', "magnitude at most 1e+200"),
    (f'{{"num_examples": 5, "metrics": {{"big": {10**400}}}}}', "finite numbers"),
    ('{"num_examples": 5, "metrics": {"curve": [0.5, NaN]}}', "finite numbers"),
    ('{"num_examples": 5, "histogram": {"0": 1e400}}', "histogram"),
    ('{"num_examples": 5, "histogram": {"0": -1}}', "histogram"),
    (f'{{"num_examples": 5, "histogram": {{"0": {10**20}}}}}', "histogram"),
    ('{"num_examples": 5, "histogram": [1, 2]}', "histogram"),
    ('{"num_examples": 5, "train_time_s": NaN}', "train_time_s"),
    ('{"num_examples": 5, "train_time_s": Infinity}', "train_time_s"),
    ('{"num_examples": 5, "train_time_s": -1}', "train_time_s"),
])
def test_header_numbers_out_of_bounds_make_the_update_invalid(header: str, reason: str) -> None:
    invalid = parsed(header).invalid
    assert invalid is not None and reason in invalid


def test_the_largest_legal_numbers_pass() -> None:
    update = parsed(f'{{"num_examples": {MAX_COUNT}, "metrics": {{"loss": 1e200, "n": -5}}, '
                    f'"histogram": {{"0": 0, "1": {MAX_COUNT}}}, "train_time_s": 2}}')
    assert update.invalid is None and update.num_examples == MAX_COUNT
    assert update.train_time_s == 2.0 and update.histogram == {"0": 0, "1": MAX_COUNT}


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "7", float("inf"), 2**53, 10**400])
def test_a_declared_count_must_be_a_positive_integer_below_2_53(value) -> None:
    with pytest.raises(ValueError, match="below 2"):
        parse_declared(value)
    assert parse_declared(None) is None and parse_declared(MAX_COUNT) == MAX_COUNT


# ---------------------------------------------------------------- the overflow guard
def test_the_guard_refuses_an_update_that_could_overflow_the_float32_sum() -> None:
    guard = OverflowGuard(MODEL)
    assert guard.admit({"w": 1.5, "n": 4.0}, 1000) is None
    reason = guard.admit({"w": 3e38, "n": 4.0}, 2)
    assert "tensor w" in reason and "overflow the aggregate" in reason
    assert guard.admit({"w": 1e30, "n": 4.0}, 10**6) is None  # 1e36 < 1.7e38: still fits
    assert "overflow" in guard.admit({"w": 1e30, "n": 4.0}, 10**9)  # the sum so far counts


def test_an_accumulator_whose_fold_failed_refuses_to_give_a_result(monkeypatch) -> None:
    acc = FedAvgAccumulator(batch=1)
    acc.add(MODEL, 3)
    monkeypatch.setattr("fl_service.aggregation._fold",
                        lambda *a, **k: (_ for _ in ()).throw(MemoryError("half-way")))
    with pytest.raises(MemoryError):
        acc.add(MODEL, 3)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="failed mid-fold: MemoryError: half-way"):
        acc.add(MODEL, 3)
    with pytest.raises(ValueError, match="mid-fold"):
        acc.result()


# ---------------------------------------------------------------- non-finite aggregates
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_fast_path_aggregate_that_is_not_finite_fails_instead_of_being_returned() -> None:
    # Flower's path is checked the same way (test_strategy.py, bad aggregates).
    aggregation = build_driver({}).train_aggregation(1, MODEL)
    huge = {"w": np.full((2, 3), 3e38, dtype=np.float32), "n": MODEL["n"]}
    for child in ("a", "b"):  # folded without the round's guard
        aggregation.add(child, huge, 4, {"num-examples": 4})
    with pytest.raises(AggregationFailed, match="tensor w: contains NaN or Inf"):
        aggregation.result()


def test_aggregated_metrics_that_are_not_finite_fail_the_round() -> None:
    aggregation = build_driver({}).train_aggregation(1, MODEL)
    aggregation.add("a", MODEL, 2, {"num-examples": 2, "loss": 1e200})
    aggregation.metrics[0]["loss"] = float("inf")  # as a strategy's metric function might give
    with pytest.raises(AggregationFailed, match="metric loss is not finite"):
        aggregation.result()


# ---------------------------------------------------------------- the round
class Round:
    """A RoundCoordinator with one train round open in a thread."""

    def __init__(self, declared: dict[str, int | None], strategy: str = "FedAvg") -> None:
        cfg = {"name": "agg", "role": "local_aggregator", "pipeline": "p", "parent": "x:1",
               "global_rounds": 1}
        self.state = ServiceState(cfg, LinkCounters())
        self.coordinator = RoundCoordinator("agg", self.state, cap_ratio=2.0)
        for child, count in declared.items():
            self.coordinator.join(child, "client", count)
        driver = build_driver({"strategy": f"flwr.serverapp.strategy:{strategy}"})
        self.aggregation = driver.train_aggregation(1, MODEL)
        self.results: list = []
        self.thread = threading.Thread(target=lambda: self.results.append(
            self.coordinator.run_round(TRAIN, 1, 1, {}, MODEL, self.aggregation,
                                       min_participants=1, timeout_s=10)))
        self.thread.start()
        header, _ = decode_frame(self.coordinator.next_task(next(iter(declared)), "", 5))
        self.task_id = header["task_id"]

    def submit(self, child: str, num_examples: int, arrays=MODEL) -> tuple[int, str]:
        update = parse_update({**train_update(self.task_id, num_examples, {}), "name": child},
                              arrays)
        reply = self.coordinator.submit(child, update)
        return reply.status, reply.body.decode()

    def result(self):
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.results[0]


def test_a_count_over_the_declared_cap_is_rejected_and_the_round_goes_on() -> None:
    r = Round({"honest": 100, "liar": 100, "silent": None})
    status, body = r.submit("liar", 10**12)
    assert status == 422 and "over the cap 200 (2 x the 100 declared at join)" in body
    status, body = r.submit("silent", 50)
    assert status == 422 and "no num_examples declared at join" in body
    assert r.submit("honest", 200)[0] == 200  # exactly the cap is fine
    result = r.result()
    assert result.participants == ["honest"] and result.num_examples == 200
    assert r.state.rejected_updates == 2


def test_an_update_that_would_overflow_the_aggregate_is_rejected_alone() -> None:
    r = Round({"honest": 10, "evil": 10})
    evil = {"w": np.full((2, 3), 3e38, dtype=np.float32), "n": MODEL["n"]}
    status, body = r.submit("evil", 10, evil)
    assert status == 422 and "would overflow the aggregate" in body
    assert r.submit("honest", 10, {**MODEL, "w": MODEL["w"] * 3})[0] == 200
    result = r.result()
    assert result.participants == ["honest"]
    np.testing.assert_array_equal(result.arrays["w"], MODEL["w"] * 3)


def test_an_update_the_fold_raises_on_is_rejected_and_the_others_still_count() -> None:
    r = Round({"a": 5, "b": 5, "c": 5}, strategy="FedMedian")
    real_add = r.aggregation.add

    def add(child, *args):
        if child == "b":
            raise OverflowError("int too large to convert to float")
        real_add(child, *args)

    r.aggregation.add = add
    assert r.submit("a", 5)[0] == 200
    status, body = r.submit("b", 5)
    assert status == 422 and "could not be aggregated: OverflowError" in body
    assert r.submit("c", 5)[0] == 200
    result = r.result()
    assert result.participants == ["a", "c"] and r.state.failed_aggregations == 0


def test_a_round_whose_aggregate_is_not_finite_returns_nothing_and_is_counted() -> None:
    r = Round({"a": 5})
    r.aggregation.result = lambda: (_ for _ in ()).throw(AggregationFailed("FedAvg's aggregate: "
                                                                            "NaN"))
    assert r.submit("a", 5)[0] == 200
    assert r.result() is None and r.state.failed_aggregations == 1


def test_declarations_survive_a_missed_round_and_go_with_a_leave() -> None:
    coordinator = RoundCoordinator("agg", ServiceState(
        {"name": "agg", "role": "local_aggregator", "pipeline": "p", "parent": "x:1",
         "global_rounds": 1}, LinkCounters()))
    coordinator.join("a", "client", 30)
    coordinator.join("b", "client", 12)
    coordinator.join("a", "client", None)  # a heartbeat without a count keeps the old one
    assert coordinator.declared_total() == 42
    coordinator.leave("b")
    assert coordinator.declared_total() == 30


# ---------------------------------------------------------------- the child's declarations
class RecordingLink:
    def __init__(self) -> None:
        self.joins: list[int | None] = []
        self.sent: list[dict] = []
        self.peer = "parent"

    def join(self, num_examples: int | None = None) -> str:
        self.joins.append(num_examples)
        return "parent"

    def send_update(self, header, arrays):
        self.sent.append(header)
        return True, ""


def test_a_child_declares_at_join_and_again_before_an_update_when_its_count_changed() -> None:
    cfg = {"name": "la1", "role": "local_aggregator", "pipeline": "p", "parent": "127.0.0.1:9",
           "global_rounds": 1, "tls_ca": "", "config_path": ""}
    links = LinkCounters()
    count = {"now": 0}
    side = ParentSide(cfg, ServiceState(cfg, links), links, lambda: count["now"])
    link = RecordingLink()
    side.link = link
    side._join(link)  # nothing known yet: nothing declared
    side.send_update(link, train_update("t1", 7, {}), MODEL)  # declares its first reply's count
    count["now"] = 40
    side.send_update(link, train_update("t2", 35, {}), MODEL)
    side.send_update(link, train_update("t3", 38, {}), MODEL)  # unchanged: no extra join
    assert link.joins == [None, 7, 40] and len(link.sent) == 3


def test_a_reason_shows_a_huge_number_shortened() -> None:
    invalid = parsed(f'{{"num_examples": {10**400}}}').invalid
    assert invalid.endswith("got 10000000000000000000...(401 characters)")


def test_summed_histograms_stay_a_count_the_parent_accepts() -> None:
    r = Round({"a": 5, "b": 5})
    for child in ("a", "b"):
        update = parse_update({**train_update(r.task_id, 5, {}, {"0": MAX_COUNT - 1, "1": 2}),
                               "name": child}, MODEL)
        assert r.coordinator.submit(child, update).status == 200
    assert r.result().histogram == {"0": MAX_COUNT, "1": 4}
