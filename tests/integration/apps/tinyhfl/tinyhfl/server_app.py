"""tinyhfl's ServerApp for `flwr run`, and the central evaluation hfl's GA calls."""

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from tinyhfl.task import Net, load_test, test

app = ServerApp()


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    loss, accuracy = test(model, *load_test())
    return MetricRecord({"accuracy": accuracy, "loss": loss})


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                   train_config=ConfigRecord({"lr": context.run_config["lr"]}),
                   num_rounds=int(context.run_config["num-server-rounds"]),
                   evaluate_fn=global_evaluate)
