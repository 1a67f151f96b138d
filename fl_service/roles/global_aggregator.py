"""GA: owns the global model and round counter, evaluates centrally, checkpoints every round.

Each global round: the strategy's configure_train gives the task's config (cfg["train_config"]
under its additions; "server-round" = the global round, "local-round" = 0), every live child
is asked, the strategy aggregates (fl_service.strategy), then central evaluation
(cfg["evaluate_fn"], else the task's test), the checkpoint (model, round, history, strategy
state) and, every cfg["evaluate_every"] rounds, federated evaluation: an evaluate task with the
new model, aggregated by the strategy's aggregate_evaluate (results `federated`, /status
`last_federated_metrics`). Training rounds are never lost; an evaluate round that gets too few
answers is logged and skipped.

The number of global rounds can be changed while it runs (`/control {"global_rounds": N}`, the
orchestrator's budget stop): it is kept in <state_dir>/global_rounds.json (written atomically)
so a GA restarted with the same config keeps it. A finished GA given more rounds goes on
training.

A round whose aggregate is not usable (not finite, the strategy failed) is run again from the
same model; nothing of it is committed or checkpointed. The checkpoint is verified before the
port opens (finite, this model's names, shapes and dtypes; fl_service.checkpoint).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flwr.app import Array, ArrayRecord
from torch import nn

from fl_service.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_final_model,
    verify_model,
    write_json,
)
from fl_service.config import ConfigError
from fl_service.datasets import make_loader
from fl_service.device import pick_device
from fl_service.flower_app import load_app_folder
from fl_service.http_server import Route
from fl_service.imports import load_object
from fl_service.roles.rounds import RoundCoordinator, strategy_round
from fl_service.roles.service import Service, load_arrays, model_arrays
from fl_service.strategy import build_driver, config_record, freeze_heap
from fl_service.task_loader import load_task
from fl_service.transport import EVALUATE, TRAIN, Arrays, aggregator_routes

log = logging.getLogger("fl_service.ga")
ROUNDS_OVERRIDE = "global_rounds.json"
# Rounds /status recent_metrics covers: more than complete between two orchestrator polls.
RECENT_ROUNDS = 64


class GlobalAggregator(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        # Everything that can be misconfigured first, so it stops us before anything is written.
        load_app_folder(str(cfg.get("app_dir") or ""))  # `model`, `evaluate_fn` may live there
        self.task = load_task(cfg)
        self.device = pick_device(cfg)
        self.driver = build_driver(cfg)
        self.train_config = dict(config_record(cfg.get("train_config") or {}, "train_config"))
        self.evaluate_config = dict(config_record(cfg.get("evaluate_config") or {},
                                                  "evaluate_config"))
        self.model_fn = _callable(cfg, "model")
        self.evaluate_fn = _callable(cfg, "evaluate_fn")
        super().__init__(cfg)
        self.coordinator = RoundCoordinator(cfg["name"], self.state, cfg["example_cap_ratio"])
        self._rounds = threading.Condition()
        self._done = 0  # completed global rounds
        self._round_open = False
        self.state.set(global_rounds=self._load_override())
        # Resume before the HTTP port opens, so no one (a readiness probe, the orchestrator)
        # ever sees a restarted GA at round 0 while it still holds completed rounds.
        self._checkpoint = load_checkpoint(self.state_dir)
        self.model = self._build_model()
        self._history: list[dict[str, Any]] = []
        if self._checkpoint is not None:
            verify_model(self.state_dir, self._checkpoint["model"], self.model.state_dict())
            self._done = int(self._checkpoint["round"])
            self._history = list(self._checkpoint["history"])
            self.state.set(global_round=self._done)
            restored = self.driver.restore(self._checkpoint["strategy_state"])
            log.info("%s: resuming after global round %d%s", cfg["name"], self._done,
                     " with the strategy's state" if restored else "")
        if self._history:
            last = self._history[-1]
            self.state.set(last_metrics={"accuracy": last["accuracy"], "loss": last["loss"]},
                           recent_metrics=_recent(self._history))
            federated = [h["federated"] for h in self._history if h.get("federated")]
            if federated:
                self.state.set(last_federated_metrics=federated[-1])

    # ------------------------------------------------------------ global_rounds control
    def _load_override(self) -> int:
        path = self.state_dir / ROUNDS_OVERRIDE
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                wanted = saved["global_rounds"]
                made_under = saved["config_global_rounds"]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigError("global_rounds", f"{path} unreadable ({exc!r}); move it away "
                                  "to use the config's global_rounds") from None
            # Only while the config still says what it said when the override was made.
            if made_under == self.cfg["global_rounds"]:
                return int(wanted)
        return self.cfg["global_rounds"]

    def _target(self) -> int:
        return int(self.state.global_rounds)

    def _stopped(self) -> bool:
        return self._done >= self._target()

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        if "gone" in message:
            return self.coordinator.control_gone(message)
        wanted = message.get("global_rounds")
        if set(message) != {"global_rounds"} or isinstance(wanted, bool) or not isinstance(
            wanted, int
        ) or wanted < 1:
            raise ValueError('expected {"global_rounds": N} with an integer N >= 1 or '
                             '{"gone": ["child", ...]}')
        with self._rounds:
            # A round already sent out is finished, never cut short.
            in_force = max(wanted, self._done + (1 if self._round_open else 0))
            write_json(self.state_dir / ROUNDS_OVERRIDE,
                       {"global_rounds": in_force,
                        "config_global_rounds": self.cfg["global_rounds"]})
            self.state.set(global_rounds=in_force)
            self._rounds.notify_all()
        self.coordinator.wake()
        log.info("%s: global_rounds set to %d", self.cfg["name"], in_force)
        return {"global_rounds": in_force}

    def routes(self) -> dict[tuple[str, str], Route]:
        return {**super().routes(), **aggregator_routes(self.coordinator, self.access.child)}

    # ------------------------------------------------------------ rounds
    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        model = self.model_fn() if self.model_fn is not None else self.task.load_model(cfg)
        if not isinstance(model, nn.Module):
            raise ConfigError("model", f"{cfg['model']} returned {type(model).__name__}, "
                              "not a torch nn.Module")
        return model

    def run(self) -> None:
        cfg, model = self.cfg, self.model
        evaluate = self._central_evaluation(model)
        history = self._history
        if self._checkpoint is not None:
            model.load_state_dict(self._checkpoint["model"])
            self._checkpoint = None  # the model holds it now
        arrays = model_arrays(model)
        freeze_heap()
        while True:
            if self._done < self._target():
                self.state.set(global_round=self._done + 1)
                result = self._global_round(self._done + 1, arrays, model, evaluate, history)
                if result is not None:
                    arrays = result
                continue
            self._finish(model)
            with self._rounds:
                self._rounds.wait_for(lambda: self._done < self._target())
            self.coordinator.set_finished(False)
            log.info("%s: going on to global round %d", cfg["name"], self._target())

    def _central_evaluation(
        self, model: nn.Module
    ) -> Callable[[int, Arrays], dict[str, Any] | None]:
        """cfg["evaluate_fn"] (Flower's global_evaluate shape), else the task's test on the test
        split; none when a user's `model` comes without an `evaluate_fn`."""
        cfg = self.cfg
        if self.evaluate_fn is not None:
            def user(server_round: int, arrays: Arrays) -> dict[str, Any] | None:
                metrics = self.evaluate_fn(server_round, _record(arrays))
                return None if metrics is None else dict(metrics)

            return user
        if self.model_fn is not None:
            log.info("%s: `model` is set without `evaluate_fn`: no central evaluation",
                     cfg["name"])
            return lambda server_round, arrays: None
        _, test_set = self.task.load_data(cfg)
        loader = make_loader(test_set, cfg, shuffle=False)

        def builtin(server_round: int, arrays: Arrays) -> dict[str, Any]:
            # `model` already holds `arrays`: _global_round loads them before evaluating.
            loss, accuracy = self.task.test(model, loader, cfg, self.device)
            return {"accuracy": accuracy, "loss": loss}

        return builtin

    def _finish(self, model: nn.Module) -> None:
        path = save_final_model(self.state_dir, model.state_dict())
        self.coordinator.set_finished(True)
        self.state.set(state="finished", final_model=str(path), global_round=self._done)
        log.info("%s: finished after %d global rounds", self.cfg["name"], self._done)

    def _global_round(
        self, global_round: int, arrays: Arrays, model: nn.Module,
        evaluate: Callable[[int, Arrays], dict[str, Any] | None], history: list[dict[str, Any]],
    ) -> Arrays | None:
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
            result = strategy_round(self.coordinator, self.driver, TRAIN, global_round,
                                    global_round, 0, arrays, self.train_config,
                                    cfg["min_participants"], cfg["round_timeout_s"])
            if result is not None:
                break
            with self._rounds:
                self._round_open = False
            log.warning("%s: global round %d had fewer than %d usable answers; running it "
                        "again", cfg["name"], global_round, cfg["min_participants"])
        wall = time.perf_counter() - started
        self.state.set(state="aggregating")
        assert result.arrays is not None
        arrays = result.arrays
        load_arrays(model, arrays)
        eval_start = time.perf_counter()
        central = evaluate(global_round, arrays) or {}
        eval_time = time.perf_counter() - eval_start
        accuracy, loss = central.get("accuracy"), central.get("loss")
        entry = {"global_round": global_round, "accuracy": accuracy, "loss": loss,
                 "central": central, "train_metrics": result.metrics,
                 "participants": result.participants, "num_examples": result.num_examples,
                 "federated": None}
        history.append(entry)
        save_checkpoint(self.state_dir, model.state_dict(), global_round, history,
                        self.driver.state())
        with self._rounds:
            self._done, self._round_open = global_round, False
        self.state.set(last_metrics={"accuracy": accuracy, "loss": loss},
                       recent_metrics=_recent(history),
                       num_examples=result.num_examples, histogram=result.histogram,
                       round_wall_s=wall, train_time_s=result.train_time_s,
                       aggregation_time_s=result.aggregation_time_s)
        every = int(cfg.get("evaluate_every") or 0)
        if every and global_round % every == 0:
            entry["federated"] = self._federated_evaluation(global_round, arrays)
            if entry["federated"] is not None:
                save_checkpoint(self.state_dir, model.state_dict(), global_round, history,
                                self.driver.state())
        self.results.write(
            **entry, local_round=0, train_time_s=result.train_time_s,
            aggregation_time_s=result.aggregation_time_s,
            serialization_time_s=result.serialization_time_s, eval_time_s=eval_time,
            wall_time_s=wall,
        )
        log.info("%s: global round %d accuracy %s loss %s (%s)", cfg["name"], global_round,
                 _fmt(accuracy), _fmt(loss), ", ".join(result.participants))
        return arrays

    def _federated_evaluation(self, global_round: int, arrays: Arrays) -> dict[str, Any] | None:
        """One evaluate round with the live children; the strategy's aggregate, or None."""
        cfg = self.cfg
        self.state.set(state="waiting")
        if not self.coordinator.wait_for_children(cfg["min_participants"],
                                                  cfg["round_timeout_s"]):
            log.warning("%s: no federated evaluation in round %d: too few children",
                        cfg["name"], global_round)
            return None
        self.state.set(state="training")
        result = strategy_round(self.coordinator, self.driver, EVALUATE, global_round,
                                global_round, 0, arrays, self.evaluate_config,
                                cfg["min_participants"], cfg["round_timeout_s"])
        if result is None:
            log.warning("%s: federated evaluation of round %d had fewer than %d usable "
                        "answers; skipped", cfg["name"], global_round, cfg["min_participants"])
            return None
        self.state.set(last_federated_metrics=result.metrics)
        log.info("%s: federated evaluation of round %d: %s (%s)", cfg["name"], global_round,
                 result.metrics, ", ".join(result.participants))
        return result.metrics


def _callable(cfg: dict[str, Any], key: str) -> Callable[..., Any] | None:
    if not cfg.get(key):
        return None
    obj = load_object(cfg[key], key)
    if not callable(obj):
        raise ConfigError(key, f"{cfg[key]} is not callable")
    return obj


def _recent(history: list[dict[str, Any]]) -> list[list[Any]]:
    """/status recent_metrics: [global_round, accuracy, loss] of the last RECENT_ROUNDS."""
    return [[h["global_round"], h["accuracy"], h["loss"]] for h in history[-RECENT_ROUNDS:]]


def _record(arrays: Arrays) -> ArrayRecord:
    record = ArrayRecord()
    for name, arr in arrays.items():
        record[name] = Array(arr)
    return record


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
