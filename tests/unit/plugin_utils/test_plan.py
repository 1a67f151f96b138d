"""plan.make_plan: the assignment and the per-service fl_service configs and digests."""

import json

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import plan, topology
from inventory_fixtures import local_hfl, without


def build(**overrides):
    return topology.build(*local_hfl(**overrides))


def by_name(p):
    return {s["name"]: s for s in p["services"]}


def test_hfl_plan_follows_pins_and_contract_shape():
    p = plan.make_plan(build())
    assert p["pipeline"] == "demo" and p["runtime"] == "process"
    assert p["assignment"] == {"c1": "la1", "c2": "la1", "c3": "la2", "c4": "la2"}
    s = by_name(p)
    assert s["ga"]["parent"] is None and "parent" not in s["ga"]["config"]
    assert s["ga"]["config"]["global_rounds"] == 3
    assert s["la1"]["config"]["parent"] == "127.0.0.1:8080"
    assert s["la1"]["config"]["local_rounds"] == 1
    assert s["c3"]["config"]["parent"] == "127.0.0.1:8082"
    assert s["c3"]["config"]["partition_id"] == 2
    assert s["c3"]["config"]["num_partitions"] == 4
    assert s["c3"]["config"]["state_dir"].endswith("/demo/c3/state")
    assert "global_rounds" not in s["c3"]["config"]
    json.dumps(p)  # JSON-able as written to plan.json


def test_flat_fl_clients_report_to_the_ga():
    hosts, groups = without(*local_hfl(), "la1", "la2")
    for c in ("c1", "c2", "c3", "c4"):
        hosts[c].pop("hfl_parent")
    p = plan.make_plan(topology.build(hosts, groups))
    assert set(p["assignment"].values()) == {"ga"}
    assert by_name(p)["c1"]["config"]["parent"] == "127.0.0.1:8080"


def test_unpinned_clients_go_to_the_cheapest_la_with_room():
    p = plan.make_plan(build(
        la1={"hfl_capacity": 2},
        c1={"hfl_parent": None, "hfl_link_cost": {"la1": 1, "la2": 9}},
        c2={"hfl_parent": None, "hfl_link_cost": {"la1": 1, "la2": 9}},
        c3={"hfl_parent": None, "hfl_link_cost": {"la1": 1, "la2": 9}},
    ))
    assert p["assignment"]["c1"] == "la1" and p["assignment"]["c2"] == "la1"
    assert p["assignment"]["c3"] == "la2"  # la1 is full
    assert by_name(p)["c3"]["link_cost"] == 9


def test_digest_ignores_parent_but_not_training_settings():
    base = by_name(plan.make_plan(build()))
    moved = by_name(plan.make_plan(build(), {"c1": "la2"}))
    assert moved["c1"]["config"]["parent"] == "127.0.0.1:8082"
    assert moved["c1"]["digest"] == base["c1"]["digest"]
    changed = by_name(plan.make_plan(build(ga={"hfl_local_epochs": 2})))
    assert changed["c1"]["digest"] != base["c1"]["digest"]
    assert changed["ga"]["digest"] == base["ga"]["digest"]
    assert changed["la1"]["digest"] == base["la1"]["digest"]


def test_only_the_hosts_a_change_touches_are_placed_again():
    running = plan.make_plan(build())
    assert plan.hosts_to_place(running, plan.make_plan(build())) == []  # nothing to do
    assert plan.hosts_to_place(running, plan.make_plan(build(), {"c1": "la2"})) == ["c1"]
    # A join: with room for it in hfl_num_partitions the others' partitions stay as they are.
    hosts, groups = local_hfl(c5={**local_hfl()[0]["c4"], "hfl_port": 8095, "hfl_parent": "la1"})
    for h in hosts.values():
        h["hfl_num_partitions"] = 6
    running = plan.make_plan(topology.build(*without(hosts, groups, "c5")))
    groups["edge"].append("c5")
    groups["hfl_cluster"].append("c5")
    joined = plan.make_plan(topology.build(hosts, groups))
    assert plan.hosts_to_place(running, joined) == ["c5"]
    retrained = plan.make_plan(topology.build(*without(hosts, groups, "c5")))
    by_name(retrained)["c2"]["config"]["local_epochs"] = 3  # one service's config changed
    assert plan.hosts_to_place(running, retrained) == ["c2"]


def test_assignment_override_is_checked():
    with pytest.raises(topology.TopologyError) as e:
        plan.make_plan(build(la2={"hfl_capacity": 2}), {"c1": "la2", "c9": "la1", "c2": "c3"})
    assert e.value.errors == [
        "assignment: c2: parent 'c3' is not an aggregator",
        "assignment: 'c9' is not a client of pipeline demo",
        "assignment: la2 gets 3 clients, above its hfl_capacity 2",
    ]


def test_every_service_gets_its_credentials_in_its_own_folder_by_default():
    p = plan.make_plan(build())
    assert p["tls"] is True
    for s in p["services"]:
        tls = f"{s['dir']}/tls"
        assert {k: v for k, v in s["config"].items() if k.startswith("tls_")} == {
            "tls_cert": f"{tls}/service.crt", "tls_key": f"{tls}/service.key",
            "tls_ca": f"{tls}/ca.crt"}, s["name"]


def test_an_insecure_pipeline_has_no_credentials():
    p = plan.make_plan(build(ga={"hfl_insecure": True}))
    assert p["tls"] is False
    assert not any(k.startswith("tls_") for s in p["services"] for k in s["config"])


def test_the_example_cap_ratio_reaches_the_aggregators_only_when_set():
    assert not any("example_cap_ratio" in s["config"] for s in plan.make_plan(build())["services"])
    s = by_name(plan.make_plan(build(ga={"hfl_example_cap_ratio": 4})))
    assert s["ga"]["config"]["example_cap_ratio"] == 4.0
    assert s["la1"]["config"]["example_cap_ratio"] == 4.0
    assert "example_cap_ratio" not in s["c1"]["config"]


def test_each_service_has_the_url_its_readers_use():
    s = by_name(plan.make_plan(build()))
    assert s["la1"]["url"] == "https://127.0.0.1:8081"
    insecure = by_name(plan.make_plan(build(ga={"hfl_insecure": True})))
    assert insecure["la1"]["url"] == "http://127.0.0.1:8081"


def test_a_controller_named_otherwise_is_named_to_every_service():
    assert not any("controller_name" in s["config"] for s in plan.make_plan(build())["services"])
    p = plan.make_plan(build(ga={"hfl_pki_controller_name": "ops.example"}))
    assert {s["config"]["controller_name"] for s in p["services"]} == {"ops.example"}


def test_stated_partitions_take_consecutive_disjoint_slices_in_partition_id_order():
    mix = {"classes": [0, 1], "per_class": 10}
    p = plan.make_plan(build(c1={"hfl_partition": mix, "hfl_partition_id": 3},
                             c2={"hfl_partition": {"classes": [1, 2], "per_class": 5}},
                             c4={"hfl_partition": mix}))
    s = by_name(p)
    # Ids: c2 0, c4 2 (the lowest free after c1's 3 and c3's 1), c1 3.
    assert s["c2"]["config"]["label_slices"] == "1:0:5,2:0:5"
    assert s["c4"]["config"]["label_slices"] == "0:0:10,1:5:10"
    assert s["c1"]["config"]["label_slices"] == "0:10:10,1:15:10"
    assert "label_slices" not in s["c3"]["config"]
