"""The reconfiguration check on synthetic accuracy series: keep wins, revert wins, budget ends."""

import math

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    reconfiguration_check as check,
)


def log_curve(a, b, rounds):
    return {r: a + b * math.log(r + 1) for r in rounds}


def pending(**kw):
    base = dict(change_round=10, before={"c1": "la1"}, after={"c1": "la1", "c9": "la2"},
                cost_before=1716.0, cost_after=1980.0, revert_cost=66.0, window=5)
    base.update(kw)
    return check.Pending(**base)


def test_fit_recovers_a_log_curve():
    a, b, sd = check.fit_log([1, 2, 3, 4, 5], [0.1 + 0.2 * math.log(x + 1) for x in range(1, 6)])
    assert (a, b) == (pytest.approx(0.1), pytest.approx(0.2)) and sd < 1e-9


def test_only_costlier_or_speculative_changes_are_checked():
    assert check.needs_check(1716, 1980)
    assert not check.needs_check(1980, 1716)
    assert check.needs_check(1980, 1716, speculative=True)


def test_keeping_wins_when_the_change_speeds_learning_up():
    # Before: slow learner; after the join (e.g. a client with much more data) it learns faster.
    series = {**log_curve(0.10, 0.10, range(1, 11)), **log_curve(-0.9, 0.52, range(11, 16))}
    v = check.evaluate(pending(), series, now=15, remaining_budget=40_000)
    assert v.action == "keep", v.reason
    assert v.forecast["accuracy_keep"] > v.forecast["accuracy_revert"]


def test_reverting_wins_when_the_change_hurts_learning():
    # Before: learning well; after the join (a label-skewed client) the curve goes flat.
    series = {**log_curve(0.05, 0.20, range(1, 11)), **log_curve(0.50, 0.0, range(11, 16))}
    series = {r: a + (0.002 if r % 2 else -0.002) for r, a in series.items()}  # some noise
    v = check.evaluate(pending(), series, now=15, remaining_budget=40_000)
    assert v.action == "revert", v.reason
    assert v.forecast["accuracy_revert"] > v.forecast["accuracy_keep"] + v.forecast["margin"]


def test_a_difference_inside_the_noise_keeps_the_change():
    noisy = {r: 0.6 + (0.1 if r % 2 else -0.1) for r in range(11, 16)}
    series = {**log_curve(0.05, 0.2, range(1, 11)), **noisy}
    v = check.evaluate(pending(), series, now=15, remaining_budget=3 * 1980)
    assert v.action == "keep"


def test_a_slope_difference_inside_the_slopes_own_uncertainty_keeps_the_change():
    # Label-skewed clients: accuracy swings by 0.1 from round to round, around a rising curve
    # before the change and a flat one after it. Five rounds a side cannot tell those slopes
    # apart: the forecast gap is inside its standard error, though four times the standard error
    # of the level after the change (the margin before, which reverted this).
    def swinging(curve):
        return {r: acc + (0.05 if r % 2 else -0.05) for r, acc in curve.items()}

    level = 0.05 + 0.2 * math.log(11)
    series = {**swinging(log_curve(0.05, 0.2, range(5, 11))),
              **swinging(log_curve(level, 0.0, range(11, 16)))}
    v = check.evaluate(pending(), series, now=15, remaining_budget=20 * 1980)
    fc = v.forecast
    gap = fc["accuracy_revert"] - fc["accuracy_keep"]
    assert v.action == "keep", v.reason
    assert 4 * fc["fit_after"]["sd"] / math.sqrt(5) < gap < fc["margin"]


def test_the_check_is_due_after_the_window_or_early_when_the_budget_ends_inside_it():
    p = pending()
    assert not check.due(p, 12, remaining_budget=100_000)
    assert check.due(p, 15, remaining_budget=100_000)
    # At round 12 the budget buys 2 more rounds: it ends at 14, inside the window (10..15).
    assert check.due(p, 12, remaining_budget=2 * 1980 + 1)


def test_budget_ending_inside_the_window_keeps_when_a_revert_cannot_pay_off():
    series = {**log_curve(0.05, 0.20, range(1, 11)), **log_curve(0.5, 0.0, range(11, 13))}
    # Revert pays 66 first; what is left does not buy one round of the old plan.
    v = check.evaluate(pending(), series, now=12, remaining_budget=1700.0)
    assert v.action == "keep" and "revert would use up" in v.reason
    # With a single post-change point there is nothing to fit and no budget to wait for.
    one = {r: a for r, a in series.items() if r <= 11}
    v = check.evaluate(pending(), one, now=11, remaining_budget=1000.0)
    assert v.action == "keep" and "budget ends inside the window" in v.reason


def test_budget_ending_inside_the_window_still_reverts_early_when_that_wins():
    series = {**log_curve(0.05, 0.20, range(1, 11)), **log_curve(0.5, 0.0, range(11, 14))}
    remaining = 4 * 1980  # the new plan buys 4 more rounds: the budget ends at 17, not 18
    p = pending(change_round=10, window=8)
    assert check.due(p, 13, remaining)
    v = check.evaluate(p, series, now=13, remaining_budget=remaining)
    assert v.action == "revert", v.reason


def test_waits_for_two_points_when_budget_allows():
    series = log_curve(0.05, 0.2, range(1, 12))
    assert check.evaluate(pending(), series, now=11, remaining_budget=50_000).action == "wait"


def test_min_cost_objective_compares_cost_to_the_target():
    slow = {**log_curve(0.05, 0.20, range(1, 11)), **log_curve(0.50, 0.01, range(11, 16))}
    v = check.evaluate(pending(), slow, now=15, remaining_budget=None, objective="min_cost",
                       target_accuracy=0.6)
    assert v.action == "revert" and v.forecast["cost_to_target_revert"] < math.inf
    fast = {**log_curve(0.05, 0.20, range(1, 11)), **log_curve(-1.0, 0.6, range(11, 16))}
    v = check.evaluate(pending(), fast, now=15, remaining_budget=None, objective="min_cost",
                       target_accuracy=0.7)
    assert v.action == "keep"


def test_without_accuracy_before_the_change_a_revert_cannot_win():
    # The loop saw no rounds while it placed the change (rounds 1-14 missing); after it the
    # newcomer's data lifts accuracy steeply. Assuming the old plan as steep would let a revert
    # win on the one round more it buys.
    series = {15: 0.50, 16: 0.55, 17: 0.60, 18: 0.64, 19: 0.67, 20: 0.70}
    p = pending(change_round=15)
    v = check.evaluate(p, series, now=20, remaining_budget=8 * 1980)
    assert v.action == "keep" and "cannot be shown better" in v.reason, v.reason
    v = check.evaluate(pending(change_round=15, speculative=True), series, now=20,
                       remaining_budget=8 * 1980)
    assert v.action == "revert" and "not shown better" in v.reason, v.reason
