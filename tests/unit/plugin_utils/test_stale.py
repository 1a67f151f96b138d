"""stale.stale_services: which services earlier placements ran that the current plan no longer
runs, given the last plan, the records not yet known stopped and the plan now."""

from ansible_collections.hfl.orchestration.plugins.plugin_utils import plan, stale, topology
from inventory_fixtures import local_hfl, without

SSH = {"ansible_host": "10.0.0.14", "ansible_user": "root", "ansible_port": 2222}


def placed(hosts, groups, connections=None, **kwargs):
    """A plan as fl_plan writes it: with each host's connection variables."""
    p = plan.make_plan(topology.build(hosts, groups), **kwargs)
    p["connections"] = connections or {h: stale.connection_vars(v) for h, v in hosts.items()}
    return p


def names(records):
    return [r["name"] for r in records]


def test_a_host_that_left_the_inventory_is_stale_with_how_it_was_reached():
    hosts, groups = local_hfl(c4=SSH)
    before = placed(hosts, groups)
    after = placed(*without(hosts, groups, "c4"))
    [record] = stale.stale_services(before, after)
    assert record == {"id": stale.record_id(record), "name": "c4", "host": "c4",
                      "dir": "~/.local/state/hfl/demo/c4",
                      "connection": {"ansible_connection": "local", **SSH}}
    assert record["id"].startswith("c4-")


def test_nothing_is_stale_when_the_plan_runs_what_ran():
    hosts, groups = local_hfl()
    assert stale.stale_services(placed(hosts, groups), placed(hosts, groups)) == []
    assert stale.stale_services(None, placed(hosts, groups)) == []


def test_a_client_moved_to_another_parent_or_left_out_is_not_stale():
    # The orchestrator stops the clients it leaves out itself (they keep their spec).
    hosts, groups = local_hfl()
    before = placed(hosts, groups)
    after = placed(hosts, groups, assignment={"c1": "la2"})
    after["left_out"] = ["c2"]
    assert stale.stale_services(before, after) == []


def test_a_moved_service_folder_leaves_the_old_one_stale():
    hosts, groups = local_hfl()
    before = placed(hosts, groups)
    moved = {**hosts, "c1": {**hosts["c1"], "hfl_host_state_dir": "/srv/hfl"}}
    [record] = stale.stale_services(before, placed(moved, groups))
    assert (record["name"], record["dir"]) == ("c1", "~/.local/state/hfl/demo/c1")


def test_a_record_not_yet_stopped_stays_stale_until_its_service_runs_again():
    hosts, groups = local_hfl(c4=SSH)
    with_c4 = placed(hosts, groups)
    without_c4 = placed(*without(hosts, groups, "c4"))
    recorded = stale.stale_services(with_c4, without_c4)
    # The next run's last plan no longer has c4: only its record remembers it.
    assert stale.stale_services(without_c4, without_c4, recorded) == recorded
    # c4 back in the inventory: it runs again where it ran, nothing to stop.
    assert stale.stale_services(without_c4, with_c4, recorded) == []


def test_a_record_keeps_the_connection_it_was_placed_with():
    hosts, groups = local_hfl(c4=SSH)
    recorded = stale.stale_services(placed(hosts, groups), placed(*without(hosts, groups, "c4")))
    # A later plan that (somehow) lists c4 again with other connection variables.
    later = placed(hosts, groups, connections={"c4": {"ansible_host": "elsewhere"}})
    [record] = stale.stale_services(later, placed(*without(hosts, groups, "c4")), recorded)
    assert record["connection"]["ansible_host"] == "10.0.0.14"


def test_only_process_services_are_stale_and_all_of_them_when_the_runtime_changes():
    hosts, groups = local_hfl()
    podman = {h: {**v, "hfl_runtime": "podman"} for h, v in hosts.items()}
    # podman finds what it placed in its own state (the podman host's units).
    assert stale.stale_services(placed(*without(podman, groups, "c4")),
                                placed(*without(podman, groups, "c1"))) == []
    # From process to podman: every process service goes.
    assert names(stale.stale_services(placed(hosts, groups), placed(podman, groups))) == sorted(
        hosts)


def test_connection_vars_keep_how_a_host_is_reached_and_no_password():
    vars_ = {**SSH, "ansible_password": "secret", "ansible_become_password": "secret",
             "ansible_ssh_pass": "secret", "hfl_role": "client"}
    assert stale.connection_vars(vars_) == SSH
