"""The embedded default end to end: site.yml on the local inventory (process runtime, mutual TLS)
trains to accuracy >= 0.90; re-running changes nothing and shows no key even at -vvv; a changed
setting restarts only the services it touches; moving a client reloads it without a restart;
reset.yml leaves nothing behind."""

import json

import pytest
from hfl_helpers import (
    ROOT,
    local_inventory,
    local_inventory_same_ports,
    playbook,
    processes_mentioning,
    service_pids,
    stop_processes_under,
)

pytestmark = pytest.mark.integration
AGGREGATORS = {"ga", "la1", "la2"}
CLIENTS = {"c1", "c2", "c3", "c4"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    inventory = local_inventory(tmp)
    first = playbook("site.yml", inventory)
    yield tmp, inventory, first
    playbook("reset.yml", inventory)
    stop_processes_under(tmp)


def ga_results(tmp):
    lines = (tmp / "controller" / "demo" / "results" / "ga.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_site_trains_to_accuracy_and_collects_results(deployed):
    tmp, _, first = deployed
    assert first.rc == 0, first.why()
    rows = ga_results(tmp)
    assert rows[-1]["global_round"] == 10
    assert rows[-1]["accuracy"] >= 0.90
    collected = {p.stem for p in (tmp / "controller" / "demo" / "results").glob("*.jsonl")}
    assert collected == AGGREGATORS | CLIENTS
    plan = json.loads((tmp / "controller" / "demo" / "plan.json").read_text())
    assert plan["assignment"] == {"c1": "la1", "c2": "la1", "c3": "la2", "c4": "la2"}


def test_second_run_changes_and_restarts_nothing(deployed):
    tmp, inventory, _ = deployed
    before = service_pids(tmp / "hosts")
    assert set(before) == AGGREGATORS | CLIENTS
    again = playbook("site.yml", inventory, "-vvv")  # module arguments shown, keys censored
    assert again.rc == 0, again.why()
    assert again.changed == 0, again.why()
    assert service_pids(tmp / "hosts") == before
    keys = (tmp / "controller" / "demo" / "pki").glob("**/*.key")
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in again.output  # fl_process's key
    for line in {line for key in keys for line in key.read_text().splitlines()[1:-1]}:
        assert line not in again.output


def test_status_shows_every_service_finished(deployed):
    _, inventory, _ = deployed
    run = playbook("status.yml", inventory)
    assert run.rc == 0 and run.changed == 0, run.why()
    assert "ga (global_aggregator): finished, global round" in run.output
    for name in sorted(CLIENTS):
        assert f"{name} (client): finished" in run.output


def test_changed_epochs_restart_only_the_clients(deployed):
    tmp, _, _ = deployed
    before = service_pids(tmp / "hosts")
    inventory = local_inventory_same_ports(tmp, lambda tiers, cv: cv.update(hfl_local_epochs=2))
    run = playbook("place.yml", inventory)
    assert run.rc == 0, run.why()
    after = service_pids(tmp / "hosts")
    assert {s for s in before if after.get(s) == before[s]} == AGGREGATORS
    assert set(after) == AGGREGATORS | CLIENTS


def test_moving_a_client_reloads_it_without_restart(deployed):
    tmp, _, _ = deployed

    def move_c1(tiers, cv):
        cv.update(hfl_local_epochs=2)
        tiers["edge"]["c1"]["hfl_link_cost"] = {"la1": 9, "la2": 1}

    before = service_pids(tmp / "hosts")
    run = playbook("place.yml", local_inventory_same_ports(tmp, move_c1))
    assert run.rc == 0, run.why()
    assert service_pids(tmp / "hosts") == before
    config = json.loads((tmp / "hosts" / "demo" / "c1" / "config.yaml").read_text())
    la2 = json.loads((tmp / "hosts" / "demo" / "la2" / "config.yaml").read_text())
    assert config["parent"] == f"127.0.0.1:{la2['port']}"


def test_reset_removes_every_process_and_folder(deployed):
    tmp, inventory, _ = deployed
    run = playbook("reset.yml", inventory)
    assert run.rc == 0, run.why()
    assert processes_mentioning(str(tmp / "hosts")) == []
    assert list((tmp / "hosts").iterdir()) == []
    # The controller keeps the plan and the collected results.
    assert (tmp / "controller" / "demo" / "results" / "ga.jsonl").exists()


def test_flat_fl_inventory_trains_clients_under_the_ga_insecure_too(tmp_path):
    """With hfl_insecure: true (a lab's plain HTTP) no credentials are made or shipped, and
    every service says so in its log."""
    src = ROOT / "inventories" / "local-flat"
    inventory = local_inventory(tmp_path, lambda tiers, cv: cv.update(hfl_insecure=True),
                                source=src)
    try:
        run = playbook("site.yml", inventory)
        assert run.rc == 0, run.why()
        plan = json.loads((tmp_path / "controller" / "flat" / "plan.json").read_text())
        assert set(plan["assignment"].values()) == {"ga"}
        assert not (tmp_path / "controller" / "flat" / "pki").exists()
        for name in ("ga", "c1"):
            folder = tmp_path / "hosts" / "flat" / name
            assert not (folder / "tls").exists()
            assert "TLS IS OFF" in (folder / "service.log").read_text()
        rows = (tmp_path / "controller" / "flat" / "results" / "ga.jsonl").read_text()
        last = json.loads(rows.splitlines()[-1])
        assert last["global_round"] == 10 and last["accuracy"] >= 0.90
        assert sorted(last["participants"]) == ["c1", "c2", "c3", "c4"]
    finally:
        playbook("reset.yml", inventory)
        stop_processes_under(tmp_path)


def test_check_mode_reports_changes_and_places_nothing(tmp_path):
    inventory = local_inventory(tmp_path)
    run = playbook("site.yml", inventory, "--check")
    assert run.rc == 0, run.why()
    assert run.changed >= 8  # plan.json and the seven services would change
    assert not (tmp_path / "controller" / "demo" / "plan.json").exists()
    assert not (tmp_path / "hosts").exists()
    assert processes_mentioning(str(tmp_path)) == []
