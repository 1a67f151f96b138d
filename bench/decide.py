"""Time one orchestrator decision for a large fleet under each configuration model.

10,000 clients, 100 LAs, 10 classes (label-skewed histograms), a cost per client-LA link and
LA capacities that bind (so min_comm_cost has to spill over). Prints one line per configuration
model and ends with one JSON line {"clients", "las", "<config_model>_s": seconds, ...}.
Target: < 1 s each.

    .venv/bin/python bench/decide.py [--clients N] [--las L]
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".tmp" / "collections"))

from ansible_collections.hfl.orchestration.plugins.plugin_utils import policies  # noqa: E402


def fleet(n_clients: int, n_las: int, classes: int = 10, seed: int = 0) -> policies.Fleet:
    rnd = random.Random(seed)
    las = [f"la{j}" for j in range(n_las)]
    cost = {la: {"ga": 100.0} for la in las}
    hist = {}
    clients = [f"c{i}" for i in range(n_clients)]
    for c in clients:
        # Each client sees every LA (the hard case for time), at costs 10..200.
        cost[c] = {la: float(rnd.randint(10, 200)) for la in las}
        cost[c]["ga"] = 300.0
        a, b = rnd.sample(range(classes), 2)
        h = [0] * classes
        h[a], h[b] = rnd.randint(50, 500), rnd.randint(50, 500)
        hist[c] = h
    capacity = {la: int(1.2 * n_clients / n_las) for la in las}
    return policies.Fleet(ga="ga", las=las, clients=clients, cost=cost, capacity=capacity,
                          histograms=hist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--las", type=int, default=100)
    args = ap.parse_args()
    f = fleet(args.clients, args.las)
    out = {"clients": args.clients, "las": args.las}
    for config_model in policies.CONFIG_MODELS:
        t0 = time.perf_counter()
        a = policies.assign(config_model, f)
        dt = time.perf_counter() - t0
        assert len(a) == args.clients
        out[f"{config_model}_s"] = round(dt, 4)
        print(f"{config_model:14s} {dt:7.3f} s  mean KL(group||global) "
              f"{policies.mean_kld(f, a):.4f}  groups used {len(set(a.values()))}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
