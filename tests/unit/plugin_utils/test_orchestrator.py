"""The orchestration loop against a simulated pipeline (the injected observe/act callables).

The simulated world advances one global round per observation, counts bytes per link for the
assignment in force, and reports accuracy from a curve the test chooses.
"""

import math

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import policies
from ansible_collections.hfl.orchestration.plugins.plugin_utils.orchestrator import (
    Hooks,
    Orchestrator,
    Settings,
)

MB = 1_000_000


class World:
    """1 GA, 2 LAs, clients c1..c8; the reference experiment's link costs; 1 MB model."""

    def __init__(self, clients=8, global_rounds=40, acc=None, capacity=None, cost=None,
                 skewed=False):
        self.capacity = capacity or {}
        self.skewed = skewed  # odd clients (near la1) hold classes 0-1, even ones 2-3
        self.cost = cost or {}
        self.inventory = [f"c{i}" for i in range(1, clients + 1)]
        self.rounds = global_rounds
        self.round = 0
        self.last = global_rounds
        self.counters = {}
        self.assignment = {}
        self.dead = set()
        self.applied = []
        self.events = []
        self.acc = acc or (lambda r, a: min(0.95, 0.2 + 0.2 * math.log(r + 1)))
        self.now = 0.0

    def fleet(self):
        cost = {"la1": {"ga": 100}, "la2": {"ga": 100}}
        for c in self.inventory:
            i = int(c[1:])
            near, far = ("la1", "la2") if i % 2 else ("la2", "la1")
            cost[c] = self.cost.get(c, {near: 20, far: 60, "ga": 120})
        return policies.Fleet(ga="ga", las=["la1", "la2"], clients=list(self.inventory),
                              cost=cost, capacity=dict(self.capacity))

    def _train_one_round(self):
        las = set()
        for c, p in self.assignment.items():
            if c in self.dead or p in self.dead:
                continue
            self.counters[(c, p)] = self.counters.get((c, p), 0) + 2 * MB
            las.add(p)
        for la in las - {"ga"}:
            self.counters[(la, "ga")] = self.counters.get((la, "ga"), 0) + 2 * MB
        self.round += 1

    def observe(self, names):
        if self.round < min(self.last, self.rounds):
            self._train_one_round()
        out = {}
        for n in names:
            if n in self.dead or (n.startswith("c") and n not in self.assignment):
                out[n] = {"reachable": False}
                continue
            links = {p: {"sent_bytes": b // 2, "received_bytes": b // 2}
                     for (c, p), b in self.counters.items() if c == n}
            out[n] = {"reachable": True, "links": links}
            if self.skewed and n.startswith("c"):
                a = 0 if int(n[1:]) % 2 else 2
                out[n]["histogram"] = {str(a): 50, str(a + 1): 50}
        finished = self.round >= min(self.last, self.rounds)
        # Like the GA: global_round is the round in progress until the pipeline has finished.
        out["ga"].update(global_round=self.round if finished else self.round + 1,
                         state="finished" if finished else "training",
                         last_metrics={"accuracy": self.acc(self.round, self.assignment),
                                       "loss": 1.0})
        return out

    def apply(self, assignment, left_out):
        self.applied.append((dict(assignment), list(left_out)))
        self.assignment = dict(assignment)

    def set_last_round(self, n):
        self.last = n

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s

    def hooks(self):
        return Hooks(read_fleet=self.fleet, observe=self.observe, apply=self.apply,
                     set_last_round=self.set_last_round, emit=self.events.append,
                     sleep=self.sleep, clock=self.clock)


def start(world, **settings):
    initial = policies.assign("min_comm_cost", world.fleet())
    world.assignment = dict(initial)
    s = Settings(global_rounds=world.rounds, poll_s=1.0, **settings)
    return Orchestrator(settings=s, hooks=world.hooks(), assignment=initial)


def join_c9_and_run_past_the_check(o, w):
    """Five iterations on the starting plan, c9 joins, then eight with the check on: enough
    for a window of 4 to close."""
    for _ in range(5):
        o.iteration += 1
        o.decide(o.observe())
    w.inventory.append("c9")
    for _ in range(8):
        o.iteration += 1
        rnd = o.observe()
        o.verify(rnd)
        o.decide(rnd)


def test_runs_to_the_end_of_the_pipeline_without_changing_a_good_plan():
    w = World(global_rounds=6)
    summary = start(w).run()
    assert summary["stop_reason"] == "pipeline finished"
    assert summary["global_round"] == 6 and w.applied == []
    assert w.events[0]["trigger"] == "attach" and w.events[0]["action"] == "none"


def test_a_client_added_to_the_inventory_is_placed_at_the_next_iteration():
    w = World(global_rounds=12)
    o = start(w, verify=False)
    for _ in range(3):
        o.iteration += 1
        o.decide(o.observe())
    w.inventory.append("c9")
    o.iteration += 1
    o.decide(o.observe())
    assert w.applied and w.applied[-1][0]["c9"] == "la1"
    ev = w.events[-1]
    assert ev["trigger"] == "join: c9" and "c9" not in ev["plan_before"]
    assert ev["plan_after"]["c9"] == "la1" and ev["change_cost"] > 0


def test_a_client_removed_from_the_inventory_leaves_the_plan_unchecked():
    w = World(global_rounds=20)
    o = start(w)
    o.iteration += 1
    o.decide(o.observe())
    w.inventory.remove("c8")
    o.iteration += 1
    o.decide(o.observe())
    assignment, _ = w.applied[-1]
    assert "c8" not in assignment and len(assignment) == 7
    assert w.events[-1]["trigger"] == "leave: c8" and o.pending is None


def test_a_dead_la_has_its_clients_moved_to_the_other_la():
    w = World(global_rounds=20)
    o = start(w)
    o.iteration += 1
    o.decide(o.observe())
    w.dead.add("la2")
    for _ in range(2):  # two consecutive misses make a failure
        o.iteration += 1
        o.decide(o.observe())
    assignment, left_out = w.applied[-1]
    assert set(assignment.values()) == {"la1"} and left_out == ["la2"]
    assert w.events[-1]["trigger"] == "failure: la2"
    assert o.pending is None  # a failure cannot be reverted, so it is not checked


def test_budget_stops_the_run_within_one_round_of_cost():
    w = World(global_rounds=100)
    per_round = 2 * (4 * 20 + 4 * 20 + 2 * 100)  # MB x weight, min_comm_cost plan
    summary = start(w, budget=10.5 * per_round).run()
    assert summary["stop_reason"].startswith("budget"), summary
    assert w.round < 100 and w.last == w.round  # the GA was told its last round
    assert summary["cost"]["total"] <= 10.5 * per_round + per_round
    assert summary["cost"]["total"] >= 9.5 * per_round  # and it does not stop far too early
    assert all("remaining" in e["cost"] for e in w.events)


def test_target_accuracy_stops_the_pipeline():
    w = World(global_rounds=100)
    summary = start(w, target_accuracy=0.6, objective="min_cost").run()
    assert "target accuracy" in summary["stop_reason"]
    assert w.last == w.round < 100 and summary["accuracy"] >= 0.6


def test_a_join_that_hurts_is_reverted_and_the_revert_is_booked():
    def acc(r, a):  # a label-skewed newcomer flattens learning
        base = 0.1 + 0.15 * math.log(r + 1)
        return base if "c9" not in a else 0.1 + 0.15 * math.log(6) + 0.001 * (r - 5)

    # c9 sits next to la1, which is full: taking it pushes c7 to la2, and a revert moves c7 back.
    w = World(global_rounds=40, acc=acc, capacity={"la1": 4, "la2": 5},
              cost={"c9": {"la1": 10, "la2": 60}})
    o = start(w, budget=60_000, window=4)
    join_c9_and_run_past_the_check(o, w)
    actions = [e["action"] for e in w.events]
    assert "revert" in actions, [e["reason"] for e in w.events]
    revert = next(e for e in w.events if e["action"] == "revert")
    assert "c9" not in revert["plan_after"] and revert["plan_after"]["c7"] == "la1"
    assert revert["change_cost"] > 0
    assert revert["forecast"]["accuracy_revert"] > revert["forecast"]["accuracy_keep"]
    assert o.ledger.booked == pytest.approx(
        sum(e.get("change_cost", 0) for e in w.events))  # join and revert both booked
    assert "c9" in o.summary()["left_out"]
    assert "c9" not in w.applied[-1][0] and "c9" in w.applied[-1][1]


def test_a_join_that_helps_is_kept():
    def acc(r, a):
        return 0.1 + (0.3 if "c9" in a else 0.1) * math.log(r + 1)

    w = World(global_rounds=40, acc=acc)
    o = start(w, budget=100_000, window=4)
    join_c9_and_run_past_the_check(o, w)
    keep = [e for e in w.events if e["action"] == "keep"]
    assert keep and "c9" in o.assignment and not any(e["action"] == "revert" for e in w.events)


def test_alternating_plans_are_stopped_and_reported():
    w = World(global_rounds=100)
    o = start(w)
    o.iteration += 1
    o.decide(o.observe())
    for flap in range(3):
        if flap % 2 == 0:
            w.dead.add("la2")
        else:
            w.dead.discard("la2")
        for _ in range(2):
            o.iteration += 1
            o.decide(o.observe())
            if o.stop_reason:
                break
    assert o.stop_reason and o.stop_reason.startswith("oscillation")
    assert w.events[-1]["action"] == "stop"
    assert len(w.applied) == 2  # the third alternation was not applied


def test_loop_bounds_end_the_run():
    w = World(global_rounds=1000)
    assert start(w, max_iterations=5).run()["stop_reason"] == "iteration bound 5 reached"
    w = World(global_rounds=1000)
    summary = start(w, max_wall_s=3.0).run()
    assert summary["stop_reason"].startswith("wall-time bound") and summary["iterations"] == 3


def test_check_mode_previews_without_applying():
    w = World(global_rounds=10)
    o = start(w, config_model="min_kld")
    w.inventory.append("c9")
    out = o.preview()
    assert out["changed"] and "c9" in out["assignment"]
    assert w.applied == [] and w.events[-1]["action"] == "preview"


def test_stall_tries_the_other_grouping_once_and_reverts_it_when_no_better():
    w = World(global_rounds=60, acc=lambda r, a: 0.5, skewed=True)
    o = start(w, stall_window=3, window=3)
    for _ in range(20):
        o.iteration += 1
        rnd = o.observe()
        o.verify(rnd)
        o.decide(rnd)
    tried = [e for e in w.events if e["trigger"].startswith("stall") and e["action"] == "apply"]
    assert len(tried) == 1 and tried[0]["config_model"] == "min_kld"
    revert = [e for e in w.events if e["action"] == "revert"]
    assert len(revert) == 1 and "speculative change not better" in revert[0]["reason"]
    assert o.assignment == policies.assign("min_comm_cost", w.fleet())
    again = [e for e in w.events if "tried before" in e["reason"]]
    assert again and o.stop_reason is None  # no oscillation: the loop keeps watching


def test_status_histograms_feed_min_kld():
    w = World(global_rounds=10)
    o = start(w, config_model="min_kld")
    o.observe()
    o._statuses["c1"]["histogram"] = {"0": 5, "3": 7}
    fleet = o.live_fleet()
    assert fleet.histograms["c1"] == [5, 0, 0, 7]
    assert set(policies.assign("min_kld", fleet)) == set(w.inventory)

