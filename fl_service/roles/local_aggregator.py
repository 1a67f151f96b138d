"""LA: one long-lived process, a child of its parent and an aggregator for its clients.

A state machine, not two servers glued by locks: wait for a task from the parent; a train task
runs `local_rounds` rounds with the live clients starting from the global model and sends back
the last aggregate with the number of examples behind it and the aggregated metrics; an
evaluate task runs one evaluate round and sends back the aggregated metrics. It needs no model
code of its own.

Its strategy (fl_service.strategy) is a new object for each train task unless
cfg["keep_strategy_state"]; it is called with server_round = the local round (the global round
for evaluation). The config sent to clients is the parent's task config under
cfg["train_config"] under the strategy's configure_train additions, with "server-round" = the
global round and "local-round" = the local round.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fl_service.http_server import Route
from fl_service.roles.child import ParentSide
from fl_service.roles.rounds import RoundCoordinator, RoundResult, strategy_round
from fl_service.roles.service import Service
from fl_service.strategy import build_driver, config_record, freeze_heap
from fl_service.transport import (
    EVALUATE,
    FINISHED,
    TRAIN,
    Arrays,
    ParentLink,
    abstain_update,
    aggregator_routes,
    evaluate_update,
    train_update,
)

log = logging.getLogger("fl_service.la")


class LocalAggregator(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.driver = build_driver(cfg)  # a bad strategy stops us before anything is written
        self.train_config = dict(config_record(cfg.get("train_config") or {}, "train_config"))
        super().__init__(cfg)
        self.coordinator = RoundCoordinator(cfg["name"], self.state, cfg["example_cap_ratio"])
        # We declare to our parent what our children declared to us: our updates' counts are
        # sums of theirs, so the parent's cap composes with ours.
        self.parent = ParentSide(cfg, self.state, self.links, self.coordinator.declared_total)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {**super().routes(), **aggregator_routes(self.coordinator, self.access.child)}

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        if "gone" in message:
            return self.coordinator.control_gone(message)
        return self.parent.control(message)

    def run(self) -> None:
        freeze_heap()
        self.state.set(state="waiting")
        after = ""
        fresh = True  # the strategy object has not aggregated yet
        while True:
            got = self.parent.next_task(after)
            if got is None:
                continue
            if got == FINISHED:
                self.coordinator.set_finished(True)  # our clients finish too
                self.state.set(state="finished")
                after = FINISHED
                continue
            self.coordinator.set_finished(False)
            link, header, arrays = got
            after = header["task_id"]
            if header.get("type", TRAIN) == EVALUATE:
                self._evaluate(link, header, arrays)
            else:
                if not fresh and not self.cfg.get("keep_strategy_state"):
                    self.driver.renew()
                fresh = False
                self._train(link, header, arrays)
            self.state.set(state="waiting")

    def _train(self, link: ParentLink, header: dict[str, Any], arrays: Arrays) -> None:
        task_id, global_round = header["task_id"], header["global_round"]
        result, train_time = self._local_rounds(global_round, header.get("config") or {},
                                                arrays)
        if result is None:
            log.warning("%s: no client answered in global round %s; nothing to report",
                        self.cfg["name"], global_round)
            self.parent.send_update(link, abstain_update(task_id), None)
            return
        update = train_update(task_id, result.num_examples, result.metrics, result.histogram,
                              train_time)
        update["participants"] = result.participants
        self.parent.send_update(link, update, result.arrays)

    def _local_rounds(
        self, global_round: int, task_config: dict[str, Any], arrays: Arrays
    ) -> tuple[RoundResult | None, float]:
        """Run the local rounds; the last aggregate and the sum of each round's slowest training."""
        cfg = self.cfg
        last: RoundResult | None = None
        train_time = 0.0
        for local_round in range(1, cfg["local_rounds"] + 1):
            started = time.perf_counter()
            self.state.set(state="waiting", global_round=global_round, local_round=local_round)
            if not self.coordinator.wait_for_children(cfg["min_participants"],
                                                      cfg["round_timeout_s"]):
                break
            self.state.set(state="training")
            result = strategy_round(self.coordinator, self.driver, TRAIN, local_round,
                                    global_round, local_round, arrays,
                                    {**task_config, **self.train_config},
                                    cfg["min_participants"], cfg["round_timeout_s"])
            if result is None:
                break
            assert result.arrays is not None
            last, arrays = result, result.arrays
            train_time += result.train_time_s
            wall = time.perf_counter() - started
            self.state.set(num_examples=result.num_examples, histogram=result.histogram,
                           last_metrics={"accuracy": None, "loss": result.loss},
                           round_wall_s=wall, train_time_s=result.train_time_s,
                           aggregation_time_s=result.aggregation_time_s)
            self.results.write(
                global_round=global_round, local_round=local_round, accuracy=None,
                loss=result.loss, train_metrics=result.metrics,
                participants=result.participants, num_examples=result.num_examples,
                train_time_s=result.train_time_s, aggregation_time_s=result.aggregation_time_s,
                wall_time_s=wall,
            )
        return last, train_time

    def _evaluate(self, link: ParentLink, header: dict[str, Any], arrays: Arrays) -> None:
        """One evaluate round with the live clients; their aggregated metrics go up."""
        cfg = self.cfg
        task_id, global_round = header["task_id"], header["global_round"]
        started = time.perf_counter()
        self.state.set(state="waiting", global_round=global_round, local_round=0)
        result = None
        if self.coordinator.wait_for_children(cfg["min_participants"], cfg["round_timeout_s"]):
            self.state.set(state="training")
            result = strategy_round(self.coordinator, self.driver, EVALUATE, global_round,
                                    global_round, 0, arrays, header.get("config") or {},
                                    cfg["min_participants"], cfg["round_timeout_s"])
        if result is None:
            log.warning("%s: no usable evaluation in global round %s; nothing to report",
                        cfg["name"], global_round)
            self.parent.send_update(link, abstain_update(task_id), None)
            return
        self.parent.send_update(link, evaluate_update(task_id, result.num_examples,
                                                      result.metrics), None)
        self.state.set(last_federated_metrics=result.metrics)
        self.results.write(
            global_round=global_round, local_round=0, phase=EVALUATE, federated=result.metrics,
            participants=result.participants, num_examples=result.num_examples,
            wall_time_s=time.perf_counter() - started,
        )
