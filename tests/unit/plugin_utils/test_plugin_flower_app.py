"""Bring your Flower app: the inventory variables are checked in topology.build, carried into
the services' configs by plan.make_plan, and the app folder is loaded, hashed, archived and its
components import-checked by plugin_utils.flower_app."""

import io
import json
import sys
import tarfile

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    flower_app,
    plan,
    topology,
)
from inventory_fixtures import local_hfl
from pki_fixtures import write_pki

PYPROJECT = """\
[project]
name = "tinyapp"
version = "1.0.0"
dependencies = ["flwr>=1.20"]

[tool.flwr.app]
publisher = "hfl"

[tool.flwr.app.components]
serverapp = "tinyapp.server_app:app"
clientapp = "tinyapp.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
local-epochs = 1
lr = 0.1

[tool.flwr.app.config.data]
batch = 32
"""

CLIENT_APP = """\
from flwr.clientapp import ClientApp
app = ClientApp()
"""

TASK = """\
class Net:
    pass

def evaluate(server_round, arrays):
    return None

not_callable = 3
"""

STRATEGY = """\
from flwr.serverapp.strategy import FedAvg

class Mine(FedAvg):
    def __init__(self, *, boost: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.boost = boost
"""


@pytest.fixture
def app_dir(tmp_path):
    root = tmp_path / "tinyapp-project"
    pkg = root / "tinyapp"
    pkg.mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "__init__.py").write_text("")
    (pkg / "client_app.py").write_text(CLIENT_APP)
    (pkg / "task.py").write_text(TASK)
    (pkg / "strategy.py").write_text(STRATEGY)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"junk")
    return root


def errors_of(**pipeline_vars):
    with pytest.raises(topology.TopologyError) as e:
        topology.build(*local_hfl(ga=pipeline_vars))
    return e.value.errors


# --- topology: types, one line per mistake naming the variable ---------------------------

@pytest.mark.parametrize("vars_, expected", [
    ({"hfl_flower_app": 3}, "host ga: hfl_flower_app: must be a string, got 3"),
    ({"hfl_client_app": "task.client_app"},
     "host ga: hfl_client_app: must be 'module:attr' (e.g. 'task:attr'), got 'task.client_app'"),
    ({"hfl_model": "task:"}, "host ga: hfl_model: must be 'module:callable'"),
    ({"hfl_evaluate_fn": 7}, "host ga: hfl_evaluate_fn: must be 'module:function'"),
    ({"hfl_run_config": ["lr", 0.1]}, "host ga: hfl_run_config: must be a map key -> value"),
    ({"hfl_run_config": {"lr": [0.1, 0.2]}},
     "host ga: hfl_run_config: 'lr': must be a bool, int, float or string"),
    ({"hfl_run_config": {"data": {"sizes": [1]}}},
     "host ga: hfl_run_config: 'data.sizes': must be a bool, int, float or string"),
    ({"hfl_train_config": {"lr": {"a": 1}}},
     "host ga: hfl_train_config: 'lr': must be an int, float, string, bool or a list"),
    ({"hfl_train_config": {"mix": [1, "a"]}}, "host ga: hfl_train_config: 'mix': must be"),
    ({"hfl_evaluate_config": "batch=32"}, "host ga: hfl_evaluate_config: must be a map"),
    ({"hfl_ga_strategy": "flwr.serverapp.strategy:FedAdam"},
     "host ga: hfl_ga_strategy: must be a map {class: 'module:Name', kwargs: {...}}"),
    ({"hfl_ga_strategy": {"class": "FedAdam"}},
     "host ga: hfl_ga_strategy: class: must be 'module:Name'"),
    ({"hfl_la_strategy": {"class": "flwr.serverapp.strategy:FedAvg", "kwargs": [1]}},
     "host ga: hfl_la_strategy: kwargs: must be a map keyword -> value, got [1]"),
    ({"hfl_la_strategy": {"class": "m:C", "kwargs": {"fraction-train": 1}}},
     "host ga: hfl_la_strategy: kwargs: 'fraction-train' is not a Python keyword name"),
    ({"hfl_ga_strategy": {"class": "m:C", "args": {}}},
     "host ga: hfl_ga_strategy: unknown key 'args'"),
    ({"hfl_la_keep_strategy_state": "yes"},
     "host ga: hfl_la_keep_strategy_state: must be true or false, got 'yes'"),
    ({"hfl_evaluate_every": -1}, "host ga: hfl_evaluate_every: must be an integer >= 0, got -1"),
    ({"hfl_evaluate_every": 1.5}, "host ga: hfl_evaluate_every: must be an integer >= 0"),
])
def test_each_app_variable_mistake_is_one_line(vars_, expected):
    errs = errors_of(**vars_)
    assert len(errs) == 1 and errs[0].startswith(expected), errs
    assert "\n" not in errs[0]


def test_every_mistake_reported_at_once():
    errs = errors_of(hfl_model="Net", hfl_evaluate_every=-2, hfl_la_keep_strategy_state=1)
    assert [e.split(":")[1].strip() for e in errs] == [
        "hfl_la_keep_strategy_state", "hfl_evaluate_every", "hfl_model"]


def test_app_variables_read_and_run_config_flattened():
    topo = topology.build(*local_hfl(ga={
        "hfl_client_app": "pkg.client:app",
        "hfl_run_config": {"lr": 0.01, "data": {"batch": 16}},
        "hfl_ga_strategy": {"class": "flwr.serverapp.strategy:FedAdam"},
        "hfl_evaluate_every": 2,
    }))
    p = topo.pipeline
    assert p.run_config == {"lr": 0.01, "data.batch": 16}
    assert p.ga_strategy == {"class": "flwr.serverapp.strategy:FedAdam", "kwargs": {}}
    assert p.la_strategy is None and p.evaluate_every == 2
    assert "hfl_flower_app" in topology.inventory_vars()
    assert "hfl_ga_strategy" in topology.inventory_vars()


# --- plan: which service gets which key ------------------------------------------------------

def by_name(p):
    return {s["name"]: s for s in p["services"]}


APP_VARS = {
    "hfl_client_app": "tinyapp.client_app:app",
    "hfl_run_config": {"lr": 0.01},
    "hfl_train_config": {"proximal-mu": 0.1},
    "hfl_evaluate_config": {"batch": 64},
    "hfl_ga_strategy": {"class": "flwr.serverapp.strategy:FedAdam", "kwargs": {"eta": 0.05}},
    "hfl_la_strategy": {"class": "flwr.serverapp.strategy:FedAvg"},
    "hfl_la_keep_strategy_state": True,
    "hfl_evaluate_every": 2,
    "hfl_model": "tinyapp.task:Net",
    "hfl_evaluate_fn": "tinyapp.task:evaluate",
}


def test_plan_carries_each_variable_to_the_services_that_use_it(app_dir):
    app = flower_app.load(str(app_dir), "host ga")
    s = by_name(plan.make_plan(topology.build(*local_hfl(ga=APP_VARS)), app=app))
    ga, la, client = s["ga"]["config"], s["la1"]["config"], s["c1"]["config"]
    assert ga["app_dir"] == s["ga"]["dir"] + "/app" and client["app_dir"].endswith("/c1/app")
    assert la["app_dir"].endswith("/la1/app")
    assert ga["strategy"] == "flwr.serverapp.strategy:FedAdam"
    assert ga["strategy_kwargs"] == {"eta": 0.05}
    assert la["strategy"] == "flwr.serverapp.strategy:FedAvg" and "strategy_kwargs" not in la
    assert la["keep_strategy_state"] is True and "keep_strategy_state" not in ga
    assert ga["train_config"] == la["train_config"] == {"proximal-mu": 0.1}
    assert "train_config" not in client
    assert ga["evaluate_config"] == {"batch": 64} and ga["evaluate_every"] == 2
    assert ga["model"] == "tinyapp.task:Net" and ga["evaluate_fn"] == "tinyapp.task:evaluate"
    assert ga["run_config"] == client["run_config"] == {"lr": 0.01} and "run_config" not in la
    assert client["client_app"] == "tinyapp.client_app:app" and "client_app" not in ga
    for key in ("model", "evaluate_every", "strategy"):
        assert key not in client


def test_client_app_defaults_to_the_folders_clientapp(app_dir):
    app = flower_app.load(str(app_dir), "host ga")
    p = plan.make_plan(topology.build(*local_hfl()), app=app)
    assert by_name(p)["c2"]["config"]["client_app"] == "tinyapp.client_app:app"
    assert p["app"] == {"source": str(app_dir), "digest": app.digest}


def test_no_app_variables_leave_configs_and_digests_as_before():
    p = plan.make_plan(topology.build(*local_hfl()))
    assert "app" not in p
    for s in p["services"]:
        assert not {"app_dir", "strategy", "run_config", "client_app"} & set(s["config"])
        assert s["digest"] == plan.config_digest(s["config"])


def test_digest_follows_strategy_and_app_content(app_dir):
    def plan_of(app=None, **ga_vars):
        return by_name(plan.make_plan(topology.build(*local_hfl(ga=ga_vars)), app=app))

    app = flower_app.load(str(app_dir), "host ga")
    base = plan_of(app)
    assert plan_of(flower_app.load(str(app_dir), "host ga")) == base  # same folder: no-op
    fedadam = plan_of(app, hfl_ga_strategy={"class": "flwr.serverapp.strategy:FedAdam"})
    assert fedadam["ga"]["digest"] != base["ga"]["digest"]
    assert fedadam["la1"]["digest"] == base["la1"]["digest"]
    assert fedadam["c1"]["digest"] == base["c1"]["digest"]
    la_kwargs = plan_of(app, hfl_la_strategy={"class": "m:S", "kwargs": {"x": 1}})
    assert la_kwargs["la2"]["digest"] != base["la2"]["digest"]
    assert la_kwargs["ga"]["digest"] == base["ga"]["digest"]

    (app_dir / "tinyapp" / "task.py").write_text(TASK + "\n# edited\n")
    edited = plan_of(flower_app.load(str(app_dir), "host ga"))
    assert all(edited[n]["digest"] != base[n]["digest"] for n in base)
    assert all(edited[n]["config"] == base[n]["config"] for n in base)


# --- the folder: resolve, load, hash, archive --------------------------------------------

def test_resolve_relative_to_the_inventory_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert flower_app.resolve("../apps/x", "/inv/local") == "/inv/apps/x"
    assert flower_app.resolve("/abs/app/", "/inv") == "/abs/app"
    assert flower_app.resolve("~/app", "/inv") == str(tmp_path / "app")


def test_load_reads_components_and_flattened_config(app_dir):
    app = flower_app.load(str(app_dir), "host ga")
    assert app.clientapp == "tinyapp.client_app:app"
    assert app.config == {"num-server-rounds": 3, "local-epochs": 1, "lr": 0.1,
                          "data.batch": 32}
    assert app.files == ("pyproject.toml", "tinyapp/__init__.py", "tinyapp/client_app.py",
                         "tinyapp/strategy.py", "tinyapp/task.py")


def test_digest_ignores_caches_and_mtimes_but_not_names(app_dir):
    before = flower_app.load(str(app_dir), "host ga").digest
    (app_dir / "tinyapp" / "__pycache__" / "more.pyc").write_bytes(b"x")
    (app_dir / ".git").mkdir()
    (app_dir / ".git" / "HEAD").write_text("ref")
    (app_dir / "tinyapp" / "task.py").touch()
    assert flower_app.load(str(app_dir), "host ga").digest == before
    (app_dir / "tinyapp" / "task.py").rename(app_dir / "tinyapp" / "task2.py")
    assert flower_app.load(str(app_dir), "host ga").digest != before


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing", "is not a folder on the controller"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "has no pyproject.toml"),
    (lambda d: ((d / "bad").mkdir(), (d / "bad" / "pyproject.toml").write_text("[x\n"))[0]
     or d / "bad", "pyproject.toml: "),
    (lambda d: ((d / "noflwr").mkdir(),
                (d / "noflwr" / "pyproject.toml").write_text("[project]\nname='x'\n"))[0]
     or d / "noflwr", "has no [tool.flwr.app] table"),
])
def test_not_a_flower_app_folder_is_one_line(tmp_path, make, expected):
    with pytest.raises(topology.TopologyError) as e:
        flower_app.load(str(make(tmp_path)), "host ga")
    assert len(e.value.errors) == 1
    assert e.value.errors[0].startswith("host ga: hfl_flower_app: ")
    assert expected in e.value.errors[0]


def test_run_config_keys_must_be_the_apps(app_dir):
    app = flower_app.load(str(app_dir), "host ga")
    assert flower_app.check_run_config({"lr": 0.2, "data.batch": 8}, app, "host ga") == []
    assert flower_app.check_run_config({"lr": 0.2, "epochs": 2}, app, "host ga") == [
        f"host ga: hfl_run_config: 'epochs' is not a key of [tool.flwr.app.config] in "
        f"{app_dir}/pyproject.toml (keys: data.batch, local-epochs, lr, num-server-rounds)"]
    assert flower_app.check_run_config({"anything": 1}, None, "host ga") == []


def test_archive_is_the_same_bytes_for_the_same_folder(app_dir, tmp_path):
    app = flower_app.load(str(app_dir), "host ga")
    first = flower_app.archive_bytes(app)
    (app_dir / "tinyapp" / "task.py").touch()
    assert flower_app.archive_bytes(flower_app.load(str(app_dir), "host ga")) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == list(app.files)
        assert tar.extractfile("tinyapp/task.py").read().decode() == TASK
    out = tmp_path / "archives"
    path = flower_app.write_archive(app, str(out))
    assert path.endswith(f"{app.digest[:16]}.tar.gz")
    (app_dir / "tinyapp" / "task.py").write_text("x = 1\n")
    newer = flower_app.write_archive(flower_app.load(str(app_dir), "host ga"), str(out))
    assert [p.name for p in out.iterdir()] == [newer.rsplit("/", 1)[1]]


# --- the import check (a real subprocess of this interpreter) ---------------------------

def checks_for(app_dir, **ga_vars):
    app = flower_app.load(str(app_dir), "host ga")
    topo = topology.build(*local_hfl(ga=ga_vars))
    return flower_app.components(topo.pipeline, app), app


def test_import_check_passes_for_good_components(app_dir):
    checks, app = checks_for(
        app_dir, hfl_model="tinyapp.task:Net", hfl_evaluate_fn="tinyapp.task:evaluate",
        hfl_ga_strategy={"class": "flwr.serverapp.strategy:FedAdam", "kwargs": {"eta": 0.05}},
        hfl_la_strategy={"class": "tinyapp.strategy:Mine", "kwargs": {"boost": 2.0}})
    assert [c["var"] for c in checks] == ["hfl_flower_app", "hfl_flower_app", "hfl_model",
                                          "hfl_evaluate_fn", "hfl_ga_strategy",
                                          "hfl_la_strategy"]
    assert [c["kind"] for c in checks[:2]] == ["app_folder", "client_app"]
    assert flower_app.import_check(checks, app.dir, sys.executable, "host ga") == ([], "")
    # The user's folder is left as it was (no byte code written into it).
    assert [p.name for p in app_dir.glob("**/*.pyc")] == ["task.cpython-311.pyc"]


def test_import_check_names_the_variable_of_each_bad_component(app_dir):
    checks, app = checks_for(
        app_dir,
        hfl_client_app="tinyapp.task:Net",
        hfl_model="tinyapp.nope:Net",
        hfl_evaluate_fn="tinyapp.task:not_callable",
        hfl_ga_strategy={"class": "flwr.serverapp.strategy:FedAdam", "kwargs": {"etaa": 1}},
        hfl_la_strategy={"class": "tinyapp.task:Net"})
    errors, skipped = flower_app.import_check(checks, app.dir, sys.executable, "host ga")
    assert skipped == ""
    assert errors[0] == ("host ga: hfl_client_app: 'tinyapp.task:Net': TypeError: is a type, "
                         "not a flwr ClientApp")
    assert errors[1] == ("host ga: hfl_model: 'tinyapp.nope:Net': ModuleNotFoundError: "
                         "No module named 'tinyapp.nope'")
    assert errors[2] == ("host ga: hfl_evaluate_fn: 'tinyapp.task:not_callable': TypeError: "
                         "int object is not callable")
    assert errors[3].startswith("host ga: hfl_ga_strategy: 'flwr.serverapp.strategy:FedAdam': "
                                "TypeError: ")
    assert "unexpected keyword argument 'etaa'" in errors[3]
    assert errors[4].startswith("host ga: hfl_la_strategy: 'tinyapp.task:Net': TypeError: ")
    assert len(errors) == 5 and all("\n" not in e for e in errors)


def test_import_check_validates_the_pyproject_as_flwr_does(app_dir):
    text = PYPROJECT.replace('publisher = "hfl"\n', "")
    (app_dir / "pyproject.toml").write_text(text)
    checks, app = checks_for(app_dir)
    errors, _ = flower_app.import_check(checks, app.dir, sys.executable, "host ga")
    assert errors == [f"host ga: hfl_flower_app: '{app_dir}': ValueError: Invalid "
                      f"pyproject.toml: - Property \"publisher\" missing in [tool.flwr.app]"]


def test_import_check_survives_a_module_that_exits(app_dir):
    (app_dir / "tinyapp" / "bye.py").write_text("import sys\nprint('hi')\nsys.exit(3)\n")
    checks, app = checks_for(app_dir, hfl_model="tinyapp.bye:f")
    errors, _ = flower_app.import_check(checks, app.dir, sys.executable, "host ga")
    assert errors == ["host ga: hfl_model: 'tinyapp.bye:f': SystemExit: 3"]


def test_import_check_without_flwr_is_skipped_not_failed(app_dir, tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")
    fake.chmod(0o755)
    checks, app = checks_for(app_dir)
    errors, skipped = flower_app.import_check(checks, app.dir, str(fake), "host ga")
    assert errors == [] and "cannot import flwr" in skipped


def test_check_key_changes_with_app_components_and_python(app_dir):
    checks, app = checks_for(app_dir)
    key = flower_app.check_key(checks, app, "/py")
    assert key == flower_app.check_key(json.loads(json.dumps(checks)), app, "/py")
    assert key != flower_app.check_key(checks, app, "/other/py")
    assert key != flower_app.check_key(checks[:0], app, "/py")


def test_components_without_app_or_variables_is_empty():
    topo = topology.build(*local_hfl())
    assert flower_app.components(topo.pipeline, None) == []


def test_every_planned_config_is_one_fl_service_accepts_for_its_role(app_dir, tmp_path):
    """The plan writes exactly the contract's keys, each for a role that reads it."""
    from fl_service.config import load_config

    app = flower_app.load(str(app_dir), "host ga")
    services = plan.make_plan(topology.build(*local_hfl(ga=APP_VARS)), app=app)["services"]
    # fl_service reads the credentials its config names: real ones, at paths of this test's.
    pki = write_pki(tmp_path / "pki", {s["name"]: (s["role"], s["address"]) for s in services})
    for s in services:
        config = {**s["config"], "tls_cert": str(pki / "services" / f"{s['name']}.crt"),
                  "tls_key": str(pki / "services" / f"{s['name']}.key"),
                  "tls_ca": str(pki / "ca.crt")}
        assert config.keys() == s["config"].keys()  # the plan names all three
        path = tmp_path / f"{s['name']}.yaml"
        path.write_text(json.dumps(config))
        cfg = load_config(s["role"], path, environ={})
        for key, value in config.items():
            assert cfg[key] == value, (s["name"], key)
