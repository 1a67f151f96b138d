"""Plain Flower 1.42 flat FL on the bench model, for bench/round_overhead.py to compare with.

  python bench/plain_flower.py legacy-server --port P --rounds R --clients N --out FILE
  python bench/plain_flower.py legacy-client --port P --id I

The legacy path (`flwr.server.start_server` / `flwr.client.start_client`, deprecated but
push-based). Each round's wall time (configure_fit to the end of aggregate_fit) and the slowest
client's training time are appended to FILE as JSON lines. Clients do what ours do per round:
load the arrays, train with bench/overhead_task.py, return the arrays.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import overhead_task
import torch

from fl_service.datasets import make_loader

CFG = {"seed": 0, "batch_size": 16, "local_epochs": 1, "learning_rate": 0.01}


def _arrays(model: torch.nn.Module) -> list:
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def _load(model: torch.nn.Module, arrays: list) -> None:
    keys = list(model.state_dict())
    model.load_state_dict({k: torch.from_numpy(a) for k, a in zip(keys, arrays, strict=True)})


def legacy_server(port: int, rounds: int, clients: int, out: str) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001, ANN201
            self.started = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
            aggregated = super().aggregate_fit(server_round, results, failures)
            line = {"round": server_round, "wall_time_s": time.perf_counter() - self.started,
                    "train_time_s": max(r.metrics["train_time_s"] for _, r in results),
                    "participants": len(results), "failures": len(failures)}
            with open(out, "a") as f:
                f.write(json.dumps(line) + "\n")
            return aggregated

    model = overhead_task.load_model(CFG)
    strategy = TimedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
        min_evaluate_clients=0, min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters(_arrays(model)),
    )
    start_server(server_address=f"127.0.0.1:{port}", config=ServerConfig(num_rounds=rounds),
                 strategy=strategy)


def legacy_client(port: int, client_id: int) -> None:
    from flwr.client import NumPyClient, start_client

    model = overhead_task.load_model(CFG)
    train_set, _ = overhead_task.load_data(CFG)
    loader = make_loader(train_set, CFG, shuffle=True)

    class BenchClient(NumPyClient):
        def fit(self, parameters, config):  # noqa: ANN001, ANN201
            _load(model, parameters)
            started = time.perf_counter()
            overhead_task.train(model, loader, CFG, torch.device("cpu"))
            train_time = time.perf_counter() - started
            return _arrays(model), len(train_set), {"train_time_s": train_time}

    start_client(server_address=f"127.0.0.1:{port}", client=BenchClient().to_client(),
                 insecure=True)


def main() -> None:
    warnings.simplefilter("ignore")  # the legacy API warns that it is deprecated, every call
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["legacy-server", "legacy-client"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--id", type=int, default=0)
    parser.add_argument("--out", default="flower_rounds.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode == "legacy-server":
        legacy_server(args.port, args.rounds, args.clients, args.out)
    else:
        legacy_client(args.port, args.id)


if __name__ == "__main__":
    main()
