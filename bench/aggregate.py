"""FedAvg speed: our kernel vs numpy copy bandwidth vs Flower's aggregate(), same inputs.

Inputs: 50 updates shaped like torchvision's ResNet-18 (its state_dict's floating tensors,
11,699,112 float32 values, 46.8 MB per update, 2.34 GB in all), distinct example counts.
Each contender is timed warm, median of several calls; GB/s = input bytes read / time.
- memcpy:  np.copyto of every update (as one flat buffer) into one destination buffer.
- fedavg:  fl_service.aggregation.fedavg over all 50 updates at once.
- accumulator, batch B: FedAvgAccumulator(batch=B).add() for each update, then result() (what
  the GA/LA run as updates arrive); also the time of the last add() plus result(), the work
  left once the last update is in.
- flower:  flwr.server.strategy.aggregate.aggregate().
All of them run on one thread (our kernel limits BLAS to one, see fl_service/aggregation.py).
OPENBLAS_CORETYPE and similar variables, set on some machines, only pick OpenBLAS's kernel for
the CPU (our axpy's); the header line prints what threadpoolctl reports, kernel included.

Usage: .venv/bin/python bench/aggregate.py [--updates 50] [--repeats 5]
Ends with one JSON line: {"fedavg_gbps", "accumulator_gbps", "memcpy_gbps", "flower_gbps"}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torchvision
from flwr.server.strategy.aggregate import aggregate
from threadpoolctl import threadpool_info

from fl_service.aggregation import FedAvgAccumulator, fedavg

Update = tuple[list[np.ndarray], int]


def resnet18_shapes() -> list[tuple[int, ...]]:
    state = torchvision.models.resnet18(weights=None).state_dict()
    return [tuple(t.shape) for t in state.values() if t.is_floating_point()]


def make_updates(count: int) -> list[Update]:
    rng = np.random.default_rng(0)
    shapes = resnet18_shapes()
    return [
        ([rng.standard_normal(s, dtype=np.float32) for s in shapes], int(rng.integers(100, 2000)))
        for _ in range(count)
    ]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: page faults of fresh outputs, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accumulate(updates: list[Update], batch: int) -> list[np.ndarray]:
    acc = FedAvgAccumulator(batch=batch)
    for arrays, n in updates:
        acc.add(arrays, n)
    return acc.result()


def seconds_after_last_update(updates: list[Update], batch: int, repeats: int) -> float:
    """Median time of the last add() plus result(), the rest folded beforehand."""
    times = []
    for _ in range(repeats):
        acc = FedAvgAccumulator(batch=batch)
        for arrays, n in updates[:-1]:
            acc.add(arrays, n)
        start = time.perf_counter()
        acc.add(*updates[-1])
        acc.result()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    updates = make_updates(args.updates)
    input_bytes = sum(a.nbytes for arrays, _ in updates for a in arrays)
    flat = [np.concatenate([a.reshape(-1) for a in arrays]) for arrays, _ in updates]
    target = np.empty_like(flat[0])

    def memcpy() -> None:
        for buffer in flat:
            np.copyto(target, buffer)

    default_batch = FedAvgAccumulator().batch
    contenders = [
        ("memcpy (np.copyto)", memcpy),
        ("fedavg", lambda: fedavg(updates)),
        (f"accumulator, batch {default_batch}", lambda: accumulate(updates, default_batch)),
        ("accumulator, batch 1", lambda: accumulate(updates, 1)),
        ("flower aggregate()", lambda: aggregate(updates)),
    ]
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()]
    print(
        f"{args.updates} updates x {input_bytes / args.updates / 1e6:.1f} MB "
        f"= {input_bytes / 1e9:.2f} GB; thread pools (api, kernel, threads): {blas}"
    )
    print(f"{'contender':<24}{'median s':>10}{'GB/s':>8}")
    gbps = {}
    for name, fn in contenders:
        seconds = median_seconds(fn, args.repeats)
        gbps[name] = input_bytes / seconds / 1e9
        print(f"{name:<24}{seconds:>10.3f}{gbps[name]:>8.2f}")
    for batch in (default_batch, 1):
        tail = seconds_after_last_update(updates, batch, args.repeats)
        print(f"accumulator, batch {batch}: last add() + result() {tail * 1000:.1f} ms")
    ratio_copy = gbps["fedavg"] / gbps["memcpy (np.copyto)"]
    ratio_flower = gbps["fedavg"] / gbps["flower aggregate()"]
    print(f"fedavg / memcpy = {ratio_copy:.2f}, fedavg / flower = {ratio_flower:.2f}")
    print(
        json.dumps(
            {
                "fedavg_gbps": round(gbps["fedavg"], 2),
                "accumulator_gbps": round(gbps[f"accumulator, batch {default_batch}"], 2),
                "memcpy_gbps": round(gbps["memcpy (np.copyto)"], 2),
                "flower_gbps": round(gbps["flower aggregate()"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
