"""Flower 1.42 Message-API ServerApp/ClientApp: flat FedAvg on the bench model, timed per round.

Each round's wall time (configure_train to the end of aggregate_train) and the slowest client's
training time go to the run config's `out` file as JSON lines, like bench/plain_flower.py.

`client_app` also runs as an fl_service client (bench/round_overhead.py's "HFL with a Flower
ClientApp"): there its training time reaches the client through context.state
(fl_service.apps.STATE_TIMING), the rest of the call counting as overhead.
"""

import json
import time

import overhead_task
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_service.apps import STATE_TIMING
from fl_service.datasets import make_loader

CFG = {"seed": 0, "batch_size": 16, "local_epochs": 1, "learning_rate": 0.01}

server_app = ServerApp()
client_app = ClientApp()


class TimedFedAvg(FedAvg):
    def __init__(self, out: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out = out
        self.started = 0.0

    def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
        self.started = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        train = max(r.content["metrics"]["train_time_s"] for r in replies if r.has_content())
        line = {"round": server_round, "wall_time_s": time.perf_counter() - self.started,
                "train_time_s": train, "participants": len(replies)}
        with open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        return result


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    clients = int(context.run_config["clients"])
    strategy = TimedFedAvg(str(context.run_config["out"]), fraction_evaluate=0.0,
                           min_train_nodes=clients, min_available_nodes=clients)
    model = overhead_task.load_model(CFG)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                   num_rounds=int(context.run_config["num-server-rounds"]))


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    model = overhead_task.load_model(CFG)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    train_set, _ = overhead_task.load_data(CFG)
    started = time.perf_counter()
    overhead_task.train(model, make_loader(train_set, CFG, shuffle=True), CFG,
                        torch.device("cpu"))
    train_time = time.perf_counter() - started
    context.state[STATE_TIMING] = MetricRecord({"train_time_s": train_time})
    metrics = MetricRecord({"num-examples": len(train_set), "train_time_s": train_time})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "metrics": metrics}), reply_to=msg)
