"""LA: one long-lived process, a child of its parent and an aggregator for its clients.

A state machine, not two servers glued by locks: wait for a global task, run `local_rounds`
rounds with the live clients starting from the global model, send back the last aggregate with
the number of examples behind that aggregate, wait again. It needs no model code of its own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fl_service.http_server import Route
from fl_service.roles.child import ParentSide
from fl_service.roles.rounds import RoundCoordinator, RoundResult
from fl_service.roles.service import Service
from fl_service.transport import FINISHED, aggregator_routes

log = logging.getLogger("fl_service.la")


class LocalAggregator(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.coordinator = RoundCoordinator(cfg["name"], self.state)
        self.parent = ParentSide(cfg, self.state, self.links)

    def routes(self) -> dict[tuple[str, str], Route]:
        return {**super().routes(), **aggregator_routes(self.coordinator)}

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.parent.control(message)

    def run(self) -> None:
        self.state.set(state="waiting")
        after = ""
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
            result, train_time = self._local_rounds(header["global_round"], arrays)
            if result is None:
                log.warning("%s: no client answered in global round %s; nothing to report",
                            self.cfg["name"], header["global_round"])
                self.parent.send_update(link, {"task_id": after, "abstain": True}, None)
            else:
                update = {"task_id": after, "num_examples": result.num_examples,
                          "histogram": result.histogram, "train_time_s": train_time,
                          "loss": result.loss, "participants": result.participants}
                self.parent.send_update(link, update, result.arrays)
            self.state.set(state="waiting")

    def _local_rounds(self, global_round: int, arrays: list) -> tuple[RoundResult | None, float]:
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
            result = self.coordinator.run_round(global_round, local_round, arrays,
                                                cfg["min_participants"], cfg["round_timeout_s"])
            if result is None:
                break
            last, arrays = result, result.arrays
            train_time += result.train_time_s
            wall = time.perf_counter() - started
            self.state.set(num_examples=result.num_examples, histogram=result.histogram,
                           last_metrics={"accuracy": None, "loss": result.loss},
                           round_wall_s=wall, train_time_s=result.train_time_s,
                           aggregation_time_s=result.aggregation_time_s)
            self.results.write(
                global_round=global_round, local_round=local_round, accuracy=None,
                loss=result.loss, participants=result.participants,
                num_examples=result.num_examples, train_time_s=result.train_time_s,
                aggregation_time_s=result.aggregation_time_s, wall_time_s=wall,
            )
        return last, train_time
