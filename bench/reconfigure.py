"""Seconds from a change to its effect in a running, orchestrated pipeline.

    .venv/bin/python bench/reconfigure.py [--repeat N] [--only local|ssh] [--profile]

The embedded default's shape (1 GA, 2 LAs, 4 clients, process runtime, mutual TLS) with the
reference experiment's link costs, digits, 1000 global rounds, the orchestrator attached
(`playbooks/orchestrate.yml`, poll 1 s), every figure the median of --repeat fresh pipelines,
measured twice:
- local: the local inventory, every host this machine (`ansible_connection=local`);
- ssh (figures prefixed ssh_, root only): the same inventory over SSH on an 8-host fleet (the
  seven hosts and the joining c5), each host a network namespace with its own sshd and address
  (tests/integration/fleet.py); Ansible and the orchestrator run in the fleet's controller
  namespace, the orchestrator's status polls go to the GA's host over SSH. Hosts share this
  machine's CPUs, filesystem and clock. Ansible runs with examples/ansible-fleet.cfg, the
  settings docs/inventory.md gives a fleet reached over SSH (pipelining, forks, ControlPersist).
- join_s: a client written into the inventory file -> its first update in an LA's aggregate
  (the LA's results.jsonl lists it among the participants); detection included.
- move_s: the orchestrator's decision (an LA was killed: its clients move to the other) -> every
  moved client's first update under its new parent. The event is written once placement is
  done; it was decided at `ts - placement_s`. detect_s: the kill -> that decision.
  Stall experiments are off (`hfl_stall_window=0`): on digits every window is flat, and a
  join edited in while a stall's change or revert is being placed waits for that placement
  (it did in an SSH run with them on: 40 s, of which 28 s its own placement).
- noop_place_s: `ansible-playbook place.yml` on the running pipeline, nothing to change
  (--profile: that run with ansible.posix.profile_tasks, whose task times are printed).
Everything a run starts (services, the orchestrator, the fleet) is stopped when it ends, also
on failure or SIGTERM. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from fleet import Fleet  # noqa: E402
from hfl_helpers import (  # noqa: E402
    ansible_env,
    edit_reference,
    free_ports,
    local_inventory,
    playbook,
    run_group,
    service_pids,
    stop_group,
    stop_processes_under,
    triggered,
)

PIPELINE = "demo"
JOINING = "c5"
# The local inventory's hosts and the joining client: one fleet host each.
SSH_HOSTS = ["ga", "la1", "la2", "c1", "c2", "c3", "c4", JOINING]
FLEET_CFG = ROOT / "examples" / "ansible-fleet.cfg"
PROFILE_ENV = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
               "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "15"}


def fleet_host_vars(fleet: Fleet, tmp: Path, name: str) -> dict:
    """A fleet host's connection vars, its address to bind and its own state folder."""
    host = next(h for h in fleet.hosts if h.name == name)
    return {**fleet.connection_vars(host), "hfl_bind_host": host.address,
            "hfl_host_state_dir": str(tmp / "hosts" / name)}


def on_fleet(fleet: Fleet, tmp: Path, tiers: dict, cluster_vars: dict) -> None:
    """Edit a local inventory (local_inventory's edit) so that each host is the fleet host of
    its name, reached over SSH."""
    del cluster_vars["ansible_connection"], cluster_vars["ansible_python_interpreter"]
    for hosts in tiers.values():
        for name, host_vars in hosts.items():
            host_vars.update(fleet_host_vars(fleet, tmp, name))


class Running:
    """A placed pipeline in `tmp` with the orchestrator attached; on `fleet`'s hosts over SSH
    when one is given, else every host this machine."""

    def __init__(self, tmp: Path, fleet: Fleet | None = None, edit_more=None):
        """``edit_more(tiers, cluster_vars)`` changes the reference inventory further."""
        self.tmp = tmp
        self.fleet = fleet
        self.runner = fleet.run if fleet else run_group
        self.env = {"ANSIBLE_CONFIG": str(FLEET_CFG)} if fleet else {}
        reference = edit_reference(rounds=1000)

        def edit(tiers, cluster_vars):
            reference(tiers, cluster_vars)
            if edit_more:
                edit_more(tiers, cluster_vars)
            if fleet:
                on_fleet(fleet, tmp, tiers, cluster_vars)

        self.inventory = local_inventory(tmp, edit)
        self.state = tmp / "controller" / PIPELINE
        self.orchestrator = None
        self.log = None

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self):
        run = playbook("place.yml", self.inventory, runner=self.runner, env=self.env)
        if run.rc != 0:
            raise SystemExit(f"place.yml failed: {run.why()}")
        argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(self.inventory),
                str(ROOT / "playbooks" / "orchestrate.yml"), "-e", "hfl_orchestrate=true",
                "-e", "hfl_orchestrate_poll_s=1", "-e", "hfl_orchestrate_max_wall_s=3600",
                "-e", "hfl_stall_window=0"]
        env = {**ansible_env(), **self.env}
        if self.fleet:
            argv, env = self.fleet.in_controller(argv, env)
        self.log = open(self.tmp / "orchestrate.log", "w")  # noqa: SIM115 - closed in __exit__
        self.orchestrator = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        self.wait(lambda: any(triggered(e, "attach") for e in self.events()), "attach")

    def __exit__(self, *exc):
        try:
            if self.orchestrator:
                stop_group(self.orchestrator)
            stop_processes_under(self.state / "runner")  # a placement it had under way
            if self.log:
                self.log.close()
            playbook("reset.yml", self.inventory, runner=self.runner, env=self.env)
        finally:
            stop_processes_under(self.tmp)

    def events(self):
        path = self.state / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def results(self, service):
        host_state = self.tmp / "hosts" / service if self.fleet else self.tmp / "hosts"
        path = host_state / PIPELINE / service / "state" / "results.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def first_update(self, client, parent, after):
        """ts of the first round of `parent` after `after` with `client` among participants."""
        for r in self.results(parent):
            if r["ts"] > after and client in r.get("participants", []):
                return r["ts"]
        return None

    def wait(self, done, what, deadline_s=900):
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            found = done()
            if found:
                return found
            if self.orchestrator is not None and self.orchestrator.poll() is not None:
                raise SystemExit(f"the orchestrator ended while waiting for {what}: "
                                 f"{(self.tmp / 'orchestrate.log').read_text()[-2000:]}")
            time.sleep(0.1)
        raise SystemExit(f"no {what} in {deadline_s} s")


def hosts_yml(p: Running) -> Path:
    return p.inventory / "hosts.yml"


def measure_join(p: Running) -> float:
    doc = yaml.safe_load(hosts_yml(p).read_text())
    doc["hfl_cluster"]["children"]["edge"]["hosts"][JOINING] = {
        "hfl_role": "client", "hfl_port": free_ports(1)[0],
        "hfl_link_cost": {"la1": 20, "la2": 60},
        **(fleet_host_vars(p.fleet, p.tmp, JOINING) if p.fleet else {})}
    began = time.time()
    hosts_yml(p).write_text(yaml.safe_dump(doc, sort_keys=False))
    # Under whichever LA the orchestrator picks (its policy weighs more than link cost).
    seen = p.wait(lambda: min(filter(None, (p.first_update(JOINING, la, began)
                                            for la in ("la1", "la2"))), default=None),
                  f"{JOINING}'s first update")
    # The client trains before its placement's last checks are done: the loop is back on watch
    # only once the join's event is written.
    p.wait(lambda: any(triggered(e, f"join: {JOINING}") for e in p.events()),
           "the join's event")
    return seen - began


def measure_move(p: Running) -> tuple[float, float]:
    killed = time.time()
    os.kill(service_pids(p.tmp / "hosts")["la2"], signal.SIGKILL)
    ev = p.wait(lambda: next((e for e in p.events() if triggered(e, "failure: la2")
                              and e["action"] == "apply"), None), "the move off la2")
    decided = ev["ts"] - ev["placement_s"]
    moved = [c for c, parent in ev["plan_after"].items() if ev["plan_before"].get(c) == "la2"]
    firsts = [p.wait(lambda c=c: p.first_update(c, ev["plan_after"][c], decided),
                     f"{c}'s first update under {ev['plan_after'][c]}") for c in moved]
    return max(firsts) - decided, decided - killed


def measure_noop_place(p: Running, profile: bool) -> float:
    began = time.monotonic()
    run = playbook("place.yml", p.inventory, runner=p.runner,
                   env={**p.env, **(PROFILE_ENV if profile else {})})
    took = time.monotonic() - began
    if run.rc != 0:
        raise SystemExit(f"place.yml (nothing to do) failed: {run.why()}")
    if profile:  # profile_tasks' table follows the PLAY RECAP
        print(run.output[run.output.rindex("PLAY RECAP"):], flush=True)
    return took


def measure(mode: str, profile: bool) -> dict[str, float]:
    """One fresh pipeline's figures in `mode` (local or ssh)."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hfl-reconfigure-")))
        fleet = (stack.enter_context(Fleet(len(SSH_HOSTS), tmp / "fleet", names=SSH_HOSTS))
                 if mode == "ssh" else None)
        p = stack.enter_context(Running(tmp, fleet))
        noop = measure_noop_place(p, profile)
        join = measure_join(p)
        move, detect = measure_move(p)
        return {"move_s": move, "join_s": join, "noop_place_s": noop, "detect_s": detect}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("local", "ssh"),
                        help="measure one half (default: both)")
    parser.add_argument("--profile", action="store_true",
                        help="print profile_tasks' task times of each no-op place.yml")
    args = parser.parse_args()
    modes = [args.only] if args.only else ["local", "ssh"]
    if "ssh" in modes and os.geteuid() != 0:
        raise SystemExit("--only ssh (and the default, both halves) needs root: the SSH "
                         "fleet's hosts are network namespaces")
    # SIGTERM unwinds like Ctrl-C: every run's services, orchestrator and fleet are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    medians = {}
    for mode in modes:
        prefix = "ssh_" if mode == "ssh" else ""
        runs = []
        for i in range(args.repeat):
            runs.append(measure(mode, args.profile))
            print(f"{mode} run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                      runs[-1].items()), flush=True)
        m = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        print(f"{mode}, median of {args.repeat}: join {m['join_s']} s (inventory edit -> "
              f"first update in an aggregate), move {m['move_s']} s (decision -> first update "
              f"under the new parent; detection {m['detect_s']} s before it), place.yml with "
              f"nothing to do {m['noop_place_s']} s", flush=True)
        medians.update({prefix + k: v for k, v in m.items()})
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
