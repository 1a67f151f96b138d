"""legacy-numpyclient: a NumPyClient returned by client_fn, the pre-Message-API style."""

from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Context

from legacy_numpyclient.task import Net, get_weights, load_data, set_weights, test, train


class FlowerClient(NumPyClient):
    def __init__(self, net, trainloader, testloader, local_epochs, lr):
        self.net = net
        self.trainloader = trainloader
        self.testloader = testloader
        self.local_epochs = local_epochs
        self.lr = lr

    def fit(self, parameters, config):
        set_weights(self.net, parameters)
        train_loss = train(self.net, self.trainloader, self.local_epochs, self.lr)
        return get_weights(self.net), len(self.trainloader.dataset), {"train_loss": train_loss}

    def evaluate(self, parameters, config):
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.testloader)
        return loss, len(self.testloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context):
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    trainloader, testloader = load_data(partition_id, num_partitions,
                                        context.run_config["batch-size"])
    return FlowerClient(Net(), trainloader, testloader, context.run_config["local-epochs"],
                        context.run_config["learning-rate"]).to_client()


app = ClientApp(client_fn=client_fn)
