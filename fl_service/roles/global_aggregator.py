"""GA: owns the global model and round counter, evaluates centrally, checkpoints every round."""

from __future__ import annotations

import logging
import time
from typing import Any

from fl_service.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fl_service.datasets import make_loader
from fl_service.device import pick_device
from fl_service.roles.rounds import RoundCoordinator
from fl_service.roles.service import Service, load_arrays, model_arrays
from fl_service.task_loader import load_task
from fl_service.transport import aggregator_routes

log = logging.getLogger("fl_service.ga")


class GlobalAggregator(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        # Task and device first: a bad `task` or `device` stops us before anything is written.
        self.task = load_task(cfg)
        self.device = pick_device(cfg)
        super().__init__(cfg)
        self.coordinator = RoundCoordinator(cfg["name"], self.state)

    def routes(self):  # noqa: ANN201
        return {**super().routes(), **aggregator_routes(self.coordinator)}

    def run(self) -> None:
        cfg = self.cfg
        model = self.task.load_model(cfg)
        _, test_set = self.task.load_data(cfg)
        test_loader = make_loader(test_set, cfg, shuffle=False)
        history: list[dict[str, Any]] = []
        done = 0
        checkpoint = load_checkpoint(self.state_dir)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            done, history = int(checkpoint["round"]), list(checkpoint["history"])
            log.info("%s: resuming after global round %d", cfg["name"], done)
        if history:
            last = history[-1]
            self.state.set(last_metrics={"accuracy": last["accuracy"], "loss": last["loss"]})
        self.state.set(global_round=done)
        arrays = model_arrays(model)
        for global_round in range(done + 1, cfg["global_rounds"] + 1):
            arrays = self._global_round(global_round, arrays, model, test_loader, history)
        self.state.set(final_model=str(save_final_model(self.state_dir, model.state_dict())))
        self.coordinator.set_finished(True)
        self.state.set(state="finished")
        log.info("%s: finished %d global rounds", cfg["name"], cfg["global_rounds"])

    def _global_round(self, global_round, arrays, model, test_loader, history):  # noqa: ANN001, ANN202
        cfg = self.cfg
        while True:  # the same round again until enough children answer: never lose a round
            self.state.set(state="waiting", global_round=global_round)
            self.coordinator.wait_for_children(cfg["min_participants"])
            self.state.set(state="training")
            started = time.perf_counter()
            result = self.coordinator.run_round(global_round, 0, arrays,
                                                cfg["min_participants"], cfg["round_timeout_s"])
            if result is not None:
                break
            log.warning("%s: global round %d had fewer than %d answers; running it again",
                        cfg["name"], global_round, cfg["min_participants"])
        wall = time.perf_counter() - started
        self.state.set(state="aggregating")
        load_arrays(model, result.arrays)
        eval_start = time.perf_counter()
        loss, accuracy = self.task.test(model, test_loader, cfg, self.device)
        eval_time = time.perf_counter() - eval_start
        entry = {"global_round": global_round, "accuracy": accuracy, "loss": loss,
                 "participants": result.participants, "num_examples": result.num_examples}
        history.append(entry)
        save_checkpoint(self.state_dir, model.state_dict(), global_round, history)
        self.state.set(last_metrics={"accuracy": accuracy, "loss": loss},
                       num_examples=result.num_examples, histogram=result.histogram,
                       round_wall_s=wall, train_time_s=result.train_time_s,
                       aggregation_time_s=result.aggregation_time_s)
        self.results.write(
            **entry, local_round=0, train_time_s=result.train_time_s,
            aggregation_time_s=result.aggregation_time_s, serialization_time_s=
            result.serialization_time_s, eval_time_s=eval_time, wall_time_s=wall,
        )
        log.info("%s: global round %d accuracy %.4f loss %.4f (%s)", cfg["name"], global_round,
                 accuracy, loss, ", ".join(result.participants))
        return result.arrays
