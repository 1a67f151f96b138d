"""Role fl_prometheus over SSH on a real host of an SSH fleet (network namespaces with their
own sshd): playbooks/prometheus.yml runs Prometheus on the GA's host, as the package's
prometheus user, on its default port at the host's address; from the controller its API shows
every service's global round while the pipeline trains to its last; reset.yml stops it."""

import json

import pytest
from hfl_helpers import ROOT, playbook, processes_mentioning, write_inventory
from prometheus_api import by_label, poll, query

pytestmark = [pytest.mark.integration, pytest.mark.fleet]
ROUNDS = 5


def test_prometheus_on_the_ga_host_of_an_ssh_fleet(fleet_factory, tmp_path, prometheus_dir):
    fleet = fleet_factory(["cloud-1", "fog-1", "edge-1", "edge-2"])
    host = {h.name: h for h in fleet.hosts}
    roles = {"cloud-1": "global_aggregator", "fog-1": "local_aggregator"}
    tiers = {"cloud": {}, "fog": {}, "edge": {}}
    for h in fleet.hosts:
        tier = h.name.split("-")[0]
        tiers[tier][h.name] = {**fleet.connection_vars(h), "hfl_bind_host": h.address,
                               "hfl_role": roles.get(h.name, "client"),
                               "hfl_host_state_dir": str(tmp_path / "hosts" / h.name)}
        if tier == "edge":
            tiers[tier][h.name]["hfl_link_cost"] = {"fog-1": 1}
    inventory = write_inventory(tmp_path / "inventory", tiers, {
        "hfl_pipeline": "fleet", "hfl_runtime": "process", "hfl_dataset": "digits",
        "hfl_global_rounds": ROUNDS, "hfl_local_rounds": 1, "hfl_min_participants": 1,
        "hfl_state_dir": str(tmp_path / "controller"), "hfl_venv": str(ROOT / ".venv"),
        "hfl_prometheus_dir": str(prometheus_dir),
        "hfl_prometheus_bind_host": host["cloud-1"].address,
        "hfl_prometheus_scrape_interval": "1s"})

    def fetch(url):
        return fleet.run(["curl", "-sf", url], capture_output=True, check=True,
                         timeout=30).stdout

    base = f"http://{host['cloud-1'].address}:9190"
    home = prometheus_dir / "fleet"
    placed = playbook("place.yml", inventory, runner=fleet.run)
    assert placed.rc == 0, placed.why()
    run = playbook("prometheus.yml", inventory, runner=fleet.run)
    assert run.rc == 0, run.why()

    services = set(host)
    poll(f"global round {ROUNDS} from every service",
         lambda: by_label(query(base, "hfl_global_round", fetch), "host"),
         lambda got: got == dict.fromkeys(services, str(ROUNDS)))
    assert by_label(query(base, "up", fetch), "host") == dict.fromkeys(services, "1")
    targets = json.loads((home / "targets.json").read_text())
    assert {g["targets"][0] for g in targets} == {f"{h.address}:8080" for h in fleet.hosts}
    pid = (home / "prometheus.pid").read_text().strip()
    owner = fleet.run(["ps", "-o", "user=", "-p", pid], capture_output=True, text=True,
                      check=True).stdout.strip()
    assert owner == "prometheus"

    reset = playbook("reset.yml", inventory, runner=fleet.run)
    assert reset.rc == 0, reset.why()
    assert processes_mentioning(str(home)) == []
    assert not home.exists()
