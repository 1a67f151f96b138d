"""quickstart-hfl: the model, the data and the training loops (plain PyTorch)."""

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SPLIT_SEED = 42  # every node and the server hold out the same test images


class Net(nn.Module):
    """A small CNN for 8x8 grey images, 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


@lru_cache(maxsize=1)
def _digits():
    """(train images, train labels, test images, test labels), loaded once per process."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    images = ((images - images.mean()) / images.std())[:, None]
    return train_test_split(images, digits.target.astype(np.int64), test_size=0.2,
                            stratify=digits.target, random_state=SPLIT_SEED)


def _share(n: int, partition_id: int, num_partitions: int) -> np.ndarray:
    """Indices of this partition: a fixed shuffle of range(n) cut into equal parts."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.array_split(order, num_partitions)[partition_id]


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """This node's train and test loaders: its share of each split."""
    x_train, x_test, y_train, y_test = _digits()
    train_idx = _share(len(x_train), partition_id, num_partitions)
    test_idx = _share(len(x_test), partition_id, num_partitions)
    train_set = TensorDataset(torch.from_numpy(x_train[train_idx]),
                              torch.from_numpy(y_train[train_idx]))
    test_set = TensorDataset(torch.from_numpy(x_test[test_idx]),
                             torch.from_numpy(y_test[test_idx]))
    return (DataLoader(train_set, batch_size=batch_size, shuffle=True),
            DataLoader(test_set, batch_size=batch_size))


def load_centralized_test(batch_size: int = 128):
    """The whole test split, for the server's evaluation."""
    _, x_test, _, y_test = _digits()
    test_set = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return DataLoader(test_set, batch_size=batch_size)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set; returns the mean loss of the last epoch."""
    net.to(device)
    net.train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    running_loss, seen = 0.0, 0
    for _ in range(epochs):
        running_loss, seen = 0.0, 0
        for images, labels in trainloader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * len(labels)
            seen += len(labels)
    return running_loss / max(seen, 1)


def test(net, testloader, device):
    """Validate the model on the test set; returns (mean loss, accuracy)."""
    net.to(device)
    net.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in testloader:
            images, labels = images.to(device), labels.to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (outputs.argmax(1) == labels).sum().item()
            seen += len(labels)
    return loss / max(seen, 1), correct / max(seen, 1)
