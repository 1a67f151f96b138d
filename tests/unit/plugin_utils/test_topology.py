"""topology.build: a valid inventory becomes a Topology; each mistake is one line naming the
host and the variable."""

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import topology
from inventory_fixtures import local_hfl, without


def errors_of(hosts, groups):
    with pytest.raises(topology.TopologyError) as e:
        topology.build(hosts, groups)
    return e.value.errors


def test_valid_inventory_builds_services_in_tier_order():
    topo = topology.build(*local_hfl())
    assert topo.pipeline.name == "demo"
    assert topo.pipeline.global_rounds == 3
    assert topo.ga.name == "ga"
    assert [s.name for s in topo.las] == ["la1", "la2"]
    assert [c.partition_id for c in topo.clients] == [0, 1, 2, 3]
    assert topo.num_partitions == 4
    assert topo.ga.address == "127.0.0.1" and topo.ga.bind_host == "127.0.0.1"


def test_link_cost_number_and_map():
    hosts, groups = local_hfl(c1={"hfl_link_cost": {"la1": 2, "la2": 5}, "hfl_parent": None},
                              c2={"hfl_link_cost": 3})
    topo = topology.build(hosts, groups)
    assert topo.link_cost("c1", "la2") == 5
    assert topo.candidates("c1") == ["la1", "la2"]
    assert topo.link_cost("c2", "la1") == 3
    with pytest.raises(KeyError):
        topo.link_cost("c2", "c3")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"ga": {"hfl_role": "client"}}, "pipeline demo: hfl_role: needs exactly one"),
        ({"la1": {"hfl_role": "global_aggregator", "hfl_allow_any_tier": True}},
         "needs exactly one global_aggregator, found ga, la1"),
        ({"c1": {"hfl_role": "trainer"}}, "host c1: hfl_role: 'trainer' is not one of"),
        ({"c1": {"hfl_parent": "la9"}}, "host c1: hfl_parent: 'la9' is not a host"),
        ({"c1": {"hfl_parent": "c2"}}, "host c1: hfl_parent: 'c2' is a client"),
        ({"la1": {"hfl_role": "client"}}, "host la1: hfl_role: a client belongs on tier edge"),
        ({"c4": {"hfl_port": 8091}}, "host c4: hfl_port: 8091 is also used by host c1"),
        ({"ga": {"hfl_global_rounds": 0}}, "host ga: hfl_global_rounds: must be an integer >= 1"),
        ({"ga": {"hfl_local_rounds": -1}}, "host ga: hfl_local_rounds: must be an integer >= 1"),
        ({"ga": {"hfl_local_epochs": 0}}, "host ga: hfl_local_epochs: must be an integer >= 1"),
        ({"ga": {"hfl_batch_size": "8"}}, "host ga: hfl_batch_size: must be an integer >= 1"),
        ({"ga": {"hfl_dataset": "mnist"}}, "host ga: hfl_dataset: must be one of digits"),
        ({"ga": {"hfl_partitioner": "random"}}, "host ga: hfl_partitioner: must be one of iid"),
        ({"ga": {"hfl_runtime": "docker"}}, "host ga: hfl_runtime: must be one of process"),
        ({"c2": {"hfl_link_cost": -1}}, "host c2: hfl_link_cost: must be a number >= 0"),
        ({"c2": {"hfl_link_cost": {"la1": -2}}}, "host c2: hfl_link_cost: cost to la1 must be"),
        ({"c1": {"hfl_partition_id": 0}, "c2": {"hfl_partition_id": 0}},
         "host c2: hfl_partition_id: 0 is also host c1's"),
        ({"la1": {"hfl_capacity": 1}}, "host la1: hfl_capacity: 1 but 2 clients pin it"),
        ({"ga": {"hfl_insecure": "yes"}},
         "host ga: hfl_insecure: must be true or false, got 'yes'"),
        ({"ga": {"hfl_example_cap_ratio": 0.5}},
         "host ga: hfl_example_cap_ratio: must be a number >= 1, got 0.5"),
        ({"ga": {"hfl_example_cap_ratio": "2"}},
         "host ga: hfl_example_cap_ratio: must be a number >= 1, got '2'"),
        ({"ga": {"hfl_pki_controller_name": "a b"}},
         "host ga: hfl_pki_controller_name: must be a DNS name"),
        ({"c1": {"hfl_partition": [0, 1]}}, "host c1: hfl_partition: must be a map {classes"),
        ({"c1": {"hfl_partition": {"classes": [0, 0], "per_class": 5}}},
         "host c1: hfl_partition: classes must be a non-empty list of distinct labels in 0..9"),
        ({"c1": {"hfl_partition": {"classes": [10], "per_class": 5}}},
         "host c1: hfl_partition: classes must be"),
        ({"c1": {"hfl_partition": {"classes": [1], "per_class": 0}}},
         "host c1: hfl_partition: per_class must be an integer >= 1, got 0"),
        ({"la1": {"hfl_partition": {"classes": [1], "per_class": 5}}},
         "host la1: hfl_partition: only clients hold data"),
        ({"ga": {"hfl_dataset": "fashion_mnist"},
          "c1": {"hfl_partition": {"classes": [3], "per_class": 4000}},
          "c2": {"hfl_partition": {"classes": [3, 4], "per_class": 2500}}},
         "host c2: hfl_partition: class 3 has 6000 training examples in fashion_mnist; the "
         "clients' hfl_partition ask 6500 of it"),
    ],
)
def test_each_mistake_is_one_line_naming_host_and_variable(overrides, expected):
    hosts, groups = local_hfl(**overrides)
    errs = errors_of(hosts, groups)
    assert any(expected in e for e in errs), errs
    assert all("\n" not in e for e in errs)


def test_host_in_two_tiers():
    hosts, groups = local_hfl()
    groups["fog"].append("c1")
    assert "host c1: tier: in tiers fog and edge; put it in exactly one of cloud, fog, edge" in (
        errors_of(hosts, groups))


def test_parent_in_another_pipeline():
    hosts, groups = local_hfl(la9={"hfl_role": "local_aggregator", "hfl_pipeline": "other",
                                   "hfl_port": 9000, "ansible_connection": "local"},
                              c1={"hfl_parent": "la9"})
    groups["fog"].append("la9")
    groups["hfl_cluster"].append("la9")
    with pytest.raises(topology.TopologyError) as e:
        topology.build(hosts, groups, pipeline="demo")
    assert "host c1: hfl_parent: 'la9' belongs to pipeline 'other'" in e.value.errors[0]


def test_wrong_tier_allowed_explicitly():
    hosts, groups = local_hfl(la1={"hfl_role": "client", "hfl_allow_any_tier": True},
                              c1={"hfl_parent": "la2"}, c2={"hfl_parent": "la2"})
    topo = topology.build(hosts, groups)
    assert [c.tier for c in topo.clients if c.name == "la1"] == ["fog"]


def test_same_port_on_different_machines_is_fine():
    hosts, groups = local_hfl()
    for i, name in enumerate(hosts):
        hosts[name] = {**hosts[name], "ansible_connection": "ssh",
                       "ansible_host": f"10.0.0.{i + 1}", "hfl_port": 8080}
    topo = topology.build(hosts, groups)
    assert topo.ga.bind_host == "0.0.0.0" and topo.ga.address == "10.0.0.1"


def test_no_ga_and_several_mistakes_reported_together():
    hosts, groups = without(*local_hfl(c2={"hfl_link_cost": -3}), "ga")
    errs = errors_of(hosts, groups)
    assert len(errs) == 2
    assert errs[0].startswith("host c2: hfl_link_cost")
    assert errs[1].startswith("pipeline demo: hfl_role: needs exactly one global_aggregator")


def test_hfl_supervisor_is_auto_systemd_or_none():
    topology.build(*local_hfl(ga={"hfl_supervisor": "systemd"}, c1={"hfl_supervisor": "none"}))
    assert errors_of(*local_hfl(c2={"hfl_supervisor": "runit"})) == [
        "host c2: hfl_supervisor: must be one of auto, systemd, none, got 'runit'"]
