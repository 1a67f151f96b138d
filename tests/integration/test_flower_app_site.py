"""Bring your Flower app: site.yml on inventories/local-flower (the local inventory's shape: GA,
2 LAs, 4 clients, process runtime) training examples/quickstart-hfl, with FedAvgM on the GA and
federated evaluation every 2 global rounds. It trains to test accuracy >= 0.85 with federated
figures in the GA's results and the report; a re-run with the same folder changes nothing; an
edited app file restarts every service; a bad strategy keyword, component or folder stops the
run before anything is placed, with one line naming the variable. On the podman runtime every
pod mounts the app read-only."""

import json
import shutil
import uuid

import pytest
from hfl_helpers import (
    ROOT,
    local_inventory,
    playbook,
    processes_mentioning,
    service_pids,
    stop_processes_under,
)
from test_podman_runtime import (  # noqa: F401 (podman_store is a fixture)
    IMAGE,
    host_paths,
    import_base_image,
    podman,
    podman_store,
)

pytestmark = pytest.mark.integration
APP = ROOT / "examples" / "quickstart-hfl"
INVENTORY = ROOT / "inventories" / "local-flower"
SERVICES = {"ga", "la1", "la2", "c1", "c2", "c3", "c4"}
STRATEGY = {"class": "flwr.serverapp.strategy:FedAvgM", "kwargs": {"server_momentum": 0.5}}


def flower_inventory(tmp, app_dir, **more):
    """inventories/local-flower with free ports, its state under tmp, the app at app_dir."""
    def edit(tiers, cluster_vars):
        cluster_vars.update({"hfl_flower_app": str(app_dir), **more})
    return local_inventory(tmp, edit, source=INVENTORY)


def test_the_example_inventory_finds_the_example_app(tmp_path):
    """Its relative hfl_flower_app is relative to the inventory's folder."""
    run = playbook("plan.yml", INVENTORY, "-e", f"hfl_state_dir={tmp_path}")
    assert run.rc == 0, run.output[-3000:]
    plan = json.loads((tmp_path / "flower" / "plan.json").read_text())
    assert plan["app"]["source"] == str(APP)
    assert (tmp_path / "flower" / "app" / f"{plan['app']['digest'][:16]}.tar.gz").is_file()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flower")
    app_dir = tmp / "app"  # a copy the tests may edit
    shutil.copytree(APP, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    inventory = flower_inventory(tmp, app_dir)
    first = playbook("site.yml", inventory)
    yield tmp, inventory, first, app_dir
    playbook("reset.yml", inventory)
    stop_processes_under(tmp)


def test_site_trains_the_app_with_its_strategy_and_federated_evaluation(deployed):
    tmp, _, first, _ = deployed
    assert first.rc == 0, first.output[-3000:]
    pipeline = tmp / "controller" / "flower"
    rows = [json.loads(line) for line in
            (pipeline / "results" / "ga.jsonl").read_text().splitlines()]
    assert rows[-1]["global_round"] == 10 and rows[-1]["accuracy"] >= 0.85, rows[-1]
    federated = {r["global_round"]: r["federated"] for r in rows if r.get("federated")}
    assert sorted(federated) == [2, 4, 6, 8, 10]
    assert federated[10]["eval_acc"] >= 0.85
    plan = json.loads((pipeline / "plan.json").read_text())
    assert plan["app"]["source"] == str(tmp / "app")
    configs = {s["name"]: s["config"] for s in plan["services"]}
    assert configs["ga"]["model"] == "quickstart_hfl.task:Net"
    assert configs["ga"]["strategy"] == STRATEGY["class"]
    assert configs["ga"]["strategy_kwargs"] == STRATEGY["kwargs"]
    assert configs["c1"]["client_app"] == "quickstart_hfl.client_app:app"  # the folder's
    assert configs["c1"]["run_config"] == {"local-epochs": 1, "learning-rate": 0.05}
    for name in SERVICES:  # each service runs its own copy, shipped from the archive
        shipped = tmp / "hosts" / "flower" / name / "app"
        assert configs[name]["app_dir"] == str(shipped)
        assert (shipped / "quickstart_hfl" / "client_app.py").read_text() == (
            APP / "quickstart_hfl" / "client_app.py").read_text()
    assert "<h2>Federated evaluation</h2>" in (pipeline / "report.html").read_text()


def test_second_run_with_the_same_folder_changes_nothing(deployed):
    tmp, inventory, _, _ = deployed
    before = service_pids(tmp / "hosts")
    assert set(before) == SERVICES
    again = playbook("site.yml", inventory)
    assert again.rc == 0, again.output[-3000:]
    assert again.changed == 0, again.output[-3000:]
    assert service_pids(tmp / "hosts") == before


def test_an_edited_app_file_restarts_every_service_running_it(deployed):
    tmp, inventory, _, app_dir = deployed
    before = service_pids(tmp / "hosts")
    task = app_dir / "quickstart_hfl" / "task.py"
    task.write_text(task.read_text() + "\n# edited\n")
    run = playbook("place.yml", inventory)
    assert run.rc == 0, run.output[-3000:]
    after = service_pids(tmp / "hosts")
    assert set(after) == SERVICES
    assert all(after[n] != before[n] for n in SERVICES)
    shipped = tmp / "hosts" / "flower" / "c3" / "app" / "quickstart_hfl" / "task.py"
    assert shipped.read_text() == task.read_text()


BAD = {
    "strategy keyword": (
        {"hfl_ga_strategy": {"class": "flwr.serverapp.strategy:FedAdam",
                             "kwargs": {"etaa": 0.1}}},
        "host ga: hfl_ga_strategy: 'flwr.serverapp.strategy:FedAdam': TypeError: "),
    "client app": (
        {"hfl_client_app": "quickstart_hfl.client:app"},
        "host ga: hfl_client_app: 'quickstart_hfl.client:app': ModuleNotFoundError: "
        "No module named 'quickstart_hfl.client'"),
    "folder": (  # relative: to the inventory's folder
        {"hfl_flower_app": "../no-such-app"},
        "host ga: hfl_flower_app: '{tmp}/no-such-app' is not a folder on the controller"),
    "run config key": (
        {"hfl_run_config": {"lr": 0.1}},
        "host ga: hfl_run_config: 'lr' is not a key of [tool.flwr.app.config]"),
}


@pytest.mark.parametrize("vars_, expected", BAD.values(), ids=BAD.keys())
def test_bad_app_input_fails_before_placing(tmp_path, vars_, expected):
    inventory = flower_inventory(tmp_path, APP, **vars_)
    run = playbook("site.yml", inventory)
    assert run.rc != 0
    expected = expected.replace("{tmp}", str(tmp_path))
    lines = [line for line in run.output.splitlines() if expected in line]
    assert lines, run.output[-2000:]
    assert "PLAY [Place the services]" not in run.output
    assert not (tmp_path / "hosts").exists()
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.podman
def test_podman_pods_mount_the_app_read_only_and_train_it(podman_store, tmp_path):  # noqa: F811
    """The same app on the podman runtime: unpacked once on the podman host into
    <hfl_app_host_dir>/<pipeline>, mounted read-only at /opt/hfl/app in every pod."""
    env = podman_store
    import_base_image(env)
    pipeline = f"fl{uuid.uuid4().hex[:6]}"
    apps = tmp_path / "apps"
    inventory = flower_inventory(
        tmp_path, APP, hfl_runtime="podman", hfl_pipeline=pipeline, hfl_global_rounds=6,
        hfl_image=IMAGE, hfl_image_python=str(ROOT / ".venv/bin/python"),
        hfl_image_host_paths=host_paths(), hfl_podman_dir=str(tmp_path / "units"),
        hfl_app_host_dir=str(apps))
    run = playbook("site.yml", inventory, env=env)
    assert run.rc == 0, run.output[-4000:]
    rows = [json.loads(line) for line in
            (tmp_path / "controller" / pipeline / "results" / "ga.jsonl").read_text().splitlines()]
    assert rows[-1]["global_round"] == 6 and rows[-1]["accuracy"] >= 0.85, rows[-1]
    assert [r["global_round"] for r in rows if r.get("federated")] == [2, 4, 6]
    assert (apps / pipeline / "quickstart_hfl" / "client_app.py").is_file()
    mounts = podman(env, "inspect", "--format", "{{json .Mounts}}", "c1-pod-0-fl-service")
    (app_mount,) = [m for m in json.loads(mounts) if m["Destination"] == "/opt/hfl/app"]
    assert app_mount["Source"] == str(apps / pipeline) and app_mount["RW"] is False
    reset = playbook("reset.yml", inventory, env=env)
    assert reset.rc == 0, reset.output[-4000:]
    assert not (apps / pipeline).exists()
