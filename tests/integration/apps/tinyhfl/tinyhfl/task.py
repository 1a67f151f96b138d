"""Model, data and the train/test loops of tinyhfl."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _split():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def load_partition(partition_id, num_partitions):
    """Every num_partitions-th training example, from partition_id on."""
    x_train, _, y_train, _ = _split()
    return x_train[partition_id::num_partitions], y_train[partition_id::num_partitions]


def load_test():
    _, x_test, _, y_test = _split()
    return x_test, y_test


def train(model, x, y, epochs, lr, batch_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y).long()
    model.train()
    total = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
    return total / (epochs * len(xs))


def test(model, x, y):
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(out, torch.from_numpy(y).long()))
        accuracy = float((out.argmax(1).numpy() == y).mean())
    return loss, accuracy
