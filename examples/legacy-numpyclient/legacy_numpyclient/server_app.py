"""legacy-numpyclient: a ServerApp with the legacy FedAvg strategy.

`global_evaluate` is the same central evaluation in the Message-API shape
(server_round, ArrayRecord) -> MetricRecord, for an hfl global aggregator (`evaluate_fn`)."""

from flwr.app import ArrayRecord, MetricRecord
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from legacy_numpyclient.task import Net, get_weights, load_test, set_weights, test


def evaluate(server_round, parameters, config):
    net = Net()
    set_weights(net, parameters)
    loss, accuracy = test(net, load_test())
    return loss, {"accuracy": accuracy}


def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    loss, metrics = evaluate(server_round, arrays.to_numpy_ndarrays(), {})
    return MetricRecord({"loss": loss, **metrics})


def server_fn(context: Context):
    strategy = FedAvg(
        fraction_evaluate=0.5,
        initial_parameters=ndarrays_to_parameters(get_weights(Net())),
        evaluate_fn=evaluate,
    )
    config = ServerConfig(num_rounds=context.run_config["num-server-rounds"])
    return ServerAppComponents(strategy=strategy, config=config)


app = ServerApp(server_fn=server_fn)
