"""GA: owns the global model and round counter, evaluates centrally, checkpoints every round.

The number of global rounds can be changed while it runs (`/control {"global_rounds": N}`, the
orchestrator's budget stop): it is kept in <state_dir>/global_rounds.json so a GA restarted with
the same config keeps it. A finished GA given more rounds goes on training.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
from torch import nn
from torch.utils.data import DataLoader

from fl_service.checkpoint import load_checkpoint, save_checkpoint, save_final_model
from fl_service.datasets import make_loader
from fl_service.device import pick_device
from fl_service.http_server import Route
from fl_service.roles.rounds import RoundCoordinator
from fl_service.roles.service import Service, load_arrays, model_arrays
from fl_service.task_loader import load_task
from fl_service.transport import aggregator_routes

log = logging.getLogger("fl_service.ga")
ROUNDS_OVERRIDE = "global_rounds.json"


class GlobalAggregator(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        # Task and device first: a bad `task` or `device` stops us before anything is written.
        self.task = load_task(cfg)
        self.device = pick_device(cfg)
        super().__init__(cfg)
        self.coordinator = RoundCoordinator(cfg["name"], self.state)
        self._rounds = threading.Condition()
        self._done = 0  # completed global rounds
        self._round_open = False
        self.state.set(global_rounds=self._load_override())
        # Resume before the HTTP port opens, so no one (a readiness probe, the orchestrator)
        # ever sees a restarted GA at round 0 while it still holds completed rounds.
        self._checkpoint = load_checkpoint(self.state_dir)
        self._history: list[dict[str, Any]] = []
        if self._checkpoint is not None:
            self._done = int(self._checkpoint["round"])
            self._history = list(self._checkpoint["history"])
            self.state.set(global_round=self._done)
            log.info("%s: resuming after global round %d", cfg["name"], self._done)
        if self._history:
            last = self._history[-1]
            self.state.set(last_metrics={"accuracy": last["accuracy"], "loss": last["loss"]})

    # ------------------------------------------------------------ global_rounds control
    def _load_override(self) -> int:
        path = self.state_dir / ROUNDS_OVERRIDE
        if path.exists():
            saved = json.loads(path.read_text())
            # Only while the config still says what it said when the override was made.
            if saved.get("config_global_rounds") == self.cfg["global_rounds"]:
                return int(saved["global_rounds"])
        return self.cfg["global_rounds"]

    def _target(self) -> int:
        return int(self.state.global_rounds)

    def _stopped(self) -> bool:
        return self._done >= self._target()

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        wanted = message.get("global_rounds")
        if set(message) != {"global_rounds"} or isinstance(wanted, bool) or not isinstance(
            wanted, int
        ) or wanted < 1:
            raise ValueError('expected {"global_rounds": N} with an integer N >= 1')
        with self._rounds:
            # A round already sent out is finished, never cut short.
            in_force = max(wanted, self._done + (1 if self._round_open else 0))
            self.state.set(global_rounds=in_force)
            (self.state_dir / ROUNDS_OVERRIDE).write_text(json.dumps(
                {"global_rounds": in_force, "config_global_rounds": self.cfg["global_rounds"]}))
            self._rounds.notify_all()
        self.coordinator.wake()
        log.info("%s: global_rounds set to %d", self.cfg["name"], in_force)
        return {"global_rounds": in_force}

    def routes(self) -> dict[tuple[str, str], Route]:
        return {**super().routes(), **aggregator_routes(self.coordinator)}

    # ------------------------------------------------------------ rounds
    def run(self) -> None:
        cfg = self.cfg
        model = self.task.load_model(cfg)
        _, test_set = self.task.load_data(cfg)
        test_loader = make_loader(test_set, cfg, shuffle=False)
        history = self._history
        if self._checkpoint is not None:
            model.load_state_dict(self._checkpoint["model"])
            self._checkpoint = None  # the model holds it now
        arrays = model_arrays(model)
        while True:
            if self._done < self._target():
                self.state.set(global_round=self._done + 1)
                result = self._global_round(self._done + 1, arrays, model, test_loader, history)
                if result is not None:
                    arrays = result
                continue
            self._finish(model)
            with self._rounds:
                self._rounds.wait_for(lambda: self._done < self._target())
            self.coordinator.set_finished(False)
            log.info("%s: going on to global round %d", cfg["name"], self._target())

    def _finish(self, model: nn.Module) -> None:
        path = save_final_model(self.state_dir, model.state_dict())
        self.coordinator.set_finished(True)
        self.state.set(state="finished", final_model=str(path), global_round=self._done)
        log.info("%s: finished after %d global rounds", self.cfg["name"], self._done)

    def _global_round(
        self, global_round: int, arrays: list[np.ndarray], model: nn.Module,
        test_loader: DataLoader, history: list[dict[str, Any]],
    ) -> list[np.ndarray] | None:
        """Run `global_round` until enough children answer (never lose a round); the new model,
        or None when global_rounds was lowered while no round was out."""
        cfg = self.cfg
        while True:
            self.state.set(state="waiting")
            enough = self.coordinator.wait_for_children(cfg["min_participants"],
                                                        give_up=self._stopped)
            if not enough:
                return None
            with self._rounds:
                if self._stopped():
                    return None
                self._round_open = True
            self.state.set(state="training")
            started = time.perf_counter()
            result = self.coordinator.run_round(global_round, 0, arrays,
                                                cfg["min_participants"], cfg["round_timeout_s"])
            if result is not None:
                break
            with self._rounds:
                self._round_open = False
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
        with self._rounds:
            self._done, self._round_open = global_round, False
        self.state.set(last_metrics={"accuracy": accuracy, "loss": loss},
                       num_examples=result.num_examples, histogram=result.histogram,
                       round_wall_s=wall, train_time_s=result.train_time_s,
                       aggregation_time_s=result.aggregation_time_s)
        self.results.write(
            **entry, local_round=0, train_time_s=result.train_time_s,
            aggregation_time_s=result.aggregation_time_s,
            serialization_time_s=result.serialization_time_s, eval_time_s=eval_time,
            wall_time_s=wall,
        )
        log.info("%s: global round %d accuracy %.4f loss %.4f (%s)", cfg["name"], global_round,
                 accuracy, loss, ", ".join(result.participants))
        return result.arrays
