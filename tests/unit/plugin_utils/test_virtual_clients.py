"""hfl_virtual_clients: a client host runs a pool of clients in one process. The topology
holds each as a client of its own; the plan places one process per pool."""

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import plan, topology
from inventory_fixtures import local_hfl


def pools(**overrides):
    """la1 and la2 each pin one pool host (c1: 3 clients, c3: 2); c2 and c4 stay plain."""
    return local_hfl(c1={"hfl_virtual_clients": 3}, c3={"hfl_virtual_clients": 2}, **overrides)


def errors_of(hosts, groups):
    with pytest.raises(topology.TopologyError) as e:
        topology.build(hosts, groups)
    return e.value.errors


def test_each_virtual_client_is_a_client_of_its_own():
    topo = topology.build(*pools())
    names = [c.name for c in topo.clients]
    assert names == ["c1-0", "c1-1", "c1-2", "c2", "c3-0", "c3-1", "c4"]
    assert topo.num_partitions == 7
    assert sorted(c.partition_id for c in topo.clients) == list(range(7))
    member = topo.service("c1-2")
    assert (member.host, member.pool, member.port, member.parent) == ("c1", "c1", 8091, "la1")
    assert topo.service("c2").host == "c2" and topo.service("c2").pool is None
    assert [m.name for m in topo.pools["c3"]] == ["c3-0", "c3-1"]


def test_virtual_clients_sort_by_number_and_share_the_hosts_link_costs():
    hosts, groups = local_hfl(c1={"hfl_virtual_clients": 12, "hfl_parent": None,
                                  "hfl_link_cost": {"la1": 4, "la2": 1}})
    topo = topology.build(hosts, groups)
    assert [m.name for m in topo.pools["c1"]][9:] == ["c1-9", "c1-10", "c1-11"]
    assert topo.link_cost("c1-10", "la2") == 1 and topo.candidates("c1-10") == ["la1", "la2"]


@pytest.mark.parametrize("overrides, expected", [
    ({"c1": {"hfl_virtual_clients": 0}},
     "host c1: hfl_virtual_clients: must be an integer in 1..10000, got 0"),
    ({"c1": {"hfl_virtual_clients": "50"}},
     "host c1: hfl_virtual_clients: must be an integer in 1..10000, got '50'"),
    ({"la1": {"hfl_virtual_clients": 2}},
     "host la1: hfl_virtual_clients: only a client host runs virtual clients (this host is a "
     "local_aggregator)"),
    ({"c1": {"hfl_virtual_clients": 2, "hfl_partition_id": 0}},
     "host c1: hfl_partition_id: a host with hfl_virtual_clients cannot pin one partition (its "
     "virtual clients take the lowest free ids)"),
    ({"c2": {"hfl_virtual_clients": 2}, "c2-1": {"hfl_role": "client", "hfl_port": 8095}},
     "host c2: hfl_virtual_clients: its virtual client 'c2-1' has the name of inventory host "
     "'c2-1'"),
])
def test_a_wrong_pool_is_one_line(overrides, expected):
    hosts, groups = local_hfl(**overrides)
    if "c2-1" in hosts:
        hosts["c2-1"] = {**hosts["c2"], "hfl_port": 8095}
        hosts["c2-1"].pop("hfl_virtual_clients")
        groups["edge"].append("c2-1")
        groups["hfl_cluster"].append("c2-1")
    assert errors_of(hosts, groups) == [expected]


def test_a_pool_hosts_mistake_is_said_once():
    hosts, groups = local_hfl(c1={"hfl_virtual_clients": 40, "hfl_parent": "nowhere"})
    assert errors_of(hosts, groups) == [
        "host c1: hfl_parent: 'nowhere' is not a host of the inventory; it must name a "
        "local_aggregator of this pipeline"]


def test_capacity_counts_virtual_clients():
    hosts, groups = pools(la1={"hfl_capacity": 3})
    assert errors_of(hosts, groups) == [
        "host la1: hfl_capacity: 3 but 4 clients pin it with hfl_parent"]


def test_the_plan_places_one_process_per_pool():
    p = plan.make_plan(topology.build(*pools()))
    services = {s["name"]: s for s in p["services"]}
    assert [s["name"] for s in p["services"]] == ["ga", "la1", "la2", "c1", "c2", "c3", "c4"]
    assert p["assignment"]["c1-1"] == "la1" and p["assignment"]["c3-0"] == "la2"
    pool = services["c1"]
    assert (pool["host"], pool["role"], pool["parent"], pool["port"]) == ("c1", "client", None,
                                                                          8091)
    config = pool["config"]
    assert config["name"] == "c1" and "parent" not in config and "partition_id" not in config
    assert config["num_partitions"] == 7
    assert config["virtual_clients"] == [
        {"name": "c1-0", "partition_id": 0, "parent": "127.0.0.1:8081"},
        {"name": "c1-1", "partition_id": 1, "parent": "127.0.0.1:8081"},
        {"name": "c1-2", "partition_id": 2, "parent": "127.0.0.1:8081"},
    ]
    assert pool["virtual_clients"] == {f"c1-{i}": {"parent": "la1", "link_cost": 1.0}
                                       for i in range(3)}


def test_moving_a_virtual_client_is_a_reload_of_its_pool_only():
    topo = topology.build(*pools())
    before = {s["name"]: s for s in plan.make_plan(topo)["services"]}
    moved_plan = plan.make_plan(topo, {"c1-1": "la2"})
    moved = {s["name"]: s for s in moved_plan["services"]}
    assert moved["c1"]["config"]["virtual_clients"][1]["parent"] == "127.0.0.1:8082"
    assert moved["c1"]["virtual_clients"]["c1-1"]["parent"] == "la2"
    assert moved["c1"]["digest"] == before["c1"]["digest"]  # a parent change: reload
    assert plan.hosts_to_place({"services": list(before.values())}, moved_plan) == ["c1"]


def test_a_stated_partition_gives_each_virtual_client_its_own_slices():
    hosts, groups = local_hfl(c1={"hfl_virtual_clients": 2,
                                  "hfl_partition": {"classes": [3, 4], "per_class": 10}})
    p = plan.make_plan(topology.build(hosts, groups))
    pool = next(s for s in p["services"] if s["name"] == "c1")
    assert [m["label_slices"] for m in pool["config"]["virtual_clients"]] == [
        "3:0:10,4:0:10", "3:10:10,4:10:10"]


def test_a_thousand_virtual_clients_plan_in_one_pass():
    hosts, groups = local_hfl(c1={"hfl_virtual_clients": 1000, "hfl_parent": None})
    p = plan.make_plan(topology.build(hosts, groups))
    pool = next(s for s in p["services"] if s["name"] == "c1")
    assert len(pool["config"]["virtual_clients"]) == 1000
    assert {p["assignment"][f"c1-{i}"] for i in range(1000)} == {"la1", "la2"}


def test_a_pool_host_is_left_out_only_with_all_its_virtual_clients():
    topo = topology.build(*pools())
    running = plan.make_plan(topo)
    assert plan.hosts_left_out(topo, ["c2", "c1-0"], running) == ["c2"]
    assert plan.hosts_left_out(topo, ["c1-0", "c1-1", "c1-2", "c4"], running) == ["c1", "c4"]
    # c3 shrank to one virtual client: c3-1 leaves with its pool's new config; c5 left for good.
    fewer = topology.build(*local_hfl(c1={"hfl_virtual_clients": 3},
                                      c3={"hfl_virtual_clients": 1}))
    assert plan.hosts_left_out(fewer, ["c3-1", "c5"], running) == ["c5"]
