"""Nothing left behind: a client removed from the inventory of a placed pipeline is stopped by
the next place.yml, or by reset.yml alone, on the process runtime and on podman. A departed
host that cannot be reached fails the run with one line naming it, and its service is tried
again at the next run rather than forgotten.

The pipeline is the local inventory cut to 1 GA, 1 LA and 2 clients (c2 is the one removed),
with rounds enough that it is still training when c2 leaves."""

import json
import uuid
from pathlib import Path

import pytest
import yaml
from hfl_helpers import (
    ROOT,
    free_ports,
    local_inventory,
    playbook,
    service_pids,
    stop_processes_under,
)
from test_podman_runtime import (
    IMAGE,
    assert_nothing_left,
    host_paths,
    import_base_image,
    podman,
    podman_store,
)

pytestmark = pytest.mark.integration
__all__ = ["podman_store"]  # the fixture, used by test_podman_client_removed_...


def small_pipeline(tiers, cluster_vars):
    del tiers["fog"]["la2"]
    for name in ("c3", "c4"):
        del tiers["edge"][name]
    for client in tiers["edge"].values():
        client["hfl_link_cost"] = {"la1": 1}
    # Partitions fixed, so that c1's data, and so its config, stay when c2 leaves.
    cluster_vars.update(hfl_global_rounds=100000, hfl_num_partitions=2,
                        hfl_pipeline=f"lb{uuid.uuid4().hex[:6]}")


def remove_host(inventory, name):
    hosts_yml = Path(inventory) / "hosts.yml"
    doc = yaml.safe_load(hosts_yml.read_text())
    for tier in doc["hfl_cluster"]["children"].values():
        tier["hosts"].pop(name, None)
    hosts_yml.write_text(yaml.safe_dump(doc, sort_keys=False))


def pipeline_dir(inventory):
    doc = yaml.safe_load((Path(inventory) / "hosts.yml").read_text())
    cluster_vars = doc["hfl_cluster"]["vars"]
    return Path(cluster_vars["hfl_state_dir"]) / cluster_vars["hfl_pipeline"]


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def placed_pipeline(tmp_path):
    """(inventory, {service: pid}) of the pipeline placed on the process runtime; whatever it
    started is stopped afterwards."""
    inventory = local_inventory(tmp_path, small_pipeline)
    try:
        placed = playbook("place.yml", inventory)
        assert placed.rc == 0, placed.why()
        pids = service_pids(tmp_path / "hosts")
        assert sorted(pids) == ["c1", "c2", "ga", "la1"]
        yield inventory, pids
    finally:
        stop_processes_under(tmp_path)


def test_a_client_removed_from_the_inventory_is_stopped_at_the_next_placement(
        placed_pipeline, tmp_path):
    inventory, pids = placed_pipeline

    remove_host(inventory, "c2")
    preview = playbook("place.yml", inventory, "--check")
    assert preview.rc == 0, preview.why()
    assert "changed: [ga -> c2] => (item=c2 on c2)" in preview.output, preview.why()
    assert alive(pids["c2"])

    replaced = playbook("place.yml", inventory)
    assert replaced.rc == 0, replaced.why()
    assert not alive(pids["c2"])
    assert not (tmp_path / "hosts" / pipeline_dir(inventory).name / "c2").exists()
    # The others were left as they ran.
    assert service_pids(tmp_path / "hosts") == {n: pids[n] for n in ("c1", "ga", "la1")}
    assert list((pipeline_dir(inventory) / "stale").iterdir()) == []

    again = playbook("place.yml", inventory)
    assert again.rc == 0, again.why()
    assert "Stop the stale services" not in again.output


def test_a_client_removed_from_the_inventory_is_stopped_by_reset_alone(placed_pipeline,
                                                                       tmp_path):
    inventory, pids = placed_pipeline

    remove_host(inventory, "c2")
    reset = playbook("reset.yml", inventory)
    assert reset.rc == 0, reset.why()
    assert not any(alive(pid) for pid in pids.values())
    assert service_pids(tmp_path / "hosts") == {}
    assert not (tmp_path / "hosts" / pipeline_dir(inventory).name).exists()


def test_a_departed_host_that_cannot_be_reached_fails_the_run_naming_it(placed_pipeline,
                                                                        tmp_path):
    inventory, pids = placed_pipeline

    # c2 was reached over SSH, and its host has since gone dark (nothing listens there).
    plan_json = pipeline_dir(inventory) / "plan.json"
    plan = json.loads(plan_json.read_text())
    [port] = free_ports(1)
    reached_as = plan["connections"]["c2"]
    plan["connections"]["c2"] = {"ansible_host": "127.0.0.1", "ansible_port": port}
    plan_json.write_text(json.dumps(plan))
    remove_host(inventory, "c2")
    failed = playbook("place.yml", inventory)
    assert failed.rc != 0
    # One line naming it.
    assert failed.failure.startswith(
        "hfl.orchestration.fl_placement : Fail naming the stale services whose hosts could not be "
        f"reached on ga: c2: its host c2 left the pipeline and did not answer at 127.0.0.1:{port}, "
        "so its service may still run there;"), failed.why()
    assert len(failed.failure.splitlines()) == 1, failed.why()
    # Placed all the same, and c2 is not forgotten: its record stays for the next run.
    assert alive(pids["c2"])
    assert sorted(service_pids(tmp_path / "hosts")) == ["c1", "c2", "ga", "la1"]
    [record] = (pipeline_dir(inventory) / "stale").iterdir()
    assert json.loads(record.read_text())["name"] == "c2"

    # The host answers again, reached as it was placed (this machine, with the inventory's
    # interpreter): the next run stops it.
    record.write_text(json.dumps({**json.loads(record.read_text()), "connection": reached_as}))
    replaced = playbook("place.yml", inventory)
    assert replaced.rc == 0, replaced.why()
    assert not alive(pids["c2"])
    assert list((pipeline_dir(inventory) / "stale").iterdir()) == []


def test_podman_client_removed_from_the_inventory_is_stopped_by_place_and_reset(
        podman_store, tmp_path):
    env = podman_store
    import_base_image(env)

    # c3 stays too, so that the pipeline still has a client when c1 leaves before reset.yml.
    def edit(tiers, cluster_vars):
        c3 = tiers["edge"]["c3"]
        small_pipeline(tiers, cluster_vars)
        tiers["edge"]["c3"] = {**c3, "hfl_link_cost": {"la1": 1}}
        cluster_vars.update(hfl_runtime="podman", hfl_image=IMAGE, hfl_num_partitions=3,
                            hfl_image_python=str(ROOT / ".venv/bin/python"),
                            hfl_image_host_paths=host_paths(),
                            hfl_podman_dir=str(tmp_path / "units"))

    inventory = local_inventory(tmp_path, edit)
    pipeline = pipeline_dir(inventory).name

    def pods():
        return sorted(podman(env, "pod", "ps", "--format", "{{.Name}}").split())

    def volumes_of(name):
        return [v for v in podman(env, "volume", "ls", "--quiet").split()
                if v.startswith(f"{name}-")]

    placed = playbook("place.yml", inventory, env=env)
    assert placed.rc == 0, placed.why()
    assert pods() == ["c1-pod-0", "c2-pod-0", "c3-pod-0", "ga-pod-0", "la1-pod-0"]
    assert volumes_of("c2")

    remove_host(inventory, "c2")
    replaced = playbook("place.yml", inventory, env=env)
    assert replaced.rc == 0, replaced.why()
    assert pods() == ["c1-pod-0", "c3-pod-0", "ga-pod-0", "la1-pod-0"]
    assert volumes_of("c2") == []
    assert "c2-tls" not in podman(env, "secret", "ls", "--format", "{{.Name}}")
    assert not (tmp_path / "units" / pipeline / "c2.yaml").exists()

    # c1 leaves too, and only reset.yml runs: nothing of the pipeline is left, c1's included.
    remove_host(inventory, "c1")
    reset = playbook("reset.yml", inventory, env=env)
    assert reset.rc == 0, reset.why()
    assert_nothing_left(env, pipeline)
