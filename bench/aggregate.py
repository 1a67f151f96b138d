"""FedAvg speed: our kernel vs numpy copy bandwidth vs Flower's aggregate(), same inputs.

Inputs: 50 updates shaped like torchvision's ResNet-18 (its state_dict's floating tensors,
11,699,112 float32 values, 46.8 MB per update, 2.34 GB in all), distinct example counts.
Each contender is timed warm, median of several calls; GB/s = input bytes read / time.
- memcpy:  np.copyto of every update (as one flat buffer) into one destination buffer.
- fedavg:  fl_service.aggregation.fedavg over all 50 updates at once.
- accumulator: FedAvgAccumulator.add() for each update, then result() (what the GA/LA run).
- flower:  flwr.server.strategy.aggregate.aggregate().
Our kernel calls BLAS axpy, which OpenBLAS may spread over several threads; the "1 thread" rows
cap it (threadpoolctl) for a like-for-like comparison with numpy and Flower, which use one.
OPENBLAS_CORETYPE and similar variables, set on some machines, only pick the BLAS kernel; this
script prints what threadpoolctl reports so a reader sees which one ran.

Usage: .venv/bin/python bench/aggregate.py [--updates 50] [--repeats 5]
Ends with one JSON line: {"fedavg_gbps", "fedavg_1thread_gbps", "accumulator_gbps",
"memcpy_gbps", "flower_gbps"}.
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
from threadpoolctl import threadpool_info, threadpool_limits

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


def accumulate(updates: list[Update]) -> list[np.ndarray]:
    acc = FedAvgAccumulator()
    for arrays, n in updates:
        acc.add(arrays, n)
    return acc.result()


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

    def fedavg_one_thread() -> None:
        with threadpool_limits(1):
            fedavg(updates)

    contenders = [
        ("memcpy (np.copyto)", memcpy),
        ("fedavg", lambda: fedavg(updates)),
        ("fedavg, 1 thread", fedavg_one_thread),
        ("accumulator", lambda: accumulate(updates)),
        ("flower aggregate()", lambda: aggregate(updates)),
    ]
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()]
    print(
        f"{args.updates} updates x {input_bytes / args.updates / 1e6:.1f} MB "
        f"= {input_bytes / 1e9:.2f} GB; thread pools (api, kernel, threads): {blas}"
    )
    print(f"{'contender':<22}{'median s':>10}{'GB/s':>8}")
    gbps = {}
    for name, fn in contenders:
        seconds = median_seconds(fn, args.repeats)
        gbps[name] = input_bytes / seconds / 1e9
        print(f"{name:<22}{seconds:>10.3f}{gbps[name]:>8.2f}")
    ratio_copy = gbps["fedavg"] / gbps["memcpy (np.copyto)"]
    ratio_flower = gbps["fedavg"] / gbps["flower aggregate()"]
    print(f"fedavg / memcpy = {ratio_copy:.2f}, fedavg / flower = {ratio_flower:.2f}")
    print(
        json.dumps(
            {
                "fedavg_gbps": round(gbps["fedavg"], 2),
                "fedavg_1thread_gbps": round(gbps["fedavg, 1 thread"], 2),
                "accumulator_gbps": round(gbps["accumulator"], 2),
                "memcpy_gbps": round(gbps["memcpy (np.copyto)"], 2),
                "flower_gbps": round(gbps["flower aggregate()"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
