"""One aggregator's rounds, shared by the GA and the LA.

`RoundCoordinator` is the aggregator end of the protocol (transport.Aggregator): it keeps the
children that are connected, opens one round (a train or an evaluate task) at a time for the
children live at that moment, hands accepted replies to the round's aggregation as they arrive
(fl_service.strategy: the FedAvg kernel folds them in at once, so little is left to do when the
last one lands) and closes the round when every selected child has answered or at the timeout.
Who is asked, deadlines and min_participants are decided here, never by the strategy. Children
that were selected but did not answer are dropped from the live set; they come back with their
next poll. Bad updates and error replies are rejected, logged and counted, never aggregated; a
round whose aggregation fails (the strategy raises, or its aggregate or metrics are not finite)
counts as one with too few answers, so the caller keeps its previous model.

Update bounds (docs/architecture.md): a child declares at join how many examples it trains on;
a train update may claim at most `cap_ratio` times that (and always below 2^53), and is admitted
only while the weighted sum cannot overflow (aggregation.OverflowGuard). An update that breaks
a bound, or that the aggregation raises on, is rejected with its reason (HTTP 422); the round
goes on with the others.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fl_service.aggregation import OverflowGuard, validate_update
from fl_service.http_server import Reply
from fl_service.metrics import ServiceState
from fl_service.strategy import NUM_EXAMPLES, Aggregation, AggregationFailed, StrategyDriver
from fl_service.transport import (
    EVALUATE,
    FINISHED,
    MAX_COUNT,
    TRAIN,
    Arrays,
    Update,
    abstained_reply,
    accepted_reply,
    encode_task,
    error_recorded_reply,
    rejected_reply,
)

log = logging.getLogger("fl_service.rounds")


@dataclass
class RoundResult:
    arrays: Arrays | None  # the aggregate; None for an evaluate round
    metrics: dict[str, Any]  # the strategy's aggregated MetricRecord, with "num-examples"
    num_examples: int  # behind this aggregate only
    participants: list[str]
    train_time_s: float  # the slowest participant's reported training time
    aggregation_time_s: float
    histogram: dict[str, int]
    serialization_time_s: float

    @property
    def loss(self) -> float | None:
        """The aggregated training loss, where the replies report one."""
        for key in ("loss", "train_loss"):
            value = self.metrics.get(key)
            if isinstance(value, int | float):
                return float(value)
        return None


@dataclass
class _OpenRound:
    task_id: str
    kind: str
    frame: bytes
    reference: Arrays
    aggregation: Aggregation
    guard: OverflowGuard
    selected: set[str]
    responded: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)
    acc_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    train_times: list[float] = field(default_factory=list)
    histogram: dict[str, int] = field(default_factory=dict)
    aggregation_time_s: float = 0.0


DEFAULT_CAP_RATIO = 2.0  # config key example_cap_ratio


class RoundCoordinator:
    def __init__(self, name: str, state: ServiceState,
                 cap_ratio: float = DEFAULT_CAP_RATIO) -> None:
        self.name = name
        self.state = state
        self.cap_ratio = cap_ratio
        # One lock, two conditions: the driver waits on `_cond` (joins, answers, leaves);
        # the children's long polls wait on `_tasks`, woken only when a task opens or the
        # pipeline finishes. Waking every poll at every answer cost O(children^2) a round
        # (6 s of CPU at 1000 children).
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._tasks = threading.Condition(lock)
        self._children: dict[str, str] = {}  # name -> role
        # name -> the example count it declared at its last join. Kept while a child is
        # dropped for a missed round (it comes back by polling, without joining); gone when it
        # leaves.
        self._declared: dict[str, int] = {}
        self._round: _OpenRound | None = None
        self._finished = False
        self._boot = uuid.uuid4().hex[:8]  # task ids from a restarted aggregator never repeat
        self._seq = 0
        state.children = self.children

    # ------------------------------------------------------------ protocol side (HTTP threads)
    def children(self) -> list[str]:
        with self._cond:
            return list(self._children)

    def join(self, child: str, role: str, num_examples: int | None = None) -> None:
        with self._cond:
            self._children[child] = role or self._children.get(child, "")
            if num_examples is not None and self._declared.get(child) != num_examples:
                log.info("%s: %s declares %d examples", self.name, child, num_examples)
                self._declared[child] = num_examples
            self._cond.notify_all()

    def declared_total(self) -> int:
        """The sum of the example counts the children declared (what an LA declares)."""
        with self._cond:
            return min(sum(self._declared.values()), MAX_COUNT)

    def _over_cap(self, child: str, num_examples: int) -> str | None:
        with self._cond:
            declared = self._declared.get(child)
        if declared is None:
            return "no num_examples declared at join (join again declaring it)"
        cap = min(int(self.cap_ratio * declared), MAX_COUNT)
        if num_examples > cap:
            return (f"num_examples {num_examples} over the cap {cap} "
                    f"({self.cap_ratio:g} x the {declared} declared at join)")
        return None

    def next_task(self, child: str, after: str, timeout: float) -> bytes | str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            if child not in self._children:
                # Polling counts as joining: a child dropped after a missed round comes back.
                self._children[child] = ""
                self._cond.notify_all()
            while True:
                # A child that was told (after == FINISHED) waits like any poll: the pipeline may
                # go on (a GA given more global_rounds), and then it gets the next task.
                if self._finished and after != FINISHED:
                    return FINISHED
                r = self._round
                if r and child in r.selected and child not in r.responded and r.task_id != after:
                    return r.frame
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._tasks.wait(left)

    def submit(self, child: str, update: Update) -> Reply:
        with self._cond:
            r = self._round
        if (
            r is None
            or update.task_id != r.task_id
            or child not in r.selected
            or child in r.responded
        ):
            return rejected_reply(child, "no open task for this update", stale=True)
        if update.abstain:
            # An LA none of whose clients answered: the round need not wait for it.
            self._responded(r, child)
            return abstained_reply(child)
        if update.error is not None:
            log.warning("%s: %s reported an error: %s", self.name, child, update.error)
            self.state.count_rejected()
            self._responded(r, child)
            return error_recorded_reply(child)
        magnitudes: dict[str, float] = {}
        reason = update.invalid or self._check(r, update, magnitudes)
        if reason is None and r.kind == TRAIN:
            reason = self._over_cap(child, update.num_examples)
        if reason is None:
            with r.acc_lock:
                if r.closed:
                    return rejected_reply(child, "the round closed before this update", stale=True)
                reason = self._fold(r, child, update, magnitudes)
        if reason is not None:
            log.warning("%s: rejected update from %s: %s", self.name, child, reason)
            self.state.count_rejected()
        self._responded(r, child)
        return accepted_reply(child) if reason is None else rejected_reply(child, reason)

    @staticmethod
    def _check(r: _OpenRound, update: Update, magnitudes: dict[str, float]) -> str | None:
        if r.kind == EVALUATE:
            return None if update.arrays is None else "an evaluate reply carries no model"
        if update.arrays is None:
            return "a train reply needs the model"
        return validate_update(r.reference, update.arrays, magnitudes)

    @staticmethod
    def _fold(r: _OpenRound, child: str, update: Update, magnitudes: dict[str, float]
              ) -> str | None:
        """Fold `update` into the round (caller holds r.acc_lock); why not, or None."""
        reason = r.guard.admit(magnitudes, update.num_examples)
        if reason is not None:
            return reason
        start = time.perf_counter()
        try:
            r.aggregation.add(child, update.arrays, update.num_examples, update.metrics)
        except Exception as exc:  # one child's update must never take the round down
            return f"could not be aggregated: {type(exc).__name__}: {exc}"
        finally:
            r.aggregation_time_s += time.perf_counter() - start
        r.accepted.append(child)
        r.train_times.append(update.train_time_s)
        for label, count in update.histogram.items():
            # Capped, so that a sum of legal counts stays a legal count for our parent.
            r.histogram[label] = min(r.histogram.get(label, 0) + count, MAX_COUNT)
        return None

    def _responded(self, r: _OpenRound, child: str) -> None:
        with self._cond:
            r.responded.add(child)
            self._cond.notify_all()

    def leave(self, child: str) -> None:
        with self._cond:
            self._children.pop(child, None)
            self._declared.pop(child, None)
            r = self._round
            if r is not None and child not in r.responded:
                r.selected.discard(child)  # the round need not wait for it
            self._cond.notify_all()

    def control_gone(self, message: dict[str, Any]) -> dict[str, Any]:
        """`/control {"gone": [child, ...]}`: children that failed or left (the orchestrator
        says so): the open round stops waiting for them. One that is alive after all comes
        back by polling and joins again."""
        gone = message.get("gone")
        if set(message) != {"gone"} or not isinstance(gone, list) or not all(
            isinstance(c, str) and c for c in gone
        ):
            raise ValueError('expected {"gone": ["child", ...]}')
        for child in gone:
            self.leave(child)
        log.info("%s: told %s are gone", self.name, ", ".join(gone) or "nobody")
        return {"gone": gone}

    # ------------------------------------------------------------ driver side (role thread)
    def set_finished(self, finished: bool) -> None:
        with self._cond:
            self._finished = finished
            self._cond.notify_all()
            self._tasks.notify_all()

    def wake(self) -> None:
        """Make waiters re-check their conditions (e.g. wait_for_children's `give_up`)."""
        with self._cond:
            self._cond.notify_all()
            self._tasks.notify_all()

    def wait_for_children(
        self, count: int, timeout: float | None = None, give_up: Callable[[], bool] = bool
    ) -> bool:
        """Wait until at least `count` children are connected (forever when timeout is None);
        False at the timeout or once `give_up()` is true (checked whenever woken)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._children) < count:
                if give_up():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def run_round(
        self,
        kind: str,
        global_round: int,
        local_round: int,
        config: dict[str, Any],
        arrays: Arrays,
        aggregation: Aggregation,
        min_participants: int,
        timeout_s: float,
    ) -> RoundResult | None:
        """Send a `kind` (train/evaluate) task with `arrays` and `config` to the live children;
        the aggregate, or None if fewer than `min_participants` answered or it failed."""
        start = time.perf_counter()
        with self._cond:
            self._seq += 1
            task_id = f"{self._boot}-{self._seq}"
        frame = encode_task(task_id, kind, global_round, local_round, config, arrays)
        serialization = time.perf_counter() - start
        deadline = time.monotonic() + timeout_s
        with self._cond:
            r = _OpenRound(task_id, kind, frame, arrays, aggregation, OverflowGuard(arrays),
                           set(self._children))
            self._round = r
            self._tasks.notify_all()
            while not r.selected <= r.responded:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        failure = None
        with r.acc_lock:
            r.closed = True
            enough = len(r.accepted) >= min_participants
            if enough:
                fold_start = time.perf_counter()
                try:
                    aggregate, metrics = r.aggregation.result()
                except AggregationFailed as exc:
                    failure = str(exc)
                except Exception as exc:  # a bug must cost this round, not the service
                    failure = f"{type(exc).__name__}: {exc}"
                r.aggregation_time_s += time.perf_counter() - fold_start
        with self._cond:
            self._round = None
            missing = r.selected - r.responded
            for child in missing:
                self._children.pop(child, None)
        if missing:
            log.warning("%s: %s round %s/%s closed without %s", self.name, kind, global_round,
                        local_round, ", ".join(sorted(missing)))
        if failure is not None:
            log.warning("%s: %s round %s/%s: aggregation failed: %s", self.name, kind,
                        global_round, local_round, failure)
            self.state.count_failed_aggregation()
        if not enough or failure is not None:
            return None
        return RoundResult(
            arrays=aggregate,
            metrics=metrics,
            num_examples=int(metrics[NUM_EXAMPLES]),
            participants=sorted(r.accepted),
            train_time_s=max(r.train_times, default=0.0),
            aggregation_time_s=r.aggregation_time_s,
            histogram=r.histogram,
            serialization_time_s=serialization,
        )


def strategy_round(
    coordinator: RoundCoordinator, driver: StrategyDriver, kind: str, server_round: int,
    global_round: int, local_round: int, arrays: Arrays, config: dict[str, Any],
    min_participants: int, timeout_s: float,
) -> RoundResult | None:
    """One `kind` round under `driver`'s strategy, called with `server_round`: its configure_*
    gives what is sent (config with "server-round" = `global_round` and "local-round" =
    `local_round`), its aggregate_* the result. The children asked are the live ones."""
    if kind == TRAIN:
        sent, task_config = driver.configure_train(server_round, arrays, config)
        aggregation = driver.train_aggregation(server_round, sent)
    else:
        sent, task_config = driver.configure_evaluate(server_round, arrays, config)
        aggregation = driver.evaluate_aggregation(server_round)
    task_config.update({"server-round": global_round, "local-round": local_round})
    return coordinator.run_round(kind, global_round, local_round, task_config, sent,
                                 aggregation, min_participants, timeout_s)
