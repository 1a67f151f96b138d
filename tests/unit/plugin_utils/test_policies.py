"""Configuration models and triggers: what each puts under which aggregator, and when it fires."""

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import policies
from ansible_collections.hfl.orchestration.plugins.plugin_utils.policies import Fleet


def reference_fleet(**kw):
    """The reference experiment's costs: client-LA 20 or 60, client-GA 120, LA-GA 100."""
    cost = {"la1": {"ga": 100}, "la2": {"ga": 100}}
    for i in range(1, 9):
        near, far = ("la1", "la2") if i <= 4 else ("la2", "la1")
        cost[f"c{i}"] = {near: 20, far: 60, "ga": 120}
    return Fleet(ga="ga", las=["la1", "la2"], clients=[f"c{i}" for i in range(1, 9)],
                 cost=cost, **kw)


def test_min_comm_cost_puts_each_client_under_its_cheapest_la():
    a = policies.assign("min_comm_cost", reference_fleet())
    assert a == {**{f"c{i}": "la1" for i in range(1, 5)}, **{f"c{i}": "la2" for i in range(5, 9)}}


def test_min_comm_cost_respects_capacity_and_lets_the_cheapest_loser_move():
    f = reference_fleet(capacity={"la1": 3, "la2": 10})
    # c4 is as near la1 as c1..c3; someone must go to la2 and pay 60 instead of 20.
    a = policies.assign("min_comm_cost", f)
    assert sum(p == "la1" for p in a.values()) == 3
    assert sorted(c for c, p in a.items() if p == "la2") == ["c4", "c5", "c6", "c7", "c8"]


def test_min_comm_cost_regret_order_beats_name_order():
    # c1 is indifferent between the LAs, c2 would pay 100 more away from la1 (room 1).
    f = Fleet(ga="ga", las=["la1", "la2"], clients=["c1", "c2"],
              cost={"c1": {"la1": 10, "la2": 10}, "c2": {"la1": 10, "la2": 110},
                    "la1": {"ga": 1}, "la2": {"ga": 1}},
              capacity={"la1": 1, "la2": 1})
    assert policies.assign("min_comm_cost", f) == {"c1": "la2", "c2": "la1"}


def test_full_las_overflow_to_the_ga_or_fail_clearly():
    f = reference_fleet(capacity={"la1": 2, "la2": 2})
    a = policies.assign("min_comm_cost", f)
    assert sum(p == "ga" for p in a.values()) == 4
    f.cost["c8"].pop("ga")
    f.capacity = {"la1": 1, "la2": 1}
    with pytest.raises(policies.PolicyError, match="c8|no local aggregator"):
        policies.assign("min_comm_cost", f)


def test_pins_hold_while_their_la_is_alive():
    f = reference_fleet(pins={"c1": "la2"})
    assert policies.assign("min_comm_cost", f)["c1"] == "la2"
    assert policies.assign("min_kld", f)["c1"] == "la2"
    f.las = ["la1"]  # la2 failed: the pin cannot hold
    assert policies.assign("min_comm_cost", f)["c1"] == "la1"


def test_flat_puts_every_client_under_the_ga():
    assert set(policies.assign("flat", reference_fleet()).values()) == {"ga"}


def test_unknown_model_is_a_clear_error():
    with pytest.raises(policies.PolicyError, match="min_kld"):
        policies.assign("fastest", reference_fleet())


def skewed_fleet():
    """8 clients with 2 classes each: pairs (0,1), (2,3), (4,5), (6,7), each twice.

    Cost puts the two holders of the same pair under the same LA, so min_comm_cost builds two
    groups that each miss half the classes."""
    f = reference_fleet()
    pairs = [(0, 1), (2, 3), (0, 1), (2, 3), (4, 5), (6, 7), (4, 5), (6, 7)]
    for i, (a, b) in enumerate(pairs, 1):
        h = [0] * 8
        h[a] = h[b] = 100
        f.histograms[f"c{i}"] = h
    return f


def test_min_kld_mixes_label_skewed_clients_far_better_than_min_comm_cost():
    f = skewed_fleet()
    by_cost = policies.assign("min_comm_cost", f)
    by_kld = policies.assign("min_kld", f)
    assert policies.mean_kld(f, by_cost) > 0.6  # each LA sees 4 of 8 classes: ln 2
    assert policies.mean_kld(f, by_kld) < 0.05
    assert set(by_kld.values()) == {"la1", "la2"}  # every LA trains


def test_min_kld_allows_unequal_groups_within_capacity():
    f = skewed_fleet()
    f.capacity = {"la1": 6, "la2": 2}
    a = policies.assign("min_kld", f)
    assert sorted(list(a.values()).count(la) for la in ("la1", "la2")) == [2, 6]


def test_min_kld_treats_a_client_without_histogram_as_neutral():
    f = skewed_fleet()
    f.clients.append("c9")
    f.cost["c9"] = {"la1": 20, "la2": 60}
    a = policies.assign("min_kld", f)
    assert a["c9"] in ("la1", "la2") and len(a) == 9


def test_membership_reports_joins_and_leaves():
    assert policies.membership({"c1", "c2"}, {"c2", "c3"}) == (["c3"], ["c1"])


def test_failure_needs_consecutive_misses():
    misses = {}
    down = {"la1": {"reachable": False}, "la2": {"reachable": True}}
    assert policies.failed(down, misses) == []  # one miss: may be restarting
    assert policies.failed(down, misses) == ["la1"]
    assert policies.failed({"la1": {"reachable": True}}, misses) == []


def test_a_busy_service_that_answers_late_is_not_taken_for_dead():
    misses = {}
    late = {"la1": {"reachable": False, "timed_out": True}}
    assert [policies.failed(late, misses) for _ in range(5)] == [[]] * 5
    assert policies.failed({"la1": {"reachable": True}}, misses) == []
    # A hung one is found all the same, after three times the reads.
    assert [policies.failed(late, misses) for _ in range(6)] == [[]] * 5 + [["la1"]]


def test_stall_on_rising_loss():
    assert "loss rose" in policies.stall([0.5] * 7, [1.0, 0.9, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1],
                                         window=4)


def test_stall_on_flat_accuracy_but_not_while_learning():
    learning = [0.2, 0.4, 0.55, 0.65, 0.72, 0.77, 0.8, 0.82]
    assert policies.stall(learning, [], window=4) is None
    flat = learning[:4] + [0.651, 0.65, 0.649, 0.6505]
    assert "accuracy flat" in policies.stall(flat, [], window=4)
    assert policies.stall(flat[:4], [], window=4) is None  # no full window yet


def test_stall_alternative_switches_grouping():
    assert policies.stall_alternative("min_comm_cost") == "min_kld"
    assert policies.stall_alternative("min_kld") == "min_comm_cost"
    assert policies.stall_alternative("flat") == "flat"
