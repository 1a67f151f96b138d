# Copyright: hfl.orchestration developers; Apache-2.0
"""The reconfiguration loop: observe -> stop? -> verify -> decide, as plain Python.

Every step returns a decision, a plain value (the frozen dataclasses below); `Orchestrator.run`
alone talks to the world, through injected callables (`Hooks`): it reads the inventory and every
service's /status, carries each decision out (places an assignment, tells the GA its last round)
and writes the decision's event. So the steps are unit-tested on the decisions they return, the
loop with fakes, and the action plugin only wires Ansible in; Flower's Strategy works the same
way (configure_train returns messages, only its loop talks to the grid). One iteration:

1. observe: the inventory (`read_fleet`) and every service's /status (`observe`) are taken in:
            the traffic growth booked (cost.Ledger), the GA's accuracy per global round recorded;
2. stop?    `Stop` when the pipeline finished; `StopAt` when the target accuracy is reached or
            the budget is spent, `Bound` when the budget buys fewer rounds than the GA would run
            (the GA is told its last round in advance, so a slow loop cannot overspend; the
            budget is the inventory's at each iteration, so an edit raises or lowers it);
3. verify:  a pending change whose window is over is kept (`Keep`) or reverted (a `Reassign`)
            (reconfiguration_check);
4. decide:  on a trigger (join, leave, failure, recovery, stall) the configuration model computes
            an assignment for the live fleet: a different one is a `Reassign`, else `NoChange`.
A `Reassign` that would bring back the plan of two changes ago for the second time is a `Stop`
(oscillation) instead. A `Reassign` is first told to the running services (`reroute`: moved
clients switch parent live, aggregators stop waiting for children that failed or left), then
placed (`apply`), which makes it last. Once placed its change cost is booked and a
costlier or speculative change is scheduled for verification. Every decision is one event
(`emit`); the loop also ends at its iteration or wall-time bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

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


@dataclass(frozen=True)
class NoChange:
    """Triggers were seen and the plan stays; `reason` says why."""

    trigger: str
    reason: str
    action: ClassVar[str] = "none"


@dataclass(frozen=True)
class Keep:
    """The check keeps the change it verified."""

    trigger: str
    reason: str
    forecast: dict
    action: ClassVar[str] = "keep"


@dataclass(frozen=True)
class Reassign:
    """Place `assignment` with the hosts `left_out` limited away: a change (action "apply") or
    the check's revert of one (action "revert")."""

    assignment: dict[str, str]
    left_out: list[str]
    trigger: str
    config_model: str  # the one that made `assignment`: a stall's experiment uses the other
    revertible: bool  # a join can be undone, so it may be checked; a leave or failure cannot
    speculative: bool = False  # a stall's experiment: the check reverts it unless it is better
    excluded: frozenset[str] = frozenset()  # clients left out from now on (a revert's newcomers)
    reason: str = ""  # a revert's verdict; a change's event says what moved instead
    forecast: dict | None = None
    action: str = "apply"
    # What can be told to running services at once, before placement makes it last:
    moves: dict[str, str] = field(default_factory=dict)  # running client -> its new parent
    gone: dict[str, list[str]] = field(default_factory=dict)  # aggregator -> children gone


@dataclass(frozen=True)
class Stop:
    """The loop ends now; `plan_after` is the plan it did not place, if any."""

    trigger: str
    reason: str
    plan_after: dict[str, str] | None = None
    action: ClassVar[str] = "stop"


@dataclass(frozen=True)
class LastRound:
    """The GA is told to run no global round after `last_round`."""

    last_round: int
    reason: str


@dataclass(frozen=True)
class StopAt(LastRound):
    """The target is reached or the budget spent: the loop watches the GA finish."""

    trigger: ClassVar[str] = "stop condition"
    action: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Bound(LastRound):
    """The budget buys rounds up to `last_round`; the loop goes on."""

    trigger: ClassVar[str] = "budget"
    action: ClassVar[str] = "bound"


Decision = NoChange | Keep | Reassign | Stop | StopAt | Bound


def last_round_bought(rnd: int, remaining: float, per_round: float) -> int:
    """The last global round `remaining` budget pays for after round `rnd`, rounds costing
    `per_round` each (never before `rnd`)."""
    return rnd + max(0, math.floor(remaining / per_round))


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
    stall_window: int = 5  # 0: no stall experiments
    failure_threshold: int = 2
    poll_s: float = 2.0
    max_iterations: int = 100_000
    max_wall_s: float = 3600.0


@dataclass
class Hooks:
    read_fleet: Callable[[], policies.Fleet]  # the inventory now (no histograms)
    observe: Callable[[list[str]], dict[str, dict]]  # name -> /status (+ reachable: bool)
    # A Reassign's moves and gone told to the running services (best effort, in seconds), so
    # rounds neither wait out their deadline for a dead child nor for placement to move one.
    reroute: Callable[[dict[str, str], dict[str, list[str]]], None]
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
    _misses: dict[str, float] = field(default_factory=dict)
    _members: set[str] | None = None
    _mark: tuple[int, float] | None = None  # (round, measured cost) first seen under the plan
    _price_span: int = 0  # rounds the estimate of exchange_mb was measured over
    _stall_after: int = 0
    _stopping: bool = False
    _bound_budget: float | None = None  # the budget when the GA was last told its last round
    _fleet: policies.Fleet | None = None
    _statuses: dict[str, dict] = field(default_factory=dict)
    _weights: dict[str, dict[str, float]] = field(default_factory=dict)
    _looked: list[int] = field(default_factory=list)  # the GA's round at each look

    def __post_init__(self):
        self.config_model = self.config_model or self.settings.config_model
        self.history.append(dict(self.assignment))

    # --- observe ---------------------------------------------------------------------------

    def to_observe(self, fleet: policies.Fleet) -> list[str]:
        """The services whose /status to fetch: the inventory's, and the running plan's (a host
        that left the inventory may still be placed)."""
        return sorted({fleet.ga, *fleet.las, *fleet.clients, *self.assignment,
                       *self.assignment.values()})

    def observe(self, fleet: policies.Fleet, statuses: dict[str, dict]) -> int:
        """Take in the inventory now and the services' /status; the GA's completed rounds."""
        self._statuses = statuses
        self._fleet = fleet
        self.settings.budget = fleet.budget  # the inventory's, edits included
        # Weights of hosts that left the inventory are still needed to price the old plan.
        self._weights = {**self._weights, **fleet.cost}
        ga = self._statuses.get(fleet.ga) or {}
        rnd = completed_round(ga)
        metrics = ga.get("last_metrics") or {}
        # Every round completed since the last look (the GA's recent_metrics), not only the
        # last: the check's fit needs the rounds before a change, and polls (or a placement
        # that blocks the loop) can be slower than rounds.
        seen = [(r, acc, loss) for r, acc, loss in ga.get("recent_metrics") or [] if r <= rnd]
        if rnd > 0 and not seen:
            seen = [(rnd, metrics.get("accuracy"), metrics.get("loss"))]
        for r, acc, loss in seen:
            if acc is not None:
                self.accuracy[r] = float(acc)
                if loss is not None:
                    self.loss[r] = float(loss)
        if rnd in self.accuracy and (not self._looked or self._looked[-1] < rnd):
            self._looked.append(rnd)
        self.ledger.observe(self._statuses, self._weights)
        self._calibrate(rnd, fleet)
        return rnd

    def _calibrate(self, rnd: int, fleet: policies.Fleet) -> None:
        """Learn the MB of one model exchange from the cost measured since the first round
        seen under the running plan. Counters are read mid-round, so an estimate over n rounds
        is off by up to one round's traffic / n: the longer the span, the sharper."""
        if self._mark is None or rnd < self._mark[0]:
            # Attached to a pipeline already training: the counters hold every round so far,
            # so the first estimate spans them all. Later (a new plan, a GA that went back to
            # an older checkpoint) the span starts now.
            attach = self._mark is None and self.exchange_mb is None
            self._mark = (0, 0.0) if attach else (rnd, self.ledger.measured)
        r0, m0 = self._mark
        # /status is read mid-round, so a span of n rounds overestimates by up to 1/n: a span
        # replaces the estimate only when it is at least as long as the one behind it (a model
        # exchange is the same MB under any plan).
        if rnd - r0 <= 0 or rnd - r0 < self._price_span:
            return
        unit = cost.round_cost(self.assignment, self._weights, fleet.ga,
                               self.settings.local_rounds, 1.0)
        if unit > 0:
            self.exchange_mb = (self.ledger.measured - m0) / (rnd - r0) / unit
            self._price_span = rnd - r0
            if self.deferred_units:
                self.ledger.book(self.deferred_units * self.exchange_mb)
                self.deferred_units = 0.0

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

    # --- stop? -----------------------------------------------------------------------------

    def stop_condition(self, rnd: int) -> Stop | StopAt | Bound | None:
        """How the run ends: the GA finished, the target is reached or the budget spent; or
        how far the budget lets the GA go. None: on as before."""
        s = self.settings
        ga = self._statuses.get(self._fleet.ga) or {}
        if ga.get("state") == "finished":
            reason = self.stop_reason
            if reason is None:
                bounded = self.last_round_sent is not None and rnd >= self.last_round_sent
                reason = (f"budget: spent {self.ledger.total:.4g} of {s.budget:.4g}; "
                          f"the GA was told to stop after global round {rnd}"
                          if bounded else "pipeline finished")
            return Stop("stop condition", reason)
        if self._stopping:
            return None  # the GA was told to stop: wait for it to finish its last round
        acc = self.accuracy.get(rnd)
        if s.target_accuracy is not None and acc is not None and acc >= s.target_accuracy:
            return StopAt(rnd, f"target accuracy {s.target_accuracy} reached "
                          f"({acc:.4f} at global round {rnd})")
        per_round = self.per_round(self.assignment)
        if s.budget is None or not per_round:
            return self._unbound()
        remaining = s.budget - self.ledger.total
        last = last_round_bought(rnd, remaining, per_round)
        if last <= rnd:
            return StopAt(rnd, f"budget spent: {self.ledger.total:.4g} of "
                          f"{s.budget:.4g}, a round costs {per_round:.4g}")
        if s.global_rounds is not None and last >= s.global_rounds:
            return self._unbound()
        # Told ahead, the GA stops on time even if this loop lags behind its rounds. Lowered at
        # once as the estimate of a round's cost sharpens; raised when it buys two rounds more
        # (one would follow the estimate's noise) or the budget was edited.
        sent = self.last_round_sent
        edited = s.budget != self._bound_budget
        if sent is None or last < sent or last >= sent + 2 or (edited and last != sent):
            return Bound(last, f"the GA stops after global round {last}: {remaining:.4g} "
                         f"left buys {last - rnd} round(s) of {per_round:.4g}")
        return None

    def bound_before(self, d: Reassign, rnd: int) -> Bound | None:
        """The GA's last round lowered to what the budget buys once `d` is paid for and its
        rounds cost the new plan's price, before it is placed: the GA trains on meanwhile and
        could otherwise reach the older, later last round under a costlier plan. None when the
        budget does not bound the run or the bound sent already holds."""
        s, sent = self.settings, self.last_round_sent
        price = self.per_round(d.assignment)
        if s.budget is None or sent is None or not price:
            return None
        change = cost.change_cost(self.assignment, d.assignment, self._weights,
                                  self.exchange_mb, self._fleet.ga)
        remaining = s.budget - self.ledger.total - change
        last = last_round_bought(rnd, remaining, price)
        if last >= sent:
            return None
        return Bound(last, f"the GA stops after global round {last} under the new plan: "
                     f"{remaining:.4g} left after the change buys {last - rnd} round(s) of "
                     f"{price:.4g}")

    def _unbound(self) -> Bound | None:
        """The GA's own last round back, when an edit of the budget lifted the bound it was
        told (the budget was raised past it, or removed)."""
        s = self.settings
        sent = self.last_round_sent
        if sent is None or s.global_rounds is None or sent >= s.global_rounds:
            return None
        return Bound(s.global_rounds, f"the budget ({s.budget}) no longer bounds the run: the "
                     f"GA runs its {s.global_rounds} global rounds")

    # --- verify ----------------------------------------------------------------------------

    def verify(self, rnd: int) -> Keep | Reassign | Stop | None:
        """The check of the pending change once it is due: keep it, or go back (a Reassign
        with action "revert"). None while there is nothing to judge."""
        p = self.pending
        if p is None:
            return None
        if self.exchange_mb is not None:  # price the options in measured units now
            f = self._fleet
            lr = self.settings.local_rounds
            p.cost_before = cost.round_cost(p.before, self._weights, f.ga, lr, self.exchange_mb)
            p.cost_after = cost.round_cost(p.after, self._weights, f.ga, lr, self.exchange_mb)
            p.revert_cost = cost.change_cost(p.after, p.before, self._weights, self.exchange_mb,
                                             f.ga)
        remaining = self.costs()["remaining"]
        if not check.due(p, rnd, remaining):
            return None
        s = self.settings
        v = check.evaluate(p, self.accuracy, rnd, remaining, s.objective, s.target_accuracy,
                           s.global_rounds)
        if v.action == "wait":
            return None
        self.pending = None  # checked: whatever the verdict, this change is not checked again
        trigger = f"check of change at global round {p.change_round} ({p.reason})"
        if v.action == "keep":
            return Keep(trigger, v.reason, v.forecast)
        if p.after != self.assignment:
            return Keep(trigger, "the plan changed again since; nothing to revert", v.forecast)
        return self._reassign(p.before, trigger, self.config_model, revertible=False,
                              excluded=frozenset(set(p.after) - set(p.before)),
                              reason=f"revert: {v.reason}", forecast=v.forecast,
                              action="revert")

    # --- decide ----------------------------------------------------------------------------

    def live_fleet(self) -> policies.Fleet:
        f = self._fleet
        hist = {c: histogram_list(st["histogram"]) for c, st in self._statuses.items()
                if st.get("histogram") and c in f.clients}
        return policies.Fleet(
            ga=f.ga, las=[la for la in f.las if la not in self.failed],
            clients=[c for c in f.clients if c not in self.excluded and c not in self.failed],
            cost=f.cost, capacity=f.capacity, histograms=hist, pins=f.pins)

    def left_out(self, excluded: frozenset[str] = frozenset()) -> list[str]:
        """Hosts of the inventory that placement must leave alone (failed, or left out by a
        revert, `excluded` included)."""
        f = self._fleet
        return sorted((self.excluded | excluded | self.failed) & {*f.las, *f.clients})

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
        # A change of the fleet is planned by the running configuration model, never mixed
        # with a stall's experiment (which would regroup everyone around a newcomer); a stall
        # is judged once no other trigger is seen.
        if (not out and self.pending is None and self.settings.stall_window > 0
                and rnd >= self._stall_after):
            # Judged on the rounds seen at each look, not on every round (the check's fit
            # takes those): on fast rounds a window of 5 rounds is a second, and a saturated
            # pipeline would be regrouped as stalled every few seconds. So it is also judged
            # only on rounds this loop watched, never on a plateau from before it attached.
            rounds = self._looked
            why = policies.stall([self.accuracy[r] for r in rounds],
                                 [self.loss[r] for r in rounds if r in self.loss],
                                 self.settings.stall_window)
            if why:
                out.append(f"stall: {why}")
                self._stall_after = rnd + self.settings.stall_window
        return out

    def decide(self, rnd: int) -> Reassign | NoChange | Stop | None:
        """What the triggers seen now call for; None when there are none."""
        triggers = self._triggers(rnd)
        if not triggers:
            return None
        trigger = "; ".join(triggers)
        ga_failed = f"failure: {self._fleet.ga}" in triggers
        stalled = any(t.startswith("stall") for t in triggers)
        config_model = (policies.stall_alternative(self.config_model) if stalled
                        else self.config_model)
        try:
            after = policies.assign(config_model, self.live_fleet())
        except policies.PolicyError as e:
            return NoChange(trigger, f"no valid plan: {e}")
        if stalled and after in self.history:
            # A stall is an experiment: one that was run (kept or reverted) is not run again,
            # which is also what keeps stalls from alternating two plans forever.
            return NoChange(trigger, f"{config_model}'s plan was tried before; not again")
        if after == self.assignment and not ga_failed:
            return NoChange(trigger, "the configuration model keeps the plan")
        structural = any(t.split(":")[0] in ("leave", "failure") for t in triggers)
        # A join can be undone (the newcomer is left out again); a leave or failure cannot.
        revertible = not structural and set(self.assignment) <= set(after)
        return self._reassign(after, trigger, config_model, revertible=revertible,
                              speculative=stalled)

    def _reassign(self, after, trigger, config_model, excluded=frozenset(), **how
                  ) -> Reassign | Stop:
        """Go to `after`; a Stop instead when that would alternate two plans once more."""
        if (len(self.history) >= 3 and after == self.history[-2]
                and self.history[-1] == self.history[-3]):
            return Stop(trigger, "oscillation: the same two plans alternate; keeping "
                        f"{self._short(self.assignment)}", after)
        left_out = self.left_out(excluded)
        return Reassign(dict(after), left_out, trigger, config_model, excluded=excluded,
                        moves=self._moves(after, left_out), gone=self._gone(left_out), **how)

    def _moves(self, after: dict[str, str], left_out: list[str]) -> dict[str, str]:
        """Running clients whose parent `after` changes, with their new parent."""
        return {c: p for c, p in sorted(after.items())
                if c in self.assignment and self.assignment[c] != p and c not in left_out}

    def _gone(self, left_out: list[str]) -> dict[str, list[str]]:
        """Per live aggregator of the running plan, its children that failed, left the
        inventory or are left out now: its open round need not wait for them."""
        f = self._fleet
        members = {*f.las, *f.clients}
        las = {*f.las, *self.assignment.values()} - {f.ga}
        parents = {**self.assignment, **dict.fromkeys(las, f.ga)}
        out: dict[str, list[str]] = {}
        for child in sorted(parents):
            parent = parents[child]
            if parent in self.failed:
                continue
            if child in self.failed or child in left_out or child not in members:
                out.setdefault(parent, []).append(child)
        return out

    # --- after a decision was carried out ----------------------------------------------------

    def record(self, d: Decision, rnd: int, applied_at: int | None = None) -> dict:
        """Book a decision that was carried out (a Reassign placed, its GA at round
        `applied_at` by then); its event."""
        if isinstance(d, Reassign):
            return self._placed(d, rnd, applied_at)
        if isinstance(d, LastRound):
            self.last_round_sent = d.last_round
            self._bound_budget = self.settings.budget
        if isinstance(d, Stop | StopAt):
            self.stop_reason = d.reason
            self._stopping = isinstance(d, StopAt)
        return self.event(d.trigger, d.action, d.reason, rnd,
                          after=d.plan_after if isinstance(d, Stop) else None,
                          forecast=d.forecast if isinstance(d, Keep) else None,
                          last_round=d.last_round if isinstance(d, LastRound) else None)

    def _placed(self, d: Reassign, rnd: int, applied_at: int) -> dict:
        f = self._fleet
        before, after = dict(self.assignment), dict(d.assignment)
        units = cost.change_cost(before, after, self._weights, 1.0, f.ga)
        change = None if self.exchange_mb is None else units * self.exchange_mb
        old_round, new_round = self.per_round(before), self.per_round(after)
        if change is None:
            self.deferred_units += units
        else:
            self.ledger.book(change)
        if after != before:
            self.history.append(dict(after))
        self.assignment = after
        self.config_model = d.config_model
        self.excluded |= d.excluded
        self._misses.clear()  # moved and new services get their start-up grace again
        self._mark = None  # a round's traffic is measured afresh under the new plan
        unit_old = cost.round_cost(before, self._weights, f.ga, self.settings.local_rounds, 1.0)
        unit_new = cost.round_cost(after, self._weights, f.ga, self.settings.local_rounds, 1.0)
        if (self.settings.verify and d.revertible and applied_at > 0
                and check.needs_check(unit_old, unit_new, d.speculative)):
            xb = self.exchange_mb or 1.0
            self.pending = check.Pending(
                change_round=applied_at, before=before, after=dict(after),
                cost_before=unit_old * xb, cost_after=unit_new * xb,
                revert_cost=cost.change_cost(after, before, self._weights, xb, f.ga),
                window=self.settings.window, reason=d.trigger, speculative=d.speculative)
        why = d.reason or (f"{d.config_model}: {self._diff(before, after)}"
                           + (f"; verify after {self.settings.window} global rounds"
                              if self.pending and self.pending.after == after else ""))
        return self.event(d.trigger, d.action, why, rnd, before=before, after=after,
                          change_cost=change, change_units=units, forecast=d.forecast,
                          applied_at_round=applied_at, per_round_before=old_round,
                          per_round_after=new_round)

    # --- loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        """The loop; the steps decide, and only here are the hooks called."""
        s, h = self.settings, self.hooks
        start = h.clock()
        while True:
            if self.iteration >= s.max_iterations:
                self.stop_reason = f"iteration bound {s.max_iterations} reached"
                break
            if h.clock() - start >= s.max_wall_s:
                self.stop_reason = f"wall-time bound {s.max_wall_s:g} s reached"
                break
            self.iteration += 1
            fleet = h.read_fleet()
            rnd = self.observe(fleet, h.observe(self.to_observe(fleet)))
            # Each step decides on what the previous one's decision, carried out, left.
            for step in (self.stop_condition, self.verify, self.decide):
                d = step(rnd)
                applied_at = placed_in = None
                if isinstance(d, LastRound):
                    h.set_last_round(d.last_round)
                elif isinstance(d, Reassign):
                    began = h.clock()
                    lowered = self.bound_before(d, rnd)
                    if lowered is not None:
                        h.set_last_round(lowered.last_round)
                        h.emit(self.record(lowered, rnd))
                    if d.moves or d.gone:
                        h.reroute(d.moves, d.gone)
                    try:
                        h.apply(d.assignment, d.left_out)
                    except Exception as e:  # noqa: BLE001 - a failed placement ends the loop
                        d = Stop(d.trigger, f"placement failed: {e}", d.assignment)
                    else:
                        # Placement takes a while and the pipeline trains on meanwhile: the
                        # change counts from the round the GA is at once it is in place.
                        ga = completed_round(h.observe([fleet.ga]).get(fleet.ga))
                        applied_at = max(rnd, ga)
                        placed_in = round(h.clock() - began, 3)
                if d is not None:
                    event = self.record(d, rnd, applied_at)
                    if placed_in is not None:
                        event["placement_s"] = placed_in  # decided at ts - placement_s
                    h.emit(event)
                if self.stop_reason is not None:  # stopped, or the GA told to stop
                    break
            if self.stop_reason is not None and not self._stopping:
                break
            h.sleep(s.poll_s)
        return self.summary()

    def preview(self) -> dict:
        """Check mode: the plan the configuration model would apply now; nothing is placed.
        The check-mode counterpart of run(), and like it a caller of the hooks."""
        h = self.hooks
        fleet = h.read_fleet()
        rnd = self.observe(fleet, h.observe(self.to_observe(fleet)))
        after = policies.assign(self.config_model, self.live_fleet())
        h.emit(self.event("check mode", "preview",
                          f"{self.config_model}: {self._diff(self.assignment, after)}", rnd,
                          after=after))
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

    def event(self, trigger, action, reason, rnd, before=None, after=None, **extra) -> dict:
        ev = {"iteration": self.iteration, "global_round": rnd, "trigger": trigger,
              "action": action, "reason": reason, "config_model": self.config_model,
              "plan_before": before if before is not None else dict(self.assignment),
              "plan_after": after if after is not None else dict(self.assignment),
              "cost": self.costs(), "accuracy": self.accuracy.get(rnd)}
        # Why each service the trigger names as failed was: its last /status read's error.
        down = [t.removeprefix("failure: ") for t in str(trigger).split("; ")
                if t.startswith("failure: ")]
        if down:
            ev["unreachable"] = {n: (self._statuses.get(n) or {}).get("error") for n in down}
        ev.update({k: v for k, v in extra.items() if v is not None})
        return ev

    @staticmethod
    def _diff(before: dict, after: dict) -> str:
        moved = [f"{c}: {before.get(c, '-')} -> {p}" for c, p in sorted(after.items())
                 if before.get(c) != p]
        gone = [f"{c}: {before[c]} -> -" for c in sorted(set(before) - set(after))]
        return ", ".join(moved + gone) or "no change"

    @staticmethod
    def _short(a: dict) -> str:
        return ", ".join(f"{c}->{p}" for c, p in sorted(a.items()))
