"""Seconds `place.yml` takes over an SSH fleet as it grows, and which tasks take them.

    .venv/bin/python bench/placement_scale.py [--sizes 8 24] [--settings forks5 forks25 ...]

Root only: each host is a network namespace with its own sshd and address
(tests/integration/fleet.py); Ansible runs in the fleet's controller namespace. The hosts share
this machine's CPUs, filesystem (the project's .venv is every host's hfl_venv) and clock.
Each size is one GA, n // 8 LAs (at least 2) and the rest clients (8: 1 GA, 2 LAs, 5 clients;
24: 1 GA, 3 LAs, 20 clients), process runtime, mutual TLS, digits, 1000 global rounds: the
pipeline trains all through the measurements. For each setting (forks 5 or 25, pipelining off
or on: ansible-playbook's environment, SETTINGS; default all):
- first_s: `place.yml` on hosts that run nothing yet (fresh state folders and credentials);
- noop_s: `place.yml` again at once, nothing to change;
then `reset.yml` stops it. Every run has ansible.posix.profile_tasks on: each task's wall time
over all hosts (the linear strategy runs a task on every host before the next), printed as a
breakdown by kind: the plan (controller, once), controller-side once-per-run tasks
(credentials, the wheel), per-host tasks (fl_runtime's probe and the small ones), per-host
service work (fl_process, the status check) and the start (what no task holds). Figures are
named place_<n>_first_s / place_<n>_noop_s (forks 5), then _<setting> for the others.
Everything a run starts (the fleet, its sshds, the services) is stopped when it ends, also on
failure, Ctrl-C or SIGTERM. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from fleet import Fleet  # noqa: E402
from hfl_helpers import free_ports, local_inventory, playbook, stop_processes_under  # noqa: E402
from reconfigure import PROFILE_ENV, on_fleet  # noqa: E402

# Resident memory a digits service (python + torch) keeps, with room to spare.
SERVICE_MB = 400
SETTINGS = {
    "forks5": {"ANSIBLE_FORKS": "5"},  # Ansible's default
    "forks5_pipelining": {"ANSIBLE_FORKS": "5", "ANSIBLE_PIPELINING": "True"},
    "forks25": {"ANSIBLE_FORKS": "25"},
    "forks25_pipelining": {"ANSIBLE_FORKS": "25", "ANSIBLE_PIPELINING": "True"},
}
# profile_tasks' summary line: "<role> : <task> ---...--- 12.34s"
_PROFILE_LINE = re.compile(r"^(?P<task>.+?) -+\s*(?P<s>\d+\.\d\d)s$")
# Task names (profile_tasks' "role : task") by kind, for the breakdown.
KINDS = (
    ("plan", ("Build the topology and the plan",)),
    ("service work", ("Run this host's services", "Check that this host's services answer")),
    ("once per run", ("fl_pki :", "Build the fl_service wheel", "Read the fl_service source",
                      "Remove the wheel's folder", "stale services")),
)


def names(n: int) -> tuple[list[str], list[str]]:
    """(LAs, clients) of an n-host pipeline: one GA, n // 8 LAs (at least 2), the rest
    clients."""
    las = max(2, n // 8)
    return [f"la{i + 1}" for i in range(las)], [f"c{i + 1}" for i in range(n - 1 - las)]


def inventory(tmp: Path, fleet: Fleet, n: int) -> Path:
    las, clients = names(n)

    def edit(tiers, cluster_vars):
        ports = iter(free_ports(n))
        tiers["cloud"] = {"ga": {"hfl_role": "global_aggregator", "hfl_port": next(ports)}}
        tiers["fog"] = {la: {"hfl_role": "local_aggregator", "hfl_port": next(ports),
                             "hfl_link_cost": {"ga": 100}} for la in las}
        # Each client near one LA (round robin), far from the others.
        tiers["edge"] = {c: {"hfl_role": "client", "hfl_port": next(ports),
                             "hfl_link_cost": {la: 20 if j == i % len(las) else 60
                                               for j, la in enumerate(las)}}
                         for i, c in enumerate(clients)}
        cluster_vars.update(hfl_global_rounds=1000, hfl_num_partitions=len(clients))
        on_fleet(fleet, tmp, tiers, cluster_vars)

    return local_inventory(tmp, edit)


def profile(output: str) -> dict[str, float]:
    """{task: seconds} from profile_tasks' table (after the PLAY RECAP)."""
    found = {}
    for line in output[output.rindex("TASKS RECAP"):].splitlines():
        m = _PROFILE_LINE.match(line.strip())
        if m:
            found[m["task"]] = found.get(m["task"], 0.0) + float(m["s"])
    return found


def kind(task: str) -> str:
    return next((k for k, marks in KINDS if any(m in task for m in marks)), "per-host tasks")


def place(inv: Path, fleet: Fleet, env: dict[str, str], what: str) -> tuple[float, dict]:
    began = time.monotonic()
    run = playbook("place.yml", inv, runner=fleet.run,
                   env={**PROFILE_ENV, "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "all", **env})
    took = time.monotonic() - began
    if run.rc != 0:
        raise SystemExit(f"place.yml ({what}) failed: {run.why()}")
    return took, profile(run.output)


def report(label: str, took: float, tasks: dict[str, float]) -> None:
    by_kind = {}
    for task, s in tasks.items():
        by_kind[kind(task)] = by_kind.get(kind(task), 0.0) + s
    # What no task holds: ansible-playbook's start, reading the inventory and the playbooks.
    by_kind["start"] = took - sum(tasks.values())
    print(f"{label}: {took:.1f} s; by kind: " + ", ".join(
        f"{k} {s:.1f} s" for k, s in sorted(by_kind.items(), key=lambda x: -x[1])), flush=True)
    for task, s in sorted(tasks.items(), key=lambda x: -x[1])[:8]:
        print(f"    {s:7.1f} s  {task}", flush=True)


def measure(n: int, settings: list[str]) -> dict[str, float]:
    figures = {}
    las, clients = names(n)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hfl-placescale-")))
        fleet = stack.enter_context(Fleet(n, tmp / "fleet", names=["ga", *las, *clients]))
        for setting in settings:
            env = SETTINGS[setting]
            run_dir = tmp / setting  # fresh state folders and credentials: a real first run
            inv = inventory(run_dir, fleet, n)
            stack.callback(stop_processes_under, run_dir)
            try:
                first, first_tasks = place(inv, fleet, env, f"{n} hosts, {setting}, first run")
                report(f"{n} hosts, {setting}, first run", first, first_tasks)
                noop, noop_tasks = place(inv, fleet, env, f"{n} hosts, {setting}, no-op")
                report(f"{n} hosts, {setting}, no-op re-run", noop, noop_tasks)
            finally:
                playbook("reset.yml", inv, runner=fleet.run, env=env)
            suffix = "" if setting == "forks5" else f"_{setting}"
            figures[f"place_{n}_first{suffix}_s"] = round(first, 1)
            figures[f"place_{n}_noop{suffix}_s"] = round(noop, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 24],
                        help="fleet sizes (hosts, GA and LAs included; at least 4)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                        help="ansible-playbook settings to measure each size with")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the SSH fleet's hosts are network namespaces")
    if min(args.sizes) < 4:
        raise SystemExit("--sizes: at least 4 hosts (a GA, two LAs, a client)")
    free_mb = int(subprocess.run(["free", "-m"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[1].split()[6])
    if max(args.sizes) * SERVICE_MB > free_mb:
        raise SystemExit(f"--sizes {max(args.sizes)}: its services need about "
                         f"{max(args.sizes) * SERVICE_MB} MB, {free_mb} MB are available")
    # SIGTERM unwinds like Ctrl-C: the services, the fleet and its namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures = {}
    for n in args.sizes:
        figures.update(measure(n, args.settings))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
