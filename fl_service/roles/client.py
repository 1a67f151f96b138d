"""Client: trains `local_epochs` on its partition for each task and returns the update."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from fl_service.datasets import class_histogram, make_loader
from fl_service.device import pick_device
from fl_service.partition import client_partition
from fl_service.roles.child import ParentSide
from fl_service.roles.service import Service, load_arrays, model_arrays
from fl_service.task_loader import load_task
from fl_service.transport import FINISHED

log = logging.getLogger("fl_service.client")


class Client(Service):
    def __init__(self, cfg: dict[str, Any]) -> None:
        # Task and device first: a bad `task` or `device` stops us before anything is written.
        self.task = load_task(cfg)
        self.device = pick_device(cfg)
        super().__init__(cfg)
        self.parent = ParentSide(cfg, self.state, self.links)

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.parent.control(message)

    def run(self) -> None:
        model = self.task.load_model(self.cfg)
        train_set, _ = self.task.load_data(self.cfg)
        partition = client_partition(self.cfg, train_set)
        histogram = {str(k): v for k, v in class_histogram(partition).items()}
        loader = make_loader(partition, self.cfg, shuffle=True)
        # torch imports its compiler stack on the first optimizer; pay that before joining, so
        # the first round's training time is not seconds of imports that hit round timeouts.
        torch.optim.SGD(model.parameters(), lr=0.0)
        self.state.set(state="waiting", num_examples=len(partition), histogram=histogram)
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
            started = time.perf_counter()
            self.state.set(state="training", global_round=header["global_round"],
                           local_round=header["local_round"])
            load_arrays(model, arrays)
            train_start = time.perf_counter()
            metrics = self.task.train(model, loader, self.cfg, self.device)
            train_time = time.perf_counter() - train_start
            loss = metrics.get("loss")
            update = {"task_id": after, "num_examples": len(partition), "histogram": histogram,
                      "train_time_s": train_time, "loss": loss}
            self.parent.send_update(link, update, model_arrays(model))
            self.state.set(state="waiting", last_metrics={"accuracy": None, "loss": loss},
                           train_time_s=train_time)
            self.results.write(
                global_round=header["global_round"], local_round=header["local_round"],
                accuracy=None, loss=loss, participants=[self.state.name],
                num_examples=len(partition), histogram=histogram, parent=link.peer,
                train_time_s=train_time, aggregation_time_s=0.0,
                wall_time_s=time.perf_counter() - started,
            )
