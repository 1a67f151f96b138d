"""How every cost grows with the fleet (issue 12), measured on real processes on loopback.

    .venv/bin/python bench/scale.py [--quick] [--plot PATH]

- clients per LA = 10, 100, 1000 (digits, 13.7K params): GA + one LA + one pool process of that
  many virtual clients (`virtual_clients`), all of them the LA's children. Framework overhead per
  local round = the LA's round wall time minus the training time of its clients (the pool trains
  one at a time, `threads` 1, so their summed training time is the time training took); median
  over the steady rounds. The pool runs on one CPU and the GA and LA on the others
  (`pool_cpu_apart`: steadier from run to run, not lower); the largest pool is measured once
  more with its threads free to move between CPUs, as the OS places them. Also the GA's, the
  LA's and the pool's CPU seconds per round and memory not shared (USS: Private_Clean +
  Private_Dirty of /proc/<pid>/smaps_rollup), and the pool's memory per virtual client (the
  slope between the smallest and largest pool).
- LAs per GA = 2, 10, 50 (bench/overhead_task.py: the ~1M-parameter CIFAR-10 CNN, one SGD step
  on random images): GA + that many LA processes, each with one virtual client of one pool.
  Overhead per global round = the GA's round wall time minus the pool's summed training time.
- the orchestrator at 1000 clients: GA + 2 LAs + a pool of 1000, reading every /status (the
  pool's once) and taking it in (`Orchestrator.observe`), then deciding (`decide`), with both
  LAs up and again once la1 was killed (two missed reads), when its 500 clients are reassigned.
- validate + plan for a 1000-host inventory (1000 client hosts, 10 LAs): topology.build +
  plan.make_plan, and `ansible-playbook playbooks/plan.yml` on it written to disk.
Targets: 1000 clients under one LA <= 2 s overhead per local round; 50 LAs <= 1 s per global
round at 1M params; <= 5 MB per virtual client; observe + decide <= 2 s and validate + plan
<= 5 s at 1000. Saves a PNG of each curve and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / ".tmp" / "collections"))

import round_overhead as ro  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (  # noqa: E402
    fetch_all,
    virtual_client_statuses,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (  # noqa: E402
    plan,
    topology,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import (  # noqa: E402
    fleet_of,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.orchestrator import (  # noqa: E402
    Hooks,
    Orchestrator,
    Settings,
)

GA, LA, CLIENT = "global_aggregator", "local_aggregator", "client"
WARMUP = 1  # global rounds left out: connecting, warm-up, torch's first calls
DIGITS = {"task": "", "dataset": "digits", "batch_size": 32, "learning_rate": 0.05}
TIMEOUT_S = 1800.0


def uss_mb(pid: int) -> float:
    """Memory only this process holds (MB)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fleet(ro.Processes):
    """Processes by name, so each one's CPU and memory can be read."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        super().__init__(root)
        self.pids: dict[str, int] = {}
        self.ports: set[int] = set()

    def add(self, role: str, name: str, **cfg: object) -> int:
        # A port free now may be handed out again before the process before binds it.
        port = ro.free_port()
        while port in self.ports:
            port = ro.free_port()
        self.ports.add(port)
        self.service(role, name, port=port, **cfg)
        self.pids[name] = self.procs[-1].pid
        return port

    def pool(self, name: str, parents: list[int], partition_base: int = 0,
             **cfg: object) -> int:
        """One process of len(parents) virtual clients: client i under the aggregator on port
        parents[i], on partition partition_base + i of len(parents) (cfg's num_partitions
        1: all on the whole training set)."""
        whole = cfg.get("num_partitions") == 1
        members = [{"name": f"{name}-{i}", "partition_id": 0 if whole else partition_base + i,
                    "parent": f"127.0.0.1:{port}"} for i, port in enumerate(parents)]
        return self.add(CLIENT, name, virtual_clients=members,
                        **{"num_partitions": len(parents), **cfg})

    def usage(self) -> dict[str, tuple[float, float]]:
        """name -> (CPU seconds so far, USS MB now)."""
        return {n: (cpu_s(pid), uss_mb(pid)) for n, pid in self.pids.items()}


def member_training(pool_lines: list[dict]) -> dict[tuple[int, int], float]:
    """(global round, local round) -> the pool's summed training time in it."""
    out: dict[tuple[int, int], float] = {}
    for line in pool_lines:
        if line.get("type") == "train":
            key = (line["global_round"], line["local_round"])
            out[key] = out.get(key, 0.0) + float(line.get("train_time_s") or 0.0)
    return out


def steady(values: list[float]) -> float:
    return statistics.median(values[WARMUP:] if len(values) > WARMUP else values)


def measure(fleet: Fleet, ga_port: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per process: CPU seconds per steady global round and USS (MB) at the end."""
    ro.wait_status(ga_port, fleet, TIMEOUT_S, lambda s: s["global_round"] > WARMUP)
    before = fleet.usage()
    ro.wait_finished(ga_port, fleet, TIMEOUT_S)
    after = fleet.usage()
    steady_rounds = rounds - WARMUP
    return {n: {"cpu_s_per_round": (after[n][0] - before[n][0]) / steady_rounds,
                "uss_mb": after[n][1]} for n in after}


def pin(pid: int, cpus: set[int]) -> None:
    """Keep every thread of process `pid` on `cpus` (os.sched_setaffinity sets one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def pool_cpu_apart(fleet: Fleet) -> None:
    """The pool on one CPU, the GA and LA on the others, as on a fleet, where each client is
    a machine of its own. A pool's threads take turns under one GIL; left to float, they
    move between cores and share them with the LA: the pool's CPU a task was 5.2 ms floating
    against 3.4 ms pinned (300 clients), and the overhead at 1000 varied from 1.67 to 2.52 s
    over four runs floating against 1.72 to 1.82 s pinned. Steadier, not lower."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    pin(fleet.pids["v"], {cpus[0]})
    for name in ("ga", "la0"):
        pin(fleet.pids[name], set(cpus[1:]))


def clients_per_la(root: Path, n: int, rounds: int, apart: bool = True) -> dict:
    fleet = Fleet(root / f"clients_{n}")
    try:
        ga = fleet.add(GA, "ga", global_rounds=rounds, min_participants=1,
                       round_timeout_s=TIMEOUT_S, **DIGITS)
        la = fleet.add(LA, "la0", parent=f"127.0.0.1:{ga}", local_rounds=1, min_participants=n,
                       round_timeout_s=TIMEOUT_S, **DIGITS)
        fleet.pool("v", [la] * n, **DIGITS)
        if apart:
            # Once round 1 is on, every thread the pool and the LA start from then on are
            # started by threads pinned here.
            ro.wait_status(ga, fleet, TIMEOUT_S, lambda s: s["global_round"] >= 1)
            pool_cpu_apart(fleet)
        used = measure(fleet, ga, rounds)
        la_lines = ro.read_results(fleet.root / "la0" / "results.jsonl")
        trained = member_training(ro.read_results(fleet.root / "v" / "results.jsonl"))
        over = [x["wall_time_s"] - trained.get((x["global_round"], x["local_round"]), 0.0)
                for x in la_lines if "phase" not in x and x.get("local_round")]
        return {"overhead_s": steady(over), "usage": used}
    finally:
        fleet.stop()


def las_per_ga(root: Path, m: int, rounds: int) -> dict:
    fleet = Fleet(root / f"las_{m}")
    task = {**ro.TRAINING, "learning_rate": 0.01}
    try:
        ga = fleet.add(GA, "ga", global_rounds=rounds, min_participants=m,
                       round_timeout_s=TIMEOUT_S, **task)
        las = [fleet.add(LA, f"la{j}", parent=f"127.0.0.1:{ga}", local_rounds=1,
                         min_participants=1, round_timeout_s=TIMEOUT_S, **task)
               for j in range(m)]
        # Each trains on the task's whole few images (16): cut 50 ways, some would get none.
        fleet.pool("v", las, num_partitions=1, **task)
        used = measure(fleet, ga, rounds)
        ga_lines = ro.read_results(fleet.root / "ga" / "results.jsonl")
        trained = member_training(ro.read_results(fleet.root / "v" / "results.jsonl"))
        by_round: dict[int, float] = {}
        for (g, _), t in trained.items():
            by_round[g] = by_round.get(g, 0.0) + t
        over = [x["wall_time_s"] - by_round.get(x["global_round"], 0.0) for x in ga_lines
                if "phase" not in x and "wall_time_s" in x]
        return {"overhead_s": steady(over), "usage": used}
    finally:
        fleet.stop()


def inventory(n_clients: int, n_las: int, ports: dict[str, int] | None = None,
              pools: int = 0) -> tuple[dict, dict]:
    """hostvars and groups of a local pipeline: GA, LAs la0.., and n_clients client hosts c0..
    (each at cost 1 to la0, 2 to the others), or ``pools`` hosts p0.. sharing n_clients virtual
    clients (pool i at cost 1 to la<i mod n_las>, 2 to the others)."""
    ports = ports or {}
    common = {"hfl_pipeline": "scale", "ansible_connection": "local", "hfl_dataset": "digits"}
    hosts = {"ga": {**common, "hfl_role": GA, "hfl_port": ports.get("ga", 20000)}}
    las = [f"la{j}" for j in range(n_las)]
    for j, la in enumerate(las):
        hosts[la] = {**common, "hfl_role": LA, "hfl_port": ports.get(la, 20001 + j)}
    clients = [f"p{i}" for i in range(pools)] if pools else [f"c{i}" for i in range(n_clients)]
    for i, c in enumerate(clients):
        near = las[i % n_las] if pools else las[0]
        hosts[c] = {**common, "hfl_role": CLIENT, "hfl_port": ports.get(c, 21000 + i),
                    "hfl_link_cost": {la: (1 if la == near else 2) for la in las}}
        if pools:
            hosts[c]["hfl_virtual_clients"] = n_clients // pools
    groups = {"cloud": ["ga"], "fog": las, "edge": clients}
    groups["hfl_cluster"] = ["ga", *las, *clients]
    return hosts, groups


def orchestrator_at(root: Path, n: int) -> dict:
    """Observe + decide for GA + 2 LAs + two pools of n/2, each under the LA it is nearer."""
    fleet = Fleet(root / f"orchestrator_{n}")
    try:
        ga = fleet.add(GA, "ga", global_rounds=1000, min_participants=1,
                       round_timeout_s=30, **DIGITS)
        la0, la1 = (fleet.add(LA, f"la{j}", parent=f"127.0.0.1:{ga}", min_participants=1,
                              round_timeout_s=30, **DIGITS) for j in range(2))
        ports = {"ga": ga, "la0": la0, "la1": la1}
        for i, la in enumerate((la0, la1)):
            ports[f"p{i}"] = fleet.pool(f"p{i}", [la] * (n // 2), partition_base=i * (n // 2),
                                        num_partitions=n, **DIGITS)
        topo = topology.build(*inventory(n, 2, ports, pools=2))
        urls = [{"name": s, "url": f"http://127.0.0.1:{p}/status"} for s, p in ports.items()]
        # Wait until every virtual client has trained once, so /status is a full one.
        ro.wait_status(ga, fleet, TIMEOUT_S, lambda s: s["global_round"] > 2)
        orch = Orchestrator(settings=Settings(config_model="min_comm_cost", verify=False,
                                              stall_window=0),
                            hooks=Hooks(*(lambda *a: None,) * 6),
                            assignment=plan.default_assignment(topo))

        def iteration() -> tuple[float, float, object]:
            began = time.perf_counter()
            fleet_now = fleet_of(topo)
            statuses = fetch_all(urls, 10.0)
            for pool, members in topo.pools.items():
                statuses.update(virtual_client_statuses(pool, statuses.pop(pool),
                                                        [m.name for m in members]))
            rnd = orch.observe(fleet_now, statuses)
            observed = time.perf_counter()
            decision = orch.decide(rnd)
            return observed - began, time.perf_counter() - observed, decision

        up = [iteration() for _ in range(5)]
        la1_process = fleet.procs[2]
        la1_process.kill()
        la1_process.wait()
        down = [iteration() for _ in range(orch.settings.failure_threshold)]
        moved = down[-1][2]
        return {"observe_s": statistics.median(x[0] for x in up),
                "decide_s": statistics.median(x[1] for x in up),
                "decision_up": type(up[-1][2]).__name__,
                "observe_s_la_dead": down[-1][0], "decide_s_la_dead": down[-1][1],
                "decision_la_dead": type(moved).__name__,
                "moved": len(getattr(moved, "moves", None) or {})}
    finally:
        fleet.stop()


def validate_and_plan(root: Path, n: int) -> dict:
    hosts, groups = inventory(n, 10)
    began = time.perf_counter()
    topo = topology.build(hosts, groups)
    built = time.perf_counter()
    plan.make_plan(topo)
    planned = time.perf_counter()
    folder = root / f"inventory_{n}"
    folder.mkdir()
    doc = {"hfl_cluster": {"children": {
        tier: {"hosts": {h: {k: v for k, v in hosts[h].items() if k != "ansible_connection"}
                         for h in groups[tier]}} for tier in ("cloud", "fog", "edge")},
        "vars": {"ansible_connection": "local", "hfl_state_dir": str(root / "controller")}}}
    (folder / "hosts.yml").write_text(json.dumps(doc))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    started = time.perf_counter()
    run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                          str(folder / "hosts.yml"), str(ROOT / "playbooks" / "plan.yml")],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"plan.yml on {n} hosts failed:\n{run.stdout[-3000:]}")
    return {"validate_s": built - began, "plan_s": planned - built,
            "plan_yml_s": time.perf_counter() - started}


def plot(path: Path, per_la: dict, per_ga: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    ns = sorted(per_la)
    axes[0].plot(ns, [per_la[n]["overhead_s"] for n in ns], "o-", label="per local round")
    axes[0].axhline(2.0, color="grey", ls="--", label="target 2 s at 1000")
    axes[0].set(xscale="log", xlabel="clients under one LA (virtual, digits)",
                ylabel="framework overhead (s)", title="Clients per LA")
    ms = sorted(per_ga)
    axes[1].plot(ms, [per_ga[m]["overhead_s"] for m in ms], "o-", label="per global round")
    axes[1].axhline(1.0, color="grey", ls="--", label="target 1 s at 50")
    axes[1].set(xlabel="LAs under the GA (1M params)", ylabel="framework overhead (s)",
                title="LAs per GA")
    for name in ("ga", "la0", "v"):
        axes[2].plot(ns, [per_la[n]["usage"][name]["uss_mb"] for n in ns], "o-",
                     label={"v": "pool", "la0": "LA", "ga": "GA"}[name])
    axes[2].set(xscale="log", xlabel="clients under one LA", ylabel="USS (MB)",
                title="Memory not shared")
    for name in ("ga", "la0", "v"):
        axes[3].plot(ns, [per_la[n]["usage"][name]["cpu_s_per_round"] for n in ns], "o-",
                     label={"v": "pool (training included)", "la0": "LA", "ga": "GA"}[name])
    axes[3].set(xscale="log", yscale="log", xlabel="clients under one LA",
                ylabel="CPU seconds per global round", title="CPU")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller fleets, fewer rounds")
    parser.add_argument("--plot", type=Path, default=ROOT / ".tmp" / "bench" / "scale.png")
    args = parser.parse_args()
    clients = (10, 100) if args.quick else (10, 100, 1000)
    las = (2, 10) if args.quick else (2, 10, 50)
    rounds = 3 if args.quick else 4
    with tempfile.TemporaryDirectory(prefix="hfl-scale-") as tmp:
        root = Path(tmp)
        per_la = {}
        for n in clients:
            per_la[n] = clients_per_la(root, n, rounds)
            u = per_la[n]["usage"]
            print(f"{n:5d} clients under one LA: overhead {per_la[n]['overhead_s']:.3f} s per "
                  f"local round; CPU s/round GA {u['ga']['cpu_s_per_round']:.2f} LA "
                  f"{u['la0']['cpu_s_per_round']:.2f} pool {u['v']['cpu_s_per_round']:.2f}; "
                  f"USS MB GA {u['ga']['uss_mb']:.0f} LA {u['la0']['uss_mb']:.0f} pool "
                  f"{u['v']['uss_mb']:.0f}", flush=True)
        floating = clients_per_la(root / "floating", clients[-1], rounds, apart=False)
        print(f"{clients[-1]:5d} clients under one LA, the pool's threads free to move between "
              f"CPUs: overhead {floating['overhead_s']:.3f} s per local round; pool CPU "
              f"{floating['usage']['v']['cpu_s_per_round']:.2f} s/round", flush=True)
        per_ga = {}
        for m in las:
            per_ga[m] = las_per_ga(root, m, rounds)
            u = per_ga[m]["usage"]
            la_uss = statistics.mean(u[f"la{j}"]["uss_mb"] for j in range(m))
            print(f"{m:5d} LAs under the GA: overhead {per_ga[m]['overhead_s']:.3f} s per global "
                  f"round; GA CPU {u['ga']['cpu_s_per_round']:.2f} s/round, USS GA "
                  f"{u['ga']['uss_mb']:.0f} MB, mean LA {la_uss:.0f} MB", flush=True)
        orchestrated = orchestrator_at(root, clients[-1])
        print(f"orchestrator at {clients[-1]} clients: observe {orchestrated['observe_s']:.3f} s "
              f"+ decide {orchestrated['decide_s']:.3f} s; an LA dead: observe "
              f"{orchestrated['observe_s_la_dead']:.3f} s + decide "
              f"{orchestrated['decide_s_la_dead']:.3f} s -> "
              f"{orchestrated['decision_la_dead']} of {orchestrated['moved']}", flush=True)
        planned = validate_and_plan(root, clients[-1])
        print(f"inventory of {clients[-1]} client hosts: validate {planned['validate_s']:.3f} s "
              f"+ plan {planned['plan_s']:.3f} s; ansible-playbook plan.yml "
              f"{planned['plan_yml_s']:.1f} s", flush=True)
    plot(args.plot, per_la, per_ga)
    print(f"plot: {args.plot}")
    small, big = clients[0], clients[-1]
    per_client = ((per_la[big]["usage"]["v"]["uss_mb"] - per_la[small]["usage"]["v"]["uss_mb"])
                  / (big - small))
    out = {f"overhead_s_{n}_clients_per_la": round(per_la[n]["overhead_s"], 4) for n in clients}
    out[f"overhead_s_{clients[-1]}_clients_per_la_pool_floating"] = round(
        floating["overhead_s"], 4)
    out |= {f"overhead_s_{m}_las_per_ga": round(per_ga[m]["overhead_s"], 4) for m in las}
    for n in clients:
        for name, label in (("ga", "ga"), ("la0", "la"), ("v", "pool")):
            out[f"{label}_uss_mb_{n}_clients"] = round(per_la[n]["usage"][name]["uss_mb"], 1)
            out[f"{label}_cpu_s_per_round_{n}_clients"] = round(
                per_la[n]["usage"][name]["cpu_s_per_round"], 3)
    for m in las:
        out[f"ga_uss_mb_{m}_las"] = round(per_ga[m]["usage"]["ga"]["uss_mb"], 1)
        out[f"ga_cpu_s_per_round_{m}_las"] = round(per_ga[m]["usage"]["ga"]["cpu_s_per_round"], 3)
    out["mb_per_virtual_client"] = round(per_client, 3)
    out |= {f"orchestrator_{k}": (round(v, 4) if isinstance(v, float) else v)
            for k, v in orchestrated.items()}
    out |= {k: round(v, 3) for k, v in planned.items()}
    out["plot"] = str(args.plot)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
