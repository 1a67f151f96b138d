"""Client: hands each task to its Flower ClientApp (fl_service/flower_app.py) and sends the reply.

The one client path: the app is the user's (`client_app` / `app_dir`) or the built-in one
(`fl_service.apps.builtin:app`, which runs the built-in or an old-style `task` module). The
runner keeps one Flower Context for the life of the process, so the app's `context.state`
survives every task and every parent switch (/control, SIGHUP). A task the app fails on goes
back as an error update and the client takes the next one.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from fl_service.flower_app import ClientRunner
from fl_service.metrics import ResultsWriter, ServiceState
from fl_service.roles.child import ParentSide
from fl_service.roles.service import Service
from fl_service.transport import EVALUATE, FINISHED, TRAIN, Arrays, ParentLink

log = logging.getLogger("fl_service.client")
# Where /status and results.jsonl find a reply's loss and accuracy: our names first, then
# Flower's quickstart names (train_loss; eval_loss, eval_acc).
LOSS_KEYS = ("loss", "train_loss", "eval_loss")
ACCURACY_KEYS = ("accuracy", "eval_acc", "eval_accuracy")


class Client(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        # The app first: a bad `app_dir`, `client_app`, `run_config`, `task` or `device` stops us
        # before anything is written or any connection is made.
        self.runner = ClientRunner(cfg)
        super().__init__(cfg)
        self.parent = ParentSide(cfg, self.state, self.links)
        self.work = ClientWork(self.runner, self.state, self.parent, self.results)

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.parent.control(message)

    def run(self) -> None:
        self.work.run()


class ClientWork:
    """One client's tasks: from its parent, through its app, back as updates and results lines.
    A plain client has one; a pool (roles/pool.py) one per virtual client, which `gate` (a
    semaphore they share) lets load and train only so many at a time."""

    def __init__(self, runner: ClientRunner, state: ServiceState, parent: ParentSide,
                 results: ResultsWriter,
                 gate: AbstractContextManager[Any] | None = None) -> None:
        self.runner = runner
        self.state = state
        self.parent = parent
        self.results = results
        self.gate = gate if gate is not None else nullcontext()

    def run(self) -> None:
        # What the app can load before the first task (the built-in app: its data and its model),
        # so round 1 is not seconds of loading that hit timeouts.
        with self.gate:
            self.runner.warm_up()
        histogram = self.runner.histogram()
        if histogram is not None:
            self.state.set(histogram=histogram, num_examples=sum(histogram.values()))
        self.state.set(state="waiting")
        after = ""
        while True:
            got = self.parent.next_task(after)
            if got is None:
                continue
            if got == FINISHED:
                # Stay up; polls go on quietly in case the parent moves on or we are moved.
                self.state.set(state="finished")
                after = FINISHED
                continue
            link, header, arrays = got
            after = header["task_id"]
            self._task(link, header, arrays)

    def _task(self, link: ParentLink, header: dict[str, Any], arrays: Arrays) -> None:
        started = time.perf_counter()
        kind = str(header.get("type") or TRAIN)
        self.state.set(state="training", global_round=header["global_round"],
                       local_round=header["local_round"])
        with self.gate:
            app_started = time.perf_counter()  # the wait for the gate is no app time
            update, out = self.runner.handle(header, arrays)
            app_time = time.perf_counter() - app_started
        self.parent.send_update(link, update, out)
        wall = time.perf_counter() - started
        line: dict[str, Any] = {
            "global_round": header["global_round"], "local_round": header["local_round"],
            "type": kind, "participants": [self.state.name], "parent": link.peer,
            "aggregation_time_s": 0.0, "wall_time_s": wall,
        }
        if "error" in update:
            self.state.set(state="waiting")
            self.results.write(**line, accuracy=None, loss=None, num_examples=0,
                               train_time_s=0.0, error=update["error"])
            return
        metrics = update["metrics"]
        loss = _first_number(metrics, LOSS_KEYS)
        if kind == EVALUATE:
            accuracy = _first_number(metrics, ACCURACY_KEYS)
            self.state.set(state="waiting", last_metrics={"accuracy": accuracy, "loss": loss})
            self.results.write(**line, accuracy=accuracy, loss=loss,
                               num_examples=update["num_examples"], train_time_s=0.0,
                               eval_time_s=app_time, metrics=metrics)
            return
        histogram = update.get("histogram") or None
        # The accuracy stays that of the last evaluate task (training measures none).
        accuracy = self.state.last_metrics.get("accuracy")
        self.state.set(state="waiting", last_metrics={"accuracy": accuracy, "loss": loss},
                       train_time_s=update["train_time_s"], num_examples=update["num_examples"],
                       **({"histogram": histogram} if histogram else {}))
        self.results.write(**line, accuracy=None, loss=loss, num_examples=update["num_examples"],
                           train_time_s=update["train_time_s"], metrics=metrics,
                           **({"histogram": histogram} if histogram else {}))


def _first_number(metrics: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    """The first of `keys` the reply's metrics hold as a number, else None."""
    for key in keys:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
