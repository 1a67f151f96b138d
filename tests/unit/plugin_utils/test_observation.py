"""The configuration models' reading of the inventory and of /status."""

from ansible_collections.hfl.orchestration.plugins.plugin_utils import observation, topology
from inventory_fixtures import local_hfl


def test_fleet_of_topology_reads_costs_capacity_and_pins():
    topo = topology.build(*local_hfl(la1={"hfl_capacity": 3, "hfl_link_cost": {"ga": 100}},
                                     c1={"hfl_link_cost": {"la1": 20, "la2": 60}}))
    f = observation.fleet_of(topo)
    assert f.cost["c1"] == {"la1": 20, "la2": 60}
    assert f.cost["la1"] == {"ga": 100} and f.capacity["la1"] == 3
    assert f.pins["c1"] == "la1" and f.cost["c2"]["ga"] == 1.0


def test_a_status_histogram_becomes_counts_by_label_with_gaps_as_zero():
    assert observation.histogram_list({"0": 5, "3": 7}) == [5, 0, 0, 7]
    assert observation.histogram_list([1, 2]) == [1, 2]


def test_completed_rounds_count_the_round_in_progress_only_once_finished():
    assert observation.completed_round({"global_round": 4, "state": "training"}) == 3
    assert observation.completed_round({"global_round": 4, "state": "finished"}) == 4
    assert observation.completed_round({"reachable": False, "global_round": 4}) == 0
    assert observation.completed_round(None) == 0


def test_clients_in_pods_are_reachable_while_an_answering_parent_lists_them():
    statuses = {
        "ga": {"reachable": True, "children": ["la1", "la2"]},
        "la1": {"reachable": True, "children": ["c1", "c2"]},
        "la2": {"reachable": False, "children": ["c3"]},  # an old reading: not believed
    }
    seen = observation.clients_seen_by_parents(["c1", "c2", "c3", "c4"], statuses)
    assert seen["c1"] == {"reachable": True, "parent_name": "la1", "read_at": "la1"}
    assert seen["c2"]["reachable"] and seen["c2"]["parent_name"] == "la1"
    assert not seen["c3"]["reachable"] and "children" in seen["c3"]["error"]
    assert not seen["c4"]["reachable"]
