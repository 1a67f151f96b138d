"""hfl_virtual_clients through site.yml: two client hosts of 50 virtual clients each (one pool
process per host) train digits through two LAs to the accuracy the 4-client demo reaches; each
virtual client is a child of its own at its LA, with its own partition and results; moving one
is a reload of its pool, not a restart."""

import json

import pytest
from hfl_helpers import (
    local_inventory,
    local_inventory_same_ports,
    playbook,
    service_pids,
    stop_processes_under,
)

pytestmark = pytest.mark.integration
PER_HOST = 50


def pools(tiers, cluster_vars):
    edge = tiers["edge"]
    for gone in ("c3", "c4"):
        edge.pop(gone)
    edge["c1"].update(hfl_virtual_clients=PER_HOST, hfl_parent="la1")
    edge["c2"].update(hfl_virtual_clients=PER_HOST, hfl_parent="la2")
    # About 14 examples each: more, smaller steps per round than the demo's.
    cluster_vars.update(hfl_local_epochs=3, hfl_batch_size=4, hfl_round_timeout_s=120)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("virtual")
    inventory = local_inventory(tmp, pools)
    first = playbook("site.yml", inventory)
    yield tmp, inventory, first
    playbook("reset.yml", inventory)
    stop_processes_under(tmp)


def results(tmp):
    folder = tmp / "controller" / "demo" / "results"
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines()]
            for p in folder.glob("*.jsonl")}


def test_two_pools_of_fifty_train_digits_to_accuracy(deployed):
    tmp, _, first = deployed
    assert first.rc == 0, first.why()
    files = results(tmp)
    assert set(files) == {"ga", "la1", "la2", "c1", "c2"}  # one process, one file per pool
    assert files["ga"][-1]["global_round"] == 10
    assert files["ga"][-1]["accuracy"] >= 0.90
    # Every virtual client trained under its LA, on a partition of its own.
    members = {f"c{h}-{i}" for h in (1, 2) for i in range(PER_HOST)}
    for pool, la in (("c1", "la1"), ("c2", "la2")):
        lines = [x for x in files[pool] if x.get("type") == "train"]
        assert {x["service"] for x in lines} == {f"{pool}-{i}" for i in range(PER_HOST)}
        assert {x["parent"] for x in lines} == {la}
        last = [x for x in files[la] if x.get("global_round") == 10 and x.get("participants")]
        assert set(last[-1]["participants"]) == {f"{pool}-{i}" for i in range(PER_HOST)}
    plan = json.loads((tmp / "controller" / "demo" / "plan.json").read_text())
    assert set(plan["assignment"]) == members
    ids = [m["partition_id"] for s in plan["services"] if s["name"] in ("c1", "c2")
           for m in s["config"]["virtual_clients"]]
    assert sorted(ids) == list(range(2 * PER_HOST))
    assert len(service_pids(tmp / "hosts")) == 5  # ga, la1, la2 and two pools


def test_report_lists_every_virtual_client(deployed):
    tmp, _, _ = deployed
    page = (tmp / "controller" / "demo" / "report.html").read_text()
    for name in ("c1-0", "c1-49", "c2-0", "c2-49"):
        assert f">{name}<" in page


def test_moving_virtual_clients_reloads_their_pool_without_a_restart(deployed):
    tmp, _, _ = deployed
    before = service_pids(tmp / "hosts")
    moved = local_inventory_same_ports(tmp, lambda tiers, cv: tiers["edge"]["c1"].update(
        hfl_parent=None, hfl_link_cost={"la1": 9, "la2": 1}))
    run = playbook("place.yml", moved)
    assert run.rc == 0, run.why()
    assert service_pids(tmp / "hosts") == before
    status = playbook("status.yml", moved)
    assert status.rc == 0, status.why()
    plan = json.loads((tmp / "controller" / "demo" / "plan.json").read_text())
    assert {plan["assignment"][f"c1-{i}"] for i in range(PER_HOST)} == {"la2"}
