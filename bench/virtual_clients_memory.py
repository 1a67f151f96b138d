"""Memory of a pool of virtual clients (config key `virtual_clients`) by its size.

    .venv/bin/python bench/virtual_clients_memory.py [--sizes 1,100,500]

Issue 12's target: <= 5 MB per virtual client beyond its data. For each size, a real pool
process (`python -m fl_service client`) of that many digits clients (iid, one partition each),
whose parents are a closed loopback port (they warm up, then back off from joining), is
waited for until every virtual client has warmed up (/status: no virtual client `starting`);
then, after SETTLE_S, its RSS (VmRSS) and private memory (Private_Clean + Private_Dirty of
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


def measure(size: int, tmp: Path) -> tuple[float, float, float]:
    """(RSS MB, private MB, seconds to warm up) of a pool of `size` virtual clients."""
    port, nowhere = free_port(), free_port()
    config = {"name": "pool", "port": port, "state_dir": str(tmp / f"pool{size}"),
              "dataset": "digits", "partitioner": "iid", "num_partitions": size, "threads": 1,
              "virtual_clients": [{"name": f"pool-{i}", "partition_id": i,
                                   "parent": f"127.0.0.1:{nowhere}"} for i in range(size)]}
    path = tmp / f"pool{size}.yaml"
    path.write_text(json.dumps(config))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HFL_")},
           "OMP_NUM_THREADS": "1"}
    with (tmp / f"pool{size}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fl_service", "client", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        start = time.monotonic()
        while True:
            if process.poll() is not None:
                raise SystemExit(f"pool of {size} exited {process.returncode}: "
                                 f"{(tmp / f'pool{size}.log').read_text()[-2000:]}")
            if time.monotonic() - start > READY_TIMEOUT_S:
                raise SystemExit(f"pool of {size} not warmed up within {READY_TIMEOUT_S} s")
            try:
                doc = status(port)
                if len(doc["virtual_clients"]) == size and not any(
                        m["state"] == "starting" for m in doc["virtual_clients"].values()):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        warm_s = time.monotonic() - start
        time.sleep(SETTLE_S)
        rss, private = memory_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return rss, private, round(warm_s, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,500")
    sizes = sorted(int(n) for n in parser.parse_args().sizes.split(","))
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            figures[size] = measure(size, Path(tmp))
            rss, private, warm = figures[size]
            print(f"pool of {size:>4}: RSS {rss:7.1f} MB, private {private:7.1f} MB, "
                  f"warm-up {warm:5.1f} s", flush=True)
    small, large = sizes[0], sizes[-1]
    spread = max(large - small, 1)
    result = {f"rss_mb_{n}": figures[n][0] for n in sizes}
    result["mb_per_virtual_client"] = round((figures[large][0] - figures[small][0]) / spread, 3)
    result["private_mb_per_virtual_client"] = round(
        (figures[large][1] - figures[small][1]) / spread, 3)
    result.update({f"warm_up_s_{n}": figures[n][2] for n in sizes})
    result["target_mb_per_virtual_client"] = 5
    print(json.dumps(result))


if __name__ == "__main__":
    main()
