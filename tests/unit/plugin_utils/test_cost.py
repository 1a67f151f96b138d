"""Cost: measured link bytes x weights, change costs, and the per-round estimate."""

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import cost

W = {"c1": {"la1": 20, "la2": 60, "ga": 120}, "c2": {"la1": 60, "la2": 20, "ga": 120},
     "la1": {"ga": 100}, "la2": {"ga": 100}}
MB = 1_000_000


def status(**links):
    return {"links": {p: {"sent_bytes": s, "received_bytes": r} for p, (s, r) in links.items()}}


def test_ledger_counts_each_uplink_once_at_the_child():
    led = cost.Ledger()
    added = led.observe({
        "c1": status(la1=(MB, MB)),
        "la1": status(ga=(MB, 0), c1=(MB, MB)),  # the LA's link to c1 is c1's uplink
        "ga": status(la1=(0, MB)),
    }, W)
    assert added == pytest.approx(2 * 20 + 1 * 100)
    assert led.total == pytest.approx(140)


def test_ledger_books_growth_only_and_survives_a_restart():
    led = cost.Ledger()
    led.observe({"c1": status(la1=(MB, 0))}, W)
    led.observe({"c1": status(la1=(3 * MB, 0))}, W)
    assert led.measured == pytest.approx(60)
    # Restarted: counters begin again; the 3 MB already booked stay, the new 1 MB is added.
    led.observe({"c1": status(la1=(MB, 0))}, W)
    assert led.measured == pytest.approx(80)
    led.observe({}, W)  # the service is gone: nothing is lost
    assert led.measured == pytest.approx(80)


def test_a_client_restart_between_observations_loses_nothing_its_la_counted():
    led = cost.Ledger()
    led.observe({"c1": status(la1=(MB, 0)), "la1": status(c1=(0, MB))}, W)
    # c1 sent 4 MB more, then restarted and sent 1 MB: its own counter says 1, la1's says 5.
    led.observe({"c1": status(la1=(MB, 0)), "la1": status(c1=(0, 6 * MB))}, W)
    assert led.measured == pytest.approx(6 * 20)
    # la1 was unreachable once; when it answers again its counter holds history already booked.
    led.observe({"c1": status(la1=(2 * MB, 0))}, W)
    led.observe({"c1": status(la1=(3 * MB, 0)), "la1": status(c1=(0, 8 * MB))}, W)
    assert led.measured == pytest.approx(8 * 20)


def test_booked_change_costs_add_to_the_total():
    led = cost.Ledger()
    led.book(33)
    assert (led.total, led.booked, led.measured) == (33, 33, 0)


def test_round_cost_counts_local_rounds_and_used_las_only():
    hier = cost.round_cost({"c1": "la1", "c2": "la1"}, W, "ga", local_rounds=2, exchange_mb=3.3)
    assert hier == pytest.approx(3.3 * (2 * 20 + 2 * 60 + 100))
    flat = cost.round_cost({"c1": "ga", "c2": "ga"}, W, "ga", local_rounds=2, exchange_mb=1)
    assert flat == pytest.approx(240)


def test_change_cost_prices_the_handover_of_moved_and_new_clients():
    before = {"c1": "la1"}
    after = {"c1": "la2", "c2": "la2"}
    assert cost.change_cost(before, after, W, 2.0, "ga") == pytest.approx(60 + 20 + 100)
    assert cost.change_cost(after, after, W, 2.0, "ga") == 0


def test_round_costs_from_results_lines():
    lines = [
        {"service": "c1", "global_round": 1, "links": {"la1": {"sent_bytes": MB,
                                                             "received_bytes": MB}}},
        {"service": "la1", "global_round": 1, "links": {"ga": {"sent_bytes": MB,
                                                             "received_bytes": 0}}},
        {"service": "ga", "global_round": 1, "links": {"la1": {"sent_bytes": 9 * MB}}},
        {"service": "c1", "global_round": 2, "links": {"la1": {"sent_bytes": MB}}},
    ]
    assert cost.round_costs_from_results(lines, W) == {1: pytest.approx(140),
                                                       2: pytest.approx(20)}


def test_a_link_without_a_weight_costs_the_childs_dearest_known_link():
    # Every LA gone: the clients go straight to the GA, which their cost maps do not price.
    weights = {"c1": {"la1": 20, "la2": 60}, "c2": {"la1": 60, "la2": 20}, "la1": {"ga": 100}}
    assert cost.round_cost({"c1": "ga", "c2": "ga"}, weights, "ga", 2, 1.0) == 120
    assert cost.change_cost({"c1": "la1"}, {"c1": "ga"}, weights, 2.0, "ga") == 60
    assert cost.weight({}, "c9", "ga") == 1.0
