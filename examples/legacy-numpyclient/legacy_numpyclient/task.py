"""legacy-numpyclient: an MLP on scikit-learn's digits, with the get/set_weights helpers that
NumPyClient apps carry."""

from collections import OrderedDict

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HOLD_OUT = 5  # every fifth image is held out for testing


class Net(nn.Module):
    """64 pixels -> 32 hidden units -> 10 classes."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(64, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def get_weights(net):
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net, parameters):
    params_dict = zip(net.state_dict().keys(), parameters, strict=True)
    net.load_state_dict(OrderedDict({k: torch.tensor(v) for k, v in params_dict}))


def _split():
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    held_out = torch.arange(len(y)) % HOLD_OUT == 0
    return (x[~held_out], y[~held_out]), (x[held_out], y[held_out])


def load_data(partition_id, num_partitions, batch_size):
    """Every num_partitions-th training image from partition_id on; the test images alike."""
    (x_train, y_train), (x_test, y_test) = _split()
    train = TensorDataset(x_train[partition_id::num_partitions],
                          y_train[partition_id::num_partitions])
    test = TensorDataset(x_test[partition_id::num_partitions],
                         y_test[partition_id::num_partitions])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=64)


def load_test():
    _, (x_test, y_test) = _split()
    return DataLoader(TensorDataset(x_test, y_test), batch_size=256)


def train(net, trainloader, epochs, lr):
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for x, y in trainloader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
    return total / len(trainloader.dataset)


def test(net, testloader):
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in testloader:
            logits = net(x)
            loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    return loss / len(testloader.dataset), correct / len(testloader.dataset)
