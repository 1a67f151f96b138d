# Copyright: hfl.orchestration developers; Apache-2.0
"""Verify a reconfiguration W global rounds after it was made: keep it, or revert it.

After Cilic et al. 2025 (the reference's RVA), with its flaws fixed:
- the revert's change cost is booked by the caller (the verdict carries it);
- speculative changes (a stall's alternative grouping) are checked even when not costlier, and
  kept only if they forecast better by more than the noise;
- the forecast anchors both options at the current fitted accuracy (below) instead of
  extrapolating two unrelated curves, and a revert must win by more than the forecast's own
  uncertainty: the standard errors of the two slopes carried to the last round each option's
  budget buys. (The standard error of the level after the change, used before, is the wrong
  yardstick: the level is common to both options and cancels, while the standard error of a
  slope fitted to rounds 37-41 is twelve times one round's noise. Measured in
  bench/paper_scenarios.py, scenario 2a: rounds swinging by 0.1, a 0.014 margin, and a revert
  forecast 0.043 better although the kept arm ended 0.08 above the arm without the join.);
- a budget that runs out inside the window is handled: the check runs early if it can, and a
  change that can no longer be judged is kept (a revert then could not pay off).
- with fewer than two accuracy points before the change (the loop saw none while it placed the
  change) there is no old slope: the change is kept, a speculative one reverted. Taking the new
  slope for the old one, as before, credited a revert with what the change brought (measured in
  bench/paper_scenarios.py, scenario 2b: the join of the clients holding classes 8 and 9 lifted
  accuracy from 0.55 to 0.67 in 5 rounds, and the check reverted it for the one round more the
  revert's budget bought).

Accuracy model: acc(x) = a + b*ln(x + 1), x the *global* round. Why this form: FL test accuracy
rises fast and then with diminishing returns; the log has that shape with two parameters, which is
all five noisy points can support (a three-parameter saturating curve a - b*exp(-c*x) fitted
to five points swings wildly in c). Using the global round, not the rounds since the change,
keeps the diminishing returns of the whole run: round 11 is not treated like round 1.
Both options continue from the same model, so both forecasts start at the post-change fit's value
now; they differ in slope (b after the change for keep, b over the W rounds before it for revert)
and in how many rounds the remaining budget buys (revert pays its change cost first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MIN_MARGIN = 0.001


@dataclass
class Pending:
    """A change waiting for its check."""

    change_round: int  # last completed global round when the change was applied
    before: dict[str, str]  # assignment a revert goes back to
    after: dict[str, str]
    cost_before: float  # expected cost per global round, old and new plan
    cost_after: float
    revert_cost: float  # change cost a revert would book
    window: int = 5
    reason: str = ""
    speculative: bool = False  # a stall's experiment: it must prove itself, or it is reverted


@dataclass
class Verdict:
    action: str  # keep | revert | wait
    reason: str
    forecast: dict = field(default_factory=dict)


def needs_check(cost_before: float, cost_after: float, speculative: bool = False) -> bool:
    """A costlier change, or any speculative one, is verified later."""
    return speculative or cost_after > cost_before


def _log_rounds(xs: list[float]) -> np.ndarray:
    """The model's regressor: ln(x + 1) of each global round x."""
    return np.log(np.asarray(xs, float) + 1.0)


def fit_log(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares a, b of y = a + b*ln(x+1), and the residual standard deviation."""
    x = _log_rounds(xs)
    y = np.asarray(ys, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return float(y.mean()), 0.0, 0.0
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    dof = max(1, len(x) - 2)
    return float(a), float(b), float(math.sqrt((resid**2).sum() / dof))


def slope_se(xs: list[float], sd: float) -> float:
    """The standard error of fit_log's b, given its residual standard deviation `sd`."""
    x = _log_rounds(xs)
    sxx = float(((x - x.mean()) ** 2).sum())
    return sd / math.sqrt(sxx) if sxx > 0 else 0.0


def _rounds(budget: float, per_round: float) -> int:
    if budget <= 0:
        return 0
    return int(budget // per_round) if per_round > 0 else 10**9


def due(p: Pending, now: int, remaining_budget: float | None) -> bool:
    """Whether the check should run at global round `now`.

    At the end of the window, or early when the budget will end before the window does (a check
    after the budget is gone could not revert anything).
    """
    if now - p.change_round >= p.window:
        return True
    if remaining_budget is None:
        return False
    return now + _rounds(remaining_budget, p.cost_after) < p.change_round + p.window


def evaluate(
    p: Pending,
    series: dict[int, float],
    now: int,
    remaining_budget: float | None,
    objective: str = "max_accuracy",
    target_accuracy: float | None = None,
    max_round: int | None = None,
) -> Verdict:
    """Keep or revert `p`, given global-round accuracies `series` up to round `now`."""
    # The old slope from the rounds just before the change only: accuracy curves flatten, so a
    # slope fitted over the whole run (as the reference does) credits a revert with the steep
    # early rounds and reverts good changes late in a run.
    pre = sorted((r, a) for r, a in series.items()
                 if p.change_round - p.window <= r <= p.change_round)
    post = sorted((r, a) for r, a in series.items() if p.change_round < r <= now)
    if len(post) < 2:
        if remaining_budget is not None and _rounds(remaining_budget, p.cost_after) <= 1:
            return Verdict("keep", "budget ends inside the window before the change can be "
                           "judged; a revert could not pay off")
        return Verdict("wait", f"{len(post)} global round(s) since the change; need 2")

    if len(pre) < 2:
        # No slope of the old plan to compare with (e.g. the loop saw no rounds while it was
        # placing the change). Assuming the old plan learns as fast as the new one would credit
        # a revert with the learning the change itself brought (a newcomer's classes), so the
        # side that must prove itself loses: a speculative change is reverted, any other kept.
        why = f"{len(pre)} accuracy point(s) before the change; the old plan cannot be judged"
        if p.speculative:
            return Verdict("revert", f"speculative change not shown better: {why}")
        return Verdict("keep", f"a revert cannot be shown better: {why}")
    a_new, b_new, sd_new = fit_log(*zip(*post, strict=True))
    b_old, sd_old = fit_log(*zip(*pre, strict=True))[1:]
    se_new = slope_se([point[0] for point in post], sd_new)
    se_old = slope_se([point[0] for point in pre], sd_old)
    level = a_new + b_new * math.log(now + 1)
    fc = {"fit_after": {"a": a_new, "b": b_new, "sd": sd_new, "b_se": se_new},
          "b_before": b_old, "b_before_se": se_old, "level_now": level}

    def span(rounds: int) -> float:
        """ln(end + 1) - ln(now + 1): what a slope is multiplied by over `rounds` more."""
        end = now + rounds if max_round is None else min(now + rounds, max_round)
        return math.log(end + 1) - math.log(now + 1)

    def acc_at(b: float, rounds: int) -> float:
        return min(1.0, max(0.0, level + b * span(rounds)))

    if objective == "min_cost" and target_accuracy is not None:
        keep = _cost_to_target(level, b_new, now, target_accuracy, p.cost_after)
        rev = p.revert_cost + _cost_to_target(level, b_old, now, target_accuracy, p.cost_before)
        fc.update(cost_to_target_keep=keep, cost_to_target_revert=rev)
        if rev + p.cost_after < keep:
            return Verdict("revert", f"forecast cost to accuracy {target_accuracy}: revert "
                           f"{rev:.4g} < keep {_fmt(keep)}", fc)
        return Verdict("keep", f"forecast cost to accuracy {target_accuracy}: keep "
                       f"{_fmt(keep)} <= revert {_fmt(rev)}", fc)

    if remaining_budget is None:
        rounds_keep = rounds_rev = (max_round - now) if max_round else 10
    else:
        rounds_keep = _rounds(remaining_budget, p.cost_after)
        rounds_rev = _rounds(remaining_budget - p.revert_cost, p.cost_before)
    keep, rev = acc_at(b_new, rounds_keep), acc_at(b_old, rounds_rev)
    # Both forecasts start at the same level, so what separates them is the slopes: revert must
    # win by more than their standard errors over the rounds left (at least 0.1 accuracy points,
    # below which no test set of ours can tell two models apart).
    margin = max(MIN_MARGIN, math.hypot(se_new * span(rounds_keep), se_old * span(rounds_rev)))
    fc.update(rounds_keep=rounds_keep, rounds_revert=rounds_rev, accuracy_keep=keep,
              accuracy_revert=rev, margin=margin)
    if rounds_rev == 0:
        return Verdict("keep", "a revert would use up the remaining budget", fc)
    if rev > keep + margin:
        return Verdict("revert", f"forecast final accuracy: revert {rev:.4f} > keep {keep:.4f} "
                       f"(+{margin:.4f} noise margin)", fc)
    if p.speculative and keep <= rev + margin:
        return Verdict("revert", f"speculative change not better: keep {keep:.4f}, revert "
                       f"{rev:.4f} (+{margin:.4f} noise margin)", fc)
    return Verdict("keep", f"forecast final accuracy: keep {keep:.4f}, revert {rev:.4f}", fc)


def _cost_to_target(level: float, b: float, now: int, target: float, per_round: float) -> float:
    if level >= target:
        return 0.0
    if b <= 0:
        return math.inf
    end = (now + 1) * math.exp((target - level) / b) - 1
    return math.ceil(end - now) * per_round


def _fmt(v: float) -> str:
    return "never" if math.isinf(v) else f"{v:.4g}"
