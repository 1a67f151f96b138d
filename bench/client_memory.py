"""Private memory of a built-in digits client, step by step, in a fresh process.

    .venv/bin/python bench/client_memory.py [--tasks N]

Issue 12's target: <= 320 MB not shared for a digits client (torch alone takes about 280 MB).
Runs the client's own code path in-process (config, ClientRunner, warm-up, N train tasks from
a decoded frame), no network, and reads Private_Clean + Private_Dirty of /proc/self/smaps_rollup
after each step. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def private_mb() -> float:
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return round((fields["Private_Clean"] + fields["Private_Dirty"]) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args()
    steps = {"python": private_mb()}
    import torch  # noqa: F401  (what every client pays, measured apart)

    steps["torch"] = private_mb()
    from fl_service.config import load_config
    from fl_service.flower_app import ClientRunner
    from fl_service.roles import client  # noqa: F401  (the client role's own imports)
    from fl_service.tasks import digits
    from fl_service.transport import decode_frame, encode_task

    steps["fl_service"] = private_mb()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(json.dumps({"name": "c0", "port": 1, "parent": "127.0.0.1:1",
                                    "dataset": "digits", "num_partitions": 4, "threads": 1}))
        runner = ClientRunner(load_config("client", path))
        runner.warm_up()
        steps["warm_up"] = private_mb()
        model = digits.load_model({"seed": 0})
        arrays = {k: t.detach().numpy().copy() for k, t in model.state_dict().items()}
        frame = encode_task("t", "train", 1, 1, {"server-round": 1, "local-round": 1}, arrays)
        for _ in range(args.tasks):
            header, task_arrays = decode_frame(frame)
            runner.handle(header, task_arrays)
        steps[f"after_{args.tasks}_tasks"] = private_mb()
    heavy = sorted(m for m in ("sklearn", "scipy", "sympy", "torch._dynamo", "torchvision")
                   if m in sys.modules)
    for step, mb in steps.items():
        print(f"{step:>16}: {mb:7.1f} MB private")
    print(f"heavy modules loaded: {', '.join(heavy) or 'none'}")
    print(json.dumps({"digits_client_private_mb": steps[f"after_{args.tasks}_tasks"],
                      "torch_private_mb": steps["torch"], "target_mb": 320,
                      "heavy_modules": heavy}))


if __name__ == "__main__":
    main()
