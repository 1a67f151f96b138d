# Copyright: hfl.orchestration developers; Apache-2.0
"""The reconfiguration loop: observe -> decide -> act -> verify, as plain Python.

Everything that touches the world is an injected callable (`Hooks`), so the loop is unit-tested
with fakes and the action plugin only wires Ansible in. One iteration:

1. observe: re-read the inventory (`read_fleet`), fetch every service's /status (`observe`),
   book the traffic growth (cost.Ledger), record the GA's accuracy per global round;
2. stop?   pipeline finished, target accuracy reached, budget spent (the GA is told its last
           round in advance, so a slow loop cannot overspend), iteration or wall-time bound;
3. verify: a pending change whose window is over is kept or reverted (reconfiguration_check);
4. decide: on a trigger (join, leave, failure, recovery, stall) the configuration model computes
           an assignment for the live fleet; a different one is applied (`apply`), its change
           cost booked, and a costlier or speculative change is scheduled for verification.
Every decision is one event (`emit`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    cost,
    policies,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    reconfiguration_check as check,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import (
    completed_round,
    histogram_list,
)


@dataclass
class Settings:
    config_model: str = "min_comm_cost"
    objective: str = "max_accuracy"
    budget: float | None = None
    target_accuracy: float | None = None
    global_rounds: int | None = None
    local_rounds: int = 1
    verify: bool = True  # run the reconfiguration check
    window: int = 5
    stall_window: int = 5
    failure_threshold: int = 2
    poll_s: float = 2.0
    max_iterations: int = 100_000
    max_wall_s: float = 3600.0


@dataclass
class Hooks:
    read_fleet: Callable[[], policies.Fleet]  # the inventory now (no histograms)
    observe: Callable[[list[str]], dict[str, dict]]  # name -> /status (+ reachable: bool)
    apply: Callable[[dict[str, str], list[str]], None]  # assignment, hosts left out
    set_last_round: Callable[[int], None]  # tell the GA the last global round to run
    emit: Callable[[dict], None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic


@dataclass
class Orchestrator:
    settings: Settings
    hooks: Hooks
    assignment: dict[str, str]  # the running plan's assignment
    excluded: set[str] = field(default_factory=set)  # clients a revert left out
    failed: set[str] = field(default_factory=set)
    ledger: cost.Ledger = field(default_factory=cost.Ledger)
    accuracy: dict[int, float] = field(default_factory=dict)
    loss: dict[int, float] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)
    pending: check.Pending | None = None
    exchange_mb: float | None = None  # one model down + one update up, measured
    deferred_units: float = 0.0  # change costs booked before exchange_mb was known
    stop_reason: str | None = None
    last_round_sent: int | None = None
    config_model: str = ""
    iteration: int = 0
    _misses: dict[str, int] = field(default_factory=dict)
    _members: set[str] | None = None
    _mark: tuple[int, float] | None = None  # (round, measured cost) at the last round change
    _stall_after: int = 0
    _stopping: bool = False
    _fleet: policies.Fleet | None = None
    _statuses: dict[str, dict] = field(default_factory=dict)
    _weights: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        self.config_model = self.config_model or self.settings.config_model
        self.history.append(dict(self.assignment))

    # --- observe ---------------------------------------------------------------------------

    def observe(self) -> int:
        fleet = self.hooks.read_fleet()
        names = sorted({fleet.ga, *fleet.las, *fleet.clients, *self.assignment,
                        *self.assignment.values()})
        self._statuses = self.hooks.observe(names)
        self._fleet = fleet
        # Weights of hosts that left the inventory are still needed to price the old plan.
        self._weights = {**self._weights, **fleet.cost}
        rnd = completed_round(self._statuses.get(fleet.ga))
        metrics = (self._statuses.get(fleet.ga) or {}).get("last_metrics") or {}
        if rnd > 0 and metrics.get("accuracy") is not None:
            self.accuracy[rnd] = float(metrics["accuracy"])
            if metrics.get("loss") is not None:
                self.loss[rnd] = float(metrics["loss"])
        self.ledger.observe(self._statuses, self._weights)
        self._calibrate(rnd, fleet)
        return rnd

    def _calibrate(self, rnd: int, fleet: policies.Fleet) -> None:
        """Learn the MB of one model exchange from the measured cost of the last round(s)."""
        if self._mark is None or rnd < self._mark[0]:
            self._mark = (rnd, self.ledger.measured)
            return
        r0, m0 = self._mark
        if rnd == r0:
            return
        unit = cost.round_cost(self.assignment, self._weights, fleet.ga,
                               self.settings.local_rounds, 1.0)
        if unit > 0:
            self.exchange_mb = (self.ledger.measured - m0) / (rnd - r0) / unit
            if self.deferred_units:
                self.ledger.book(self.deferred_units * self.exchange_mb)
                self.deferred_units = 0.0
        self._mark = (rnd, self.ledger.measured)

    def per_round(self, assignment: dict[str, str]) -> float | None:
        """Expected cost of one global round under `assignment` (None until measured)."""
        if self.exchange_mb is None:
            return None
        f = self._fleet
        return cost.round_cost(assignment, self._weights, f.ga, self.settings.local_rounds,
                               self.exchange_mb)

    def costs(self) -> dict:
        s = self.settings
        out = {"total": self.ledger.total, "measured": self.ledger.measured,
               "booked": self.ledger.booked, "per_round": self.per_round(self.assignment),
               "budget": s.budget}
        out["remaining"] = None if s.budget is None else s.budget - self.ledger.total
        return out

    # --- decide ----------------------------------------------------------------------------

    def live_fleet(self) -> policies.Fleet:
        f = self._fleet
        hist = {c: histogram_list(st["histogram"]) for c, st in self._statuses.items()
                if st.get("histogram") and c in f.clients}
        return policies.Fleet(
            ga=f.ga, las=[la for la in f.las if la not in self.failed],
            clients=[c for c in f.clients if c not in self.excluded and c not in self.failed],
            cost=f.cost, capacity=f.capacity, histograms=hist, pins=f.pins)

    def left_out(self) -> list[str]:
        f = self._fleet
        return sorted((self.excluded | self.failed) & {*f.las, *f.clients})

    def _triggers(self, rnd: int) -> list[str]:
        f = self._fleet
        members = {*f.las, *f.clients}
        out = []
        if self._members is None:
            out.append("attach")
        else:
            joined, left = policies.membership(self._members, members)
            out += [f"join: {n}" for n in joined] + [f"leave: {n}" for n in left]
            self.excluded &= members
        self._members = members
        placed = {f.ga, *self.assignment, *self.assignment.values()} - self.failed
        watched = {n: st for n, st in self._statuses.items() if n in placed or n in self.failed}
        down = set(policies.failed(watched, self._misses, self.settings.failure_threshold))
        for n in sorted(down - self.failed):
            out.append(f"failure: {n}")
        for n in sorted(self.failed - down):
            if self._statuses.get(n, {}).get("reachable"):
                out.append(f"recovery: {n}")
        self.failed = (self.failed | down) - {n for n in self.failed
                                              if self._statuses.get(n, {}).get("reachable")}
        self.failed.discard(f.ga)  # the GA is re-placed, never planned around
        if self.pending is None and rnd >= self._stall_after:
            rounds = sorted(self.accuracy)
            why = policies.stall([self.accuracy[r] for r in rounds],
                                 [self.loss[r] for r in rounds if r in self.loss],
                                 self.settings.stall_window)
            if why:
                out.append(f"stall: {why}")
                self._stall_after = rnd + self.settings.stall_window
        return out

    def decide(self, rnd: int) -> None:
        triggers = self._triggers(rnd)
        if not triggers:
            return
        ga_failed = any(t == f"failure: {self._fleet.ga}" for t in triggers)
        stalled = any(t.startswith("stall") for t in triggers)
        config_model = (policies.stall_alternative(self.config_model) if stalled
                        else self.config_model)
        try:
            after = policies.assign(config_model, self.live_fleet())
        except policies.PolicyError as e:
            self.event("; ".join(triggers), "none", f"no valid plan: {e}", rnd)
            return
        if stalled and after in self.history:
            # A stall is an experiment: one that was run (kept or reverted) is not run again,
            # which is also what keeps stalls from alternating two plans forever.
            self.event("; ".join(triggers), "none", f"{config_model}'s plan was tried before; "
                       "not again", rnd)
            return
        if after == self.assignment and not ga_failed:
            self.event("; ".join(triggers), "none", "the configuration model keeps the plan", rnd)
            return
        structural = any(t.split(":")[0] in ("leave", "failure") for t in triggers)
        # A join can be undone (the newcomer is left out again); a leave or failure cannot.
        revertible = not structural and set(self.assignment) <= set(after)
        self.change(after, "; ".join(triggers), rnd, config_model=config_model,
                    revertible=revertible,
                    speculative=stalled)

    # --- act -------------------------------------------------------------------------------

    def change(self, after, trigger, rnd, config_model, revertible, speculative=False, reason="",
               forecast=None, action="apply") -> bool:
        before = dict(self.assignment)
        if (len(self.history) >= 3 and after == self.history[-2]
                and self.history[-1] == self.history[-3]):
            self.stop_reason = ("oscillation: the same two plans alternate; keeping "
                                f"{self._short(before)}")
            self.event(trigger, "stop", self.stop_reason, rnd, after=after)
            return False
        f = self._fleet
        units = cost.change_cost(before, after, self._weights, 1.0, f.ga)
        change = None if self.exchange_mb is None else units * self.exchange_mb
        old_round, new_round = self.per_round(before), self.per_round(after)
        try:
            self.hooks.apply(after, self.left_out())
        except Exception as e:  # noqa: BLE001 - any failure to place ends the loop, reported
            self.stop_reason = f"placement failed: {e}"
            self.event(trigger, "stop", self.stop_reason, rnd, after=after)
            return False
        if change is None:
            self.deferred_units += units
        else:
            self.ledger.book(change)
        # Placement takes a while and the pipeline trains on meanwhile: the change counts from
        # the round the GA is at once it is in place, not from the round that triggered it.
        applied = max(rnd, completed_round(self.hooks.observe([f.ga]).get(f.ga)))
        if after != before:
            self.history.append(dict(after))
        self.assignment = dict(after)
        self.config_model = config_model
        self._misses.clear()  # moved and new services get their start-up grace again
        unit_old = cost.round_cost(before, self._weights, f.ga, self.settings.local_rounds, 1.0)
        unit_new = cost.round_cost(after, self._weights, f.ga, self.settings.local_rounds, 1.0)
        if (self.settings.verify and revertible and applied > 0
                and check.needs_check(unit_old, unit_new, speculative)):
            xb = self.exchange_mb or 1.0
            self.pending = check.Pending(
                change_round=applied, before=before, after=dict(after), cost_before=unit_old * xb,
                cost_after=unit_new * xb,
                revert_cost=cost.change_cost(after, before, self._weights, xb, f.ga),
                window=self.settings.window, reason=trigger, speculative=speculative)
        why = reason or (f"{config_model}: {self._diff(before, after)}"
                         + ("; verify after " f"{self.settings.window} global rounds"
                            if self.pending and self.pending.after == after else ""))
        self.event(trigger, action, why, rnd, before=before, after=after, change_cost=change,
                   change_units=units, forecast=forecast, applied_at_round=applied,
                   per_round_before=old_round, per_round_after=new_round)
        return True

    def verify(self, rnd: int) -> None:
        p = self.pending
        if p is None:
            return
        if self.exchange_mb is not None:  # price the options in measured units now
            f = self._fleet
            lr = self.settings.local_rounds
            p.cost_before = cost.round_cost(p.before, self._weights, f.ga, lr, self.exchange_mb)
            p.cost_after = cost.round_cost(p.after, self._weights, f.ga, lr, self.exchange_mb)
            p.revert_cost = cost.change_cost(p.after, p.before, self._weights, self.exchange_mb,
                                             f.ga)
        remaining = self.costs()["remaining"]
        if not check.due(p, rnd, remaining):
            return
        s = self.settings
        v = check.evaluate(p, self.accuracy, rnd, remaining, s.objective, s.target_accuracy,
                           s.global_rounds)
        if v.action == "wait":
            return
        self.pending = None
        trigger = f"check of change at global round {p.change_round} ({p.reason})"
        if v.action == "keep":
            self.event(trigger, "keep", v.reason, rnd, forecast=v.forecast)
            return
        if p.after != self.assignment:
            self.event(trigger, "keep", "the plan changed again since; nothing to revert", rnd,
                       forecast=v.forecast)
            return
        self.excluded |= set(p.after) - set(p.before)
        self.change(p.before, trigger, rnd, config_model=self.config_model, revertible=False,
                    reason=f"revert: {v.reason}", forecast=v.forecast, action="revert")

    # --- stop ------------------------------------------------------------------------------

    def should_stop(self, rnd: int) -> bool:
        s = self.settings
        ga = self._statuses.get(self._fleet.ga) or {}
        if ga.get("state") == "finished":
            if self.stop_reason is None:
                bounded = self.last_round_sent is not None and rnd >= self.last_round_sent
                self.stop_reason = (f"budget: spent {self.ledger.total:.4g} of {s.budget:.4g}; "
                                    f"the GA was told to stop after global round {rnd}"
                                    if bounded else "pipeline finished")
            self.event("stop condition", "stop", self.stop_reason, rnd)
            return True
        if self._stopping:
            return False  # told the GA to stop: wait for it to finish its last round
        acc = self.accuracy.get(rnd)
        if s.target_accuracy is not None and acc is not None and acc >= s.target_accuracy:
            return self._stop(rnd, rnd, f"target accuracy {s.target_accuracy} reached "
                              f"({acc:.4f} at global round {rnd})")
        per_round = self.per_round(self.assignment)
        if s.budget is not None and per_round:
            remaining = s.budget - self.ledger.total
            last = rnd + max(0, math.floor(remaining / per_round))
            if last <= rnd:
                return self._stop(rnd, rnd, f"budget spent: {self.ledger.total:.4g} of "
                                  f"{s.budget:.4g}, a round costs {per_round:.4g}")
            lower = self.last_round_sent is None or last < self.last_round_sent
            if (s.global_rounds is None or last < s.global_rounds) and lower:
                # Told ahead, the GA stops on time even if this loop lags behind its rounds.
                # Only ever lowered: a GA that must be re-placed to learn it restarts once.
                self.hooks.set_last_round(last)
                self.last_round_sent = last
                self.event("budget", "bound", f"the GA stops after global round {last}: "
                           f"{remaining:.4g} left buys {last - rnd} round(s) of "
                           f"{per_round:.4g}", rnd)
        return False

    def _stop(self, rnd: int, last: int, reason: str) -> bool:
        self.hooks.set_last_round(last)
        self.last_round_sent = last
        self._stopping = True
        self.stop_reason = reason
        self.event("stop condition", "stop", reason, rnd)
        return False

    # --- loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        s, h = self.settings, self.hooks
        start = h.clock()
        while self.stop_reason is None or self._stopping:
            if self.iteration >= s.max_iterations:
                self.stop_reason = f"iteration bound {s.max_iterations} reached"
                break
            if h.clock() - start >= s.max_wall_s:
                self.stop_reason = f"wall-time bound {s.max_wall_s:g} s reached"
                break
            self.iteration += 1
            rnd = self.observe()
            if self.should_stop(rnd):
                break
            if not self._stopping:
                self.verify(rnd)
                if self.stop_reason is None:
                    self.decide(rnd)
                if self.stop_reason is not None:
                    break
            h.sleep(s.poll_s)
        return self.summary()

    def preview(self) -> dict:
        """Check mode: the plan the configuration model would apply now; nothing changes."""
        rnd = self.observe()
        after = policies.assign(self.config_model, self.live_fleet())
        self.event("check mode", "preview",
                   f"{self.config_model}: {self._diff(self.assignment, after)}", rnd, after=after)
        return {"assignment": after, "changed": after != self.assignment}

    def summary(self) -> dict:
        rounds = sorted(self.accuracy)
        return {
            "stop_reason": self.stop_reason,
            "iterations": self.iteration,
            "global_round": rounds[-1] if rounds else 0,
            "accuracy": self.accuracy[rounds[-1]] if rounds else None,
            "cost": self.costs(),
            "assignment": self.assignment,
            "left_out": sorted(self.excluded | self.failed),
            "reconfigurations": len(self.history) - 1,
        }

    # --- events ----------------------------------------------------------------------------

    def event(self, trigger, action, reason, rnd, before=None, after=None, **extra) -> None:
        ev = {"iteration": self.iteration, "global_round": rnd, "trigger": trigger,
              "action": action, "reason": reason, "config_model": self.config_model,
              "plan_before": before if before is not None else dict(self.assignment),
              "plan_after": after if after is not None else dict(self.assignment),
              "cost": self.costs(), "accuracy": self.accuracy.get(rnd)}
        ev.update({k: v for k, v in extra.items() if v is not None})
        self.hooks.emit(ev)

    @staticmethod
    def _diff(before: dict, after: dict) -> str:
        moved = [f"{c}: {before.get(c, '-')} -> {p}" for c, p in sorted(after.items())
                 if before.get(c) != p]
        gone = [f"{c}: {before[c]} -> -" for c in sorted(set(before) - set(after))]
        return ", ".join(moved + gone) or "no change"

    @staticmethod
    def _short(a: dict) -> str:
        return ", ".join(f"{c}->{p}" for c, p in sorted(a.items()))
