"""tinyhfl's ClientApp (Flower Message API)."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tinyhfl.task import Net, load_partition, test, train

app = ClientApp()


def _model(msg):
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def _data(context):
    return load_partition(int(context.node_config["partition-id"]),
                          int(context.node_config["num-partitions"]))


@app.train()
def train_fn(msg: Message, context: Context):
    model = _model(msg)
    x, y = _data(context)
    cfg = context.run_config
    lr = float(msg.content["config"].get("lr", cfg["lr"]))
    loss = train(model, x, y, int(cfg["local-epochs"]), lr, int(cfg["batch-size"]),
                 seed=int(msg.content["config"].get("server-round", 0)))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context):
    model = _model(msg)
    x, y = _data(context)
    loss, accuracy = test(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
