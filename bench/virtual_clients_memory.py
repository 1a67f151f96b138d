"""Memory of a pool of virtual clients (config key `virtual_clients`) by its size.

    .venv/bin/python bench/virtual_clients_memory.py [--sizes 1,100,500]

Issue 12's target: <= 5 MB per virtual client beyond its data. For each size, a real pool
process (`python -m fl_service client`) of that many digits clients (iid, one partition each):
- idle: their parents are a closed loopback port (they warm up, then back off from joining);
  measured once every virtual client has warmed up (/status: none `starting`);
- trained: their parent is a real GA of one global round, which each virtual client trains in
  and then evaluates nothing; measured once the pool is `finished` (each holds its model's
  gradients and momentum, its last update and its link to the GA).
After SETTLE_S, the pool's RSS (VmRSS) and private memory (Private_Clean + Private_Dirty of
smaps_rollup) are read. Per virtual client = (largest pool - smallest) / (size difference).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 2.0  # after warm-up, so the first join attempts and backoffs are in the figure
READY_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, private) of process `pid`, in MB."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    private = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
    return round(rss / 1024, 1), round(private / 1024, 1)


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as response:
        return json.loads(response.read())


def start(role: str, name: str, config: dict, tmp: Path) -> subprocess.Popen:
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "state_dir": str(tmp / name),
                                "dataset": "digits", "threads": 1, **config}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HFL_")},
           "OMP_NUM_THREADS": "1"}
    with (tmp / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "fl_service", role, "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def idle(doc: dict) -> bool:
    return not any(m["state"] == "starting" for m in doc["virtual_clients"].values())


def finished(doc: dict) -> bool:
    return doc["state"] == "finished"


def measure(size: int, trained: bool, tmp: Path) -> tuple[float, float, float]:
    """(RSS MB, private MB, seconds until measured) of a pool of `size` virtual clients."""
    name = f"{'trained' if trained else 'idle'}{size}"
    port, parent_port = free_port(), free_port()
    processes = []
    if trained:
        processes.append(start("global_aggregator", f"ga-{name}", {
            "port": parent_port, "global_rounds": 1, "min_participants": size,
            "round_timeout_s": READY_TIMEOUT_S}, tmp))
    pool = start("client", name, {
        "port": port, "partitioner": "iid", "num_partitions": size,
        "virtual_clients": [{"name": f"{name}-{i}", "partition_id": i,
                             "parent": f"127.0.0.1:{parent_port}"} for i in range(size)]}, tmp)
    processes.append(pool)
    ready = finished if trained else idle
    try:
        began = time.monotonic()
        while True:
            for process in processes:
                if process.poll() is not None:
                    raise SystemExit(f"{name}: a process exited {process.returncode}; logs in "
                                     f"{tmp}")
            if time.monotonic() - began > READY_TIMEOUT_S:
                raise SystemExit(f"{name}: not ready within {READY_TIMEOUT_S} s")
            try:
                if ready(status(port)):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        ready_s = time.monotonic() - began
        time.sleep(SETTLE_S)
        rss, private = memory_mb(pool.pid)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    return rss, private, round(ready_s, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,500")
    sizes = sorted(int(n) for n in parser.parse_args().sizes.split(","))
    result: dict[str, float] = {}
    small, large = sizes[0], sizes[-1]
    spread = max(large - small, 1)
    with tempfile.TemporaryDirectory() as tmp:
        for trained, prefix in ((False, ""), (True, "trained_")):
            figures = {}
            for size in sizes:
                figures[size] = rss, private, ready_s = measure(size, trained, Path(tmp))
                print(f"{'trained' if trained else 'idle':>7} pool of {size:>4}: RSS "
                      f"{rss:7.1f} MB, private {private:7.1f} MB, ready in {ready_s:5.1f} s",
                      flush=True)
            result.update({f"{prefix}rss_mb_{n}": figures[n][0] for n in sizes})
            for index, key in ((0, "mb"), (1, "private_mb")):
                result[f"{prefix}{key}_per_virtual_client"] = round(
                    (figures[large][index] - figures[small][index]) / spread, 3)
            result.update({f"{prefix}ready_s_{n}": figures[n][2] for n in sizes})
    result["target_mb_per_virtual_client"] = 5
    print(json.dumps(result))


if __name__ == "__main__":
    main()
