"""The reference paper's four scenarios (Cilic et al., ICMLCN 2025) on real services.

    .venv/bin/python bench/paper_scenarios.py [--scenarios 1a,2b] [--arms check,keep,no_join]
        [--rounds 50] [--cifar10]

Process runtime on this machine, Fashion-MNIST from the Debian package (CIFAR-10 with
--cifar10, when its files are present). Fleet: 1 GA, 2 LAs, 8 clients; clients c9 and c10 are
written into the inventory once the GA has finished global round 10, and the running
orchestrator picks them up. Link costs: LA-GA 100, client-LA 20 (its cheap LA) or 60. The
paper's client-GA 120 is left out: with LAs in the inventory a client's candidate parents are
LAs only, so that link could never be chosen. 2 local rounds per global round.

Data, by each client's `hfl_partition` (disjoint slices, from the seed):
- 1a/1b: IID, 100 examples of every class per client; c9 and c10 bring 100 (1a) or 1000 (1b).
- 2a/2b: two classes x 1000 per client, c1..c8 covering classes 0-7 (each class on two
  clients); c9 and c10 bring classes 0/1 (2a) or 8/9 (2b).

Three arms per scenario, same seed and budget: `check` (the reconfiguration check on: it keeps
or reverts the join after its window), `keep` (`hfl_check: false`: the join stays), `no_join`
(the inventory is never edited). The budget is what --rounds (50) global rounds of the 8-client
plan cost (the cost model's units times one model exchange in MB). The check was right when
its decision picked the arm that ended more accurate of keep and no_join (a revert leaves the
pipeline as in no_join, a few rounds' budget poorer); an arm's accuracy is the mean of its last
FINAL_ROUNDS global rounds (label-skewed runs swing by 0.1 from one round to the next). Stall
experiments are off (`hfl_stall_window=0`) so that the arms differ by the join alone.

Sizing, for at most 45 minutes on 2 shared cores: 12 arms of about 50 global rounds. The
built-in Fashion-MNIST CNN took about 60 s per global round here (shared cores); the bench's own
task (bench/paper_task.py: a 784-64-10 MLP, 50,890 parameters, batches normalised without PIL)
trains 2000 examples in about 0.15 s. 1 local epoch, batch 64, learning rate 0.02 (0.05 made the
label-skewed scenarios swing by 10 points from round to round). On Fashion-MNIST this model still
climbs over 50 rounds, which is what the check has to tell apart (on digits every arm saturates
and every join pays). A local round takes at least 1 s (bench/paper_task.py: a small edge
device's pace), so that the orchestrator's attach and a join's placement, about 17 s each, take
a few rounds, not half the budget. The three arms of a scenario run side by side (one
placement wait instead of three); every arm is a fresh pipeline from round 0: sharing the 10
rounds before the join through the GA's checkpoint would save about 20 of ~150 rounds per
scenario, less than the placements cost.

The services run niced (`nice -n 19`, from the first place.yml); the orchestrator and its
placements, the newcomers' services included, are not. On a fleet the controller has CPUs of
its own; here 36 services train on the same 2 cores as Ansible. Measured 2026-12-03 without the
pace, side by side at load 18-23: the orchestrator attached at round 24-26 and the join,
decided at round 26-28, was in place 24-27 rounds later, at round 50-55 of about 55, so over two
tries of 1a one check of two ran; one after another, quiet, still 25 rounds (17 s at 0.7 s a
round). Training is unchanged by either: every round waits for every client.

Prints one line per arm, the table, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / ".tmp" / "collections"))

import paper_task  # noqa: E402  (bench/, this script's folder)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.cost import round_cost  # noqa: E402
from hfl_helpers import (  # noqa: E402
    ansible_env,
    free_ports,
    playbook,
    run_group,
    stop_processes_under,
    write_inventory,
)

from fl_service.datasets import (  # noqa: E402
    DEBIAN_FASHION_MNIST,
    cifar10_files_present,
    data_root,
    unpack_debian_fashion_mnist,
)
from fl_service.models import count_parameters  # noqa: E402
from fl_service.tasks import cifar10  # noqa: E402

PIPELINE = "paper"
JOIN_AFTER = 10
FINAL_ROUNDS = 5  # an arm's accuracy: the mean over its last global rounds
CLIENTS, JOINING = [f"c{i}" for i in range(1, 9)], ["c9", "c10"]
LINKS = {"la_ga": 100, "near": 20, "far": 60}
ALL_CLASSES = list(range(10))
SCENARIOS = {
    "1a": ("IID 100/class; newcomers 100/class", lambda i: (ALL_CLASSES, 100),
           lambda i: (ALL_CLASSES, 100)),
    "1b": ("IID 100/class; newcomers 1000/class", lambda i: (ALL_CLASSES, 100),
           lambda i: (ALL_CLASSES, 1000)),
    "2a": ("2 classes x 1000, classes 0-7; newcomers 0/1",
           lambda i: ([2 * i % 8, 2 * i % 8 + 1], 1000), lambda i: ([0, 1], 1000)),
    "2b": ("2 classes x 1000, classes 0-7; newcomers 8/9",
           lambda i: ([2 * i % 8, 2 * i % 8 + 1], 1000), lambda i: ([8, 9], 1000)),
}
ARMS = ("check", "keep", "no_join")
HOSTS = ["ga", "la1", "la2", *CLIENTS, *JOINING]
# The pipeline's services start at this niceness, the orchestrator and its placements at the
# bench's own (see the docstring).
SERVICE_NICENESS = 19


def niced(argv, **kwargs):
    """run_group for a playbook whose processes, the services it starts included, run niced."""
    return run_group(["nice", "-n", str(SERVICE_NICENESS), *argv], **kwargs)


def near_la(i):
    return "la1" if i % 2 == 0 else "la2"


def client_vars(i, port, mix):
    """Client c{i+1}: partition id i (explicit, so c10 joining does not renumber c2..c8)."""
    near = near_la(i)
    far = "la2" if near == "la1" else "la1"
    classes, per_class = mix(i)
    return {"hfl_role": "client", "hfl_port": port, "hfl_partition_id": i,
            "hfl_partition": {"classes": classes, "per_class": per_class},
            "hfl_link_cost": {near: LINKS["near"], far: LINKS["far"]}}


def budget_for(rounds, dataset):
    """What `rounds` global rounds of the 8 clients under their cheap LAs cost."""
    model = (cifar10 if dataset == "cifar10" else paper_task).load_model({"seed": 0})
    exchange_mb = 2 * count_parameters(model) * 4 / 1e6  # one model down, one update up
    weights = {c: {near_la(i): LINKS["near"]} for i, c in enumerate(CLIENTS)}
    weights.update({la: {"ga": LINKS["la_ga"]} for la in ("la1", "la2")})
    assignment = {c: near_la(i) for i, c in enumerate(CLIENTS)}
    return rounds * round_cost(assignment, weights, "ga", 2, exchange_mb)


class Arm:
    """One pipeline of one scenario's arm, placed in `folder`, with the orchestrator attached."""

    def __init__(self, folder, scenario, arm, settings, ports):
        self.folder, self.scenario, self.arm = folder, scenario, arm
        self.ports = dict(zip(HOSTS, ports, strict=True))
        self.settings = settings
        self.state = folder / "controller" / PIPELINE

    def inventory(self, joined):
        _, mix, new_mix = SCENARIOS[self.scenario]
        clients = {c: client_vars(i, self.ports[c], mix) for i, c in enumerate(CLIENTS)}
        if joined:
            clients.update({c: client_vars(8 + j, self.ports[c], new_mix)
                            for j, c in enumerate(JOINING)})
        tiers = {
            "cloud": {"ga": {"hfl_role": "global_aggregator", "hfl_port": self.ports["ga"]}},
            "fog": {la: {"hfl_role": "local_aggregator", "hfl_port": self.ports[la],
                         "hfl_link_cost": {"ga": LINKS["la_ga"]}} for la in ("la1", "la2")},
            "edge": clients,
        }
        return write_inventory(self.folder / "inventory", tiers, {
            "ansible_connection": "local",
            "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
            "hfl_pipeline": PIPELINE, "hfl_runtime": "process",
            "hfl_insecure": True, **self.settings,
            "hfl_state_dir": str(self.folder / "controller"),
            "hfl_host_state_dir": str(self.folder / "hosts"), "hfl_venv": str(ROOT / ".venv")})

    def ga_round(self):
        url = f"http://127.0.0.1:{self.ports['ga']}/status"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["global_round"]
        except OSError:
            return 0

    def events(self):
        path = self.state / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def run(self, max_wall_s):
        inventory = self.inventory(joined=False)
        log = open(self.folder / "orchestrate.log", "w")  # noqa: SIM115 - closed below
        orch = None
        try:
            placed = playbook("place.yml", inventory, runner=niced)
            if placed.rc:
                raise SystemExit(f"{self.scenario}/{self.arm}: place.yml failed: {placed.why()}")
            argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
                    str(ROOT / "playbooks" / "orchestrate.yml"), "-e", "hfl_orchestrate=true",
                    "-e", f"hfl_check={'false' if self.arm == 'keep' else 'true'}",
                    "-e", "hfl_orchestrate_poll_s=1",
                    # The arms differ by the join alone: no stall experiment regroups any of them.
                    "-e", "hfl_stall_window=0",
                    "-e", f"hfl_orchestrate_max_wall_s={max_wall_s}"]
            orch = subprocess.Popen(argv, cwd=ROOT, env=ansible_env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            if self.arm != "no_join":
                # The join is a change of its own: after round 10, once the loop is watching.
                while self.ga_round() <= JOIN_AFTER or not self.events():
                    if orch.poll() is not None:
                        raise SystemExit(f"{self.scenario}/{self.arm}: the orchestrator ended "
                                         f"before the join; see {log.name}")
                    time.sleep(0.5)
                self.inventory(joined=True)
            orch.wait(max_wall_s + 60)
            return self.result()
        finally:
            if orch is not None and orch.poll() is None:
                os.killpg(orch.pid, signal.SIGTERM)
                orch.wait(30)
            log.close()
            playbook("reset.yml", inventory)
            stop_processes_under(self.folder)

    def result(self):
        """The arm's figures; the GA's results.jsonl is kept in the arm's folder (reset.yml
        removes the services' folders), next to the controller's events.jsonl."""
        events = self.events()
        results = self.folder / "ga-results.jsonl"
        shutil.copy(self.folder / "hosts" / PIPELINE / "ga" / "state" / "results.jsonl", results)
        ga = [json.loads(x) for x in results.read_text().splitlines()]
        checks = [e for e in events if e["trigger"].startswith("check of change")]
        joins = [e for e in events if e["trigger"].startswith("join")]
        # Round-to-round swings of label-skewed runs reach 0.1: an arm ends at the mean of its
        # last FINAL_ROUNDS rounds, not at its last round alone.
        final = [r["accuracy"] for r in ga[-FINAL_ROUNDS:]]
        return {"accuracy": round(sum(final) / len(final), 4), "rounds": len(ga),
                "cost": round(events[-1]["cost"]["total"], 1),
                "joined_at": joins[0]["global_round"] if joins else None,
                "join_placed_at": joins[0].get("applied_at_round") if joins else None,
                "decision": checks[0]["action"] if checks else None,
                "check_at": checks[0]["global_round"] if checks else None,
                "check_reason": checks[0]["reason"] if checks else None,
                "stop": events[-1]["reason"]}


def table(results, budget):
    lines = [f"budget {budget:.0f} (cost units) per arm",
             f"{'scenario':8s} {'check':>16s} {'keep':>16s} {'no_join':>16s}  decision  better "
             "right",
             "-" * 86]
    for name, arms in results.items():
        cells = [f"{arms[a]['accuracy']:.4f} ({arms[a]['cost']:.0f})" if a in arms else "-"
                 for a in ARMS]
        row = scenario_verdict(arms)
        lines.append(f"{name:8s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s}  "
                     f"{str(row['decision']):8s}  {str(row.get('better')):7s}"
                     f"{str(row['right']) if row['right'] is not None else '-'}")
    lines.append(f"cells: accuracy at budget exhaustion (mean of the last {FINAL_ROUNDS} "
                 "rounds; cost booked); better: the arm "
                 "that ended more accurate of keep and no_join (revert = no_join)")
    return "\n".join(lines)


def scenario_verdict(arms):
    decision = arms.get("check", {}).get("decision")
    if "keep" not in arms or "no_join" not in arms or decision is None:
        return {"decision": decision, "right": None}
    better = "keep" if arms["keep"]["accuracy"] >= arms["no_join"]["accuracy"] else "revert"
    return {"decision": decision, "better": better, "right": decision == better}


def run_scenario(work, name, arms, settings):
    """The arms of one scenario side by side: one setup's wait instead of three, and the same
    machine load for all of them (their rounds do not depend on timing: every round waits for
    every client, well within the round timeout)."""
    t0 = time.monotonic()
    # All arms' ports from one call: ports freed by one call may be handed out by the next.
    ports = free_ports(len(HOSTS) * len(arms))
    with ThreadPoolExecutor(len(arms)) as pool:
        futures = {}
        for i, arm in enumerate(arms):
            folder = work / f"{name}-{arm}"
            folder.mkdir()
            mine = ports[i * len(HOSTS):(i + 1) * len(HOSTS)]
            futures[arm] = pool.submit(Arm(folder, name, arm, settings, mine).run, 1500)
        results = {arm: f.result() for arm, f in futures.items()}
    for arm, res in results.items():
        print(f"{name} {arm:8s} accuracy {res['accuracy']:.4f} after {res['rounds']} rounds, "
              f"cost {res['cost']:.0f}; join decided at {res['joined_at']}, placed at "
              f"{res['join_placed_at']}, check at "
              f"{res['check_at']}: {res['decision']} ({res['check_reason']}); {res['stop']}",
              flush=True)
    print(f"{name}: {time.monotonic() - t0:.0f} s", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--rounds", type=int, default=50,
                    help="global rounds the budget buys the 8 clients")
    ap.add_argument("--cifar10", action="store_true", help="CIFAR-10 instead of Fashion-MNIST")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hfl-paper-"))
    dataset = "cifar10" if args.cifar10 else "fashion_mnist"
    data_dir = work / "data"
    if args.cifar10 and not cifar10_files_present(data_root({"data_dir": str(data_dir)})):
        raise SystemExit(f"--cifar10: no CIFAR-10 files under {data_dir}")
    budget = budget_for(args.rounds, dataset)
    settings = {"hfl_dataset": dataset, "hfl_data_dir": str(data_dir), "hfl_seed": args.seed,
                "hfl_global_rounds": 1000, "hfl_local_rounds": 2, "hfl_local_epochs": 1,
                "hfl_batch_size": 64, "hfl_learning_rate": 0.02, "hfl_num_partitions": 10,
                "hfl_budget": round(budget, 1), "hfl_objective": "max_accuracy",
                # The services import the bench's task from bench/.
                "hfl_service_environment": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                            "PYTHONPATH": str(ROOT / "bench")}}
    if not args.cifar10:
        settings["hfl_task"] = "paper_task"
    if not args.cifar10:  # once, before the arms' clients would all unpack it at once
        unpack_debian_fashion_mnist(data_root({"data_dir": str(data_dir)}),
                                    DEBIAN_FASHION_MNIST)
    results = {}
    try:
        for name in args.scenarios.split(","):
            results[name] = run_scenario(work, name, args.arms.split(","), settings)
    finally:
        stop_processes_under(work)
    print(table(results, budget))
    print(f"each arm's ga-results.jsonl and controller/paper/events.jsonl: {work}/<scenario>-<arm>")
    print(f"wall time {time.monotonic() - started:.0f} s")
    out = {}
    for name, arms in results.items():
        out[name] = {a: arms[a]["accuracy"] for a in arms}
        verdict = scenario_verdict(arms)
        out[name].update(decision=verdict["decision"], right=verdict["right"])
    print(json.dumps({"scenarios": out, "right": sum(bool(v["right"]) for v in out.values())}))


if __name__ == "__main__":
    main()
