"""The reference experiment's shape (Cilic et al. 2025) on digits, process runtime, this machine.

1 GA, 2 LAs, 8 clients; 2 more clients join (an inventory edit) after global round 10. Link
costs: LA-GA 100, client-LA 20 (near) or 60 (far); the reference's client-GA 120 is left out,
since the inventory model gives a client only LAs as candidate parents when there are LAs.
A communication budget ends the run. Four runs: IID and label-skewed (2 classes per client)
data, each with the reconfiguration check on and off. Prints one line per run and ends with
one JSON line.

    .venv/bin/python bench/reference_experiment.py [--budget B] [--runs iid-on,skew-off,...]
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def client(i, port):
    near, far = ("la1", "la2") if i % 2 else ("la2", "la1")
    # Explicit partitions: "c10" sorts before "c2", so implicit ids would shift (and restart)
    # every client when the two newcomers join.
    return {"hfl_role": "client", "hfl_port": port, "hfl_partition_id": i - 1,
            "hfl_link_cost": {near: 20, far: 60}}


def write_inventory(folder, ports, partitioner, budget, joined):
    edge = {f"c{i}": client(i, ports[f"c{i}"]) for i in range(1, 11 if joined else 9)}
    cv = {"ansible_connection": "local", "ansible_python_interpreter": str(BIN / "python"),
          "hfl_pipeline": "reference", "hfl_runtime": "process", "hfl_dataset": "digits",
          "hfl_partitioner": partitioner, "hfl_classes_per_client": 2,
          "hfl_num_partitions": 10, "hfl_global_rounds": 1000, "hfl_local_rounds": 2,
          "hfl_local_epochs": 2, "hfl_budget": budget, "hfl_objective": "max_accuracy",
          "hfl_state_dir": str(folder / "controller"),
          "hfl_host_state_dir": str(folder / "hosts"), "hfl_venv": str(ROOT / ".venv")}
    doc = {"hfl_cluster": {"vars": cv, "children": {
        "cloud": {"hosts": {"ga": {"hfl_role": "global_aggregator", "hfl_port": ports["ga"]}}},
        "fog": {"hosts": {la: {"hfl_role": "local_aggregator", "hfl_port": ports[la],
                               "hfl_link_cost": {"ga": 100}} for la in ("la1", "la2")}},
        "edge": {"hosts": edge}}}}
    (folder / "inventory").mkdir(exist_ok=True)
    (folder / "inventory" / "hosts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "inventory"


def env():
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")


def playbook(name, inventory, *extra, **kw):
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / "playbooks" / name),
            *extra]
    return subprocess.run(argv, cwd=ROOT, env=env(), capture_output=True, text=True, **kw)


def ga_round(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            st = json.loads(r.read())
        return st["global_round"], st["state"]
    except OSError:
        return 0, "unreachable"


def run(name, partitioner, check, budget):
    folder = Path(tempfile.mkdtemp(prefix=f"hfl-ref-{name}-"))
    names = ["ga", "la1", "la2", *(f"c{i}" for i in range(1, 11))]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    inventory = write_inventory(folder, ports, partitioner, budget, joined=False)
    try:
        placed = playbook("place.yml", inventory)
        if placed.returncode:
            raise RuntimeError(placed.stdout[-2000:])
        orch = subprocess.Popen(
            [str(BIN / "ansible-playbook"), "-i", str(inventory),
             str(ROOT / "playbooks" / "orchestrate.yml"), "-e", "hfl_orchestrate=true",
             "-e", f"hfl_check={str(check).lower()}", "-e", "hfl_orchestrate_poll_s=1",
             "-e", "hfl_orchestrate_max_wall_s=1500"],
            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        events = folder / "controller" / "reference" / "events.jsonl"
        # The join must be a change of its own: after round 10 and once the loop is watching.
        while ga_round(ports["ga"])[0] <= 10 or not events.exists():
            if orch.poll() is not None:
                raise RuntimeError("the orchestrator ended before the join")
            time.sleep(0.5)
        write_inventory(folder, ports, partitioner, budget, joined=True)
        orch.wait(1600)
        events = [json.loads(x) for x in events.read_text().splitlines()]
        ga = [json.loads(x) for x in
              (folder / "hosts" / "reference" / "ga" / "state" / "results.jsonl")
              .read_text().splitlines()]
        last = events[-1]
        return {"run": name, "partitioner": partitioner, "check": check,
                "final_accuracy": round(ga[-1]["accuracy"], 4), "global_rounds": len(ga),
                "cost": round(last["cost"]["total"], 1), "budget": budget,
                "reconfigurations": sum(e["action"] in ("apply", "revert") for e in events),
                "reverts": sum(e["action"] == "revert" for e in events),
                "stop": last["reason"]}
    finally:
        playbook("reset.yml", inventory)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Enough for ~150 rounds: the join (placed in ~40 rounds here) has rounds left to be judged.
    ap.add_argument("--budget", type=float, default=25000.0)
    ap.add_argument("--runs", default="iid-on,iid-off,skew-on,skew-off")
    args = ap.parse_args()
    out = []
    for r in args.runs.split(","):
        data, check = r.split("-")
        res = run(r, "iid" if data == "iid" else "label_skew", check == "on", args.budget)
        print(f"{r:9s} accuracy {res['final_accuracy']:.4f} after {res['global_rounds']} rounds, "
              f"cost {res['cost']:.0f} of {res['budget']:.0f}, {res['reconfigurations']} "
              f"reconfiguration(s), {res['reverts']} revert(s); {res['stop']}", flush=True)
        out.append(res)
    print(json.dumps({r["run"]: {k: r[k] for k in ("final_accuracy", "cost", "global_rounds",
                                                   "reverts")} for r in out}))


if __name__ == "__main__":
    sys.exit(main())
