"""One aggregator's rounds, shared by the GA and the LA.

`RoundCoordinator` is the aggregator end of the protocol (transport.Aggregator): it keeps the
children that are connected, opens one round at a time for the children live at that moment,
folds accepted updates into a sample-weighted average as they arrive (so little is left to do
when the last one lands), and closes the round when every selected child has answered or at the
timeout. Children that were selected but did not answer are dropped from the live set; they come
back with their next poll. Bad updates are rejected, logged and counted, never aggregated.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fl_service.aggregation import FedAvgAccumulator, validate_update
from fl_service.http_server import Reply
from fl_service.metrics import ServiceState
from fl_service.transport import (
    FINISHED,
    abstained_reply,
    accepted_reply,
    encode_task,
    rejected_reply,
)

log = logging.getLogger("fl_service.rounds")


@dataclass
class RoundResult:
    arrays: list[np.ndarray]
    num_examples: int  # behind this aggregate only
    participants: list[str]
    train_time_s: float  # the slowest participant's reported training time
    aggregation_time_s: float
    histogram: dict[str, int]
    loss: float | None  # sample-weighted mean of the participants' reported losses
    serialization_time_s: float


@dataclass
class _OpenRound:
    task_id: str
    frame: bytes
    reference: list[np.ndarray]
    selected: set[str]
    responded: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)
    acc: FedAvgAccumulator = field(default_factory=lambda: FedAvgAccumulator(batch=1))
    acc_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    train_times: list[float] = field(default_factory=list)
    histogram: dict[str, int] = field(default_factory=dict)
    loss_sum: float = 0.0
    loss_examples: int = 0
    aggregation_time_s: float = 0.0


class RoundCoordinator:
    def __init__(self, name: str, state: ServiceState) -> None:
        self.name = name
        self.state = state
        self._cond = threading.Condition()
        self._children: dict[str, str] = {}  # name -> role
        self._round: _OpenRound | None = None
        self._finished = False
        self._boot = uuid.uuid4().hex[:8]  # task ids from a restarted aggregator never repeat
        self._seq = 0
        state.children = self.children

    # ------------------------------------------------------------ protocol side (HTTP threads)
    def children(self) -> list[str]:
        with self._cond:
            return list(self._children)

    def join(self, child: str, role: str) -> None:
        with self._cond:
            self._children[child] = role or self._children.get(child, "")
            self._cond.notify_all()

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
                self._cond.wait(left)

    def submit(self, child: str, header: dict[str, Any], arrays: list[np.ndarray] | None) -> Reply:
        with self._cond:
            r = self._round
        if (
            r is None
            or header.get("task_id") != r.task_id
            or child not in r.selected
            or child in r.responded
        ):
            return rejected_reply(child, "no open task for this update", stale=True)
        if header.get("abstain") is True and arrays is None:
            # An LA none of whose clients answered: the round need not wait for it.
            with self._cond:
                r.responded.add(child)
                self._cond.notify_all()
            return abstained_reply(child)
        num_examples = header.get("num_examples")
        reason = validate_update(r.reference, arrays or [], num_examples)
        if reason is None:
            with r.acc_lock:
                if r.closed:
                    return rejected_reply(child, "the round closed before this update", stale=True)
                start = time.perf_counter()
                r.acc.add(arrays, int(num_examples))
                r.aggregation_time_s += time.perf_counter() - start
                r.accepted.append(child)
                r.train_times.append(float(header.get("train_time_s") or 0.0))
                for label, count in (header.get("histogram") or {}).items():
                    r.histogram[str(label)] = r.histogram.get(str(label), 0) + int(count)
                if isinstance(header.get("loss"), int | float):
                    r.loss_sum += float(header["loss"]) * int(num_examples)
                    r.loss_examples += int(num_examples)
        else:
            log.warning("%s: rejected update from %s: %s", self.name, child, reason)
            self.state.count_rejected()
        with self._cond:
            r.responded.add(child)
            self._cond.notify_all()
        return accepted_reply(child) if reason is None else rejected_reply(child, reason)

    def leave(self, child: str) -> None:
        with self._cond:
            self._children.pop(child, None)
            r = self._round
            if r is not None and child not in r.responded:
                r.selected.discard(child)  # the round need not wait for it
            self._cond.notify_all()

    # ------------------------------------------------------------ driver side (role thread)
    def set_finished(self, finished: bool) -> None:
        with self._cond:
            self._finished = finished
            self._cond.notify_all()

    def wake(self) -> None:
        """Make waiters re-check their conditions (e.g. wait_for_children's `give_up`)."""
        with self._cond:
            self._cond.notify_all()

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
        global_round: int,
        local_round: int,
        arrays: list[np.ndarray],
        min_participants: int,
        timeout_s: float,
    ) -> RoundResult | None:
        """Send `arrays` to the live children; the aggregate, or None if < min answered."""
        start = time.perf_counter()
        with self._cond:
            self._seq += 1
            task_id = f"{self._boot}-{self._seq}"
        frame = encode_task(task_id, global_round, local_round, arrays)
        serialization = time.perf_counter() - start
        deadline = time.monotonic() + timeout_s
        with self._cond:
            r = _OpenRound(task_id, frame, arrays, set(self._children))
            self._round = r
            self._cond.notify_all()
            while not r.selected <= r.responded:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        with r.acc_lock:
            r.closed = True
            enough = len(r.accepted) >= min_participants
            if enough:
                fold_start = time.perf_counter()
                aggregate = r.acc.result()
                r.aggregation_time_s += time.perf_counter() - fold_start
        with self._cond:
            self._round = None
            missing = r.selected - r.responded
            for child in missing:
                self._children.pop(child, None)
        if missing:
            log.warning("%s: round %s/%s closed without %s", self.name, global_round,
                        local_round, ", ".join(sorted(missing)))
        if not enough:
            return None
        return RoundResult(
            arrays=aggregate,
            num_examples=r.acc.num_examples,
            participants=sorted(r.accepted),
            train_time_s=max(r.train_times, default=0.0),
            aggregation_time_s=r.aggregation_time_s,
            histogram=r.histogram,
            loss=r.loss_sum / r.loss_examples if r.loss_examples else None,
            serialization_time_s=serialization,
        )
