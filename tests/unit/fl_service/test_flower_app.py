"""The ClientApp runner (fl_service/flower_app.py) and the built-in app: one Context for the
process, run_config fusion, node_config, error updates, legacy NumPyClient apps, bad paths."""

import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_service.config import KEYS, ConfigError
from fl_service.flower_app import ClientRunner, array_record, ndarray_view
from fl_service.transport import encode_frame, read_frame

torch.set_num_threads(1)

BASE = {key: spec.default for key, spec in KEYS.items()}
BASE.update(name="c0", port=1, parent="127.0.0.1:2", device="cpu")
ARRAYS = {"layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
          "layer.bias": np.ones(2, dtype=np.float32),
          "bn.num_batches_tracked": np.array(3, dtype=np.int64)}

PYPROJECT = """\
[project]
name = "{name}"
version = "1.0.0"

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "{name}.server_app:app"
clientapp = "{name}.client_app:app"

[tool.flwr.app.config]
local-epochs = 1
lr = 0.1
label = "x"
"""

# A Message-API app in the quickstart's shape: counts its calls in context.state, adds lr to
# every array, fails on request, and echoes what its Context holds as metrics.
MESSAGE_APP = """\
import numpy as np
from flwr.app import ArrayRecord, Array, Message, MetricRecord, RecordDict, Context, Error
from flwr.clientapp import ClientApp

app = ClientApp()


def _count(context):
    record = context.state.metric_records.get("calls", MetricRecord({"n": 0}))
    record["n"] = int(record["n"]) + 1
    context.state["calls"] = record
    return record["n"]


@app.train()
def train(msg: Message, context: Context) -> Message:
    calls = _count(context)
    config = msg.content["config"]
    if config.get("fail") == "raise":
        raise RuntimeError("boom\\nsecond line")
    if config.get("fail") == "error":
        return Message(Error(code=7, reason="no data"), reply_to=msg)
    arrays = msg.content["arrays"]
    out = ArrayRecord({k: Array(np.asarray(arrays[k].numpy() + context.run_config["lr"]))
                       for k in arrays})
    metrics = {"train_loss": 0.5, "calls": calls, "num-examples": 10,
               "partition": context.node_config["partition-id"],
               "partitions": context.node_config["num-partitions"],
               "epochs": context.run_config["local-epochs"],
               "server-round": config["server-round"]}
    if config.get("fail") == "no-count":
        del metrics["num-examples"]
    return Message(RecordDict({"arrays": out, "metrics": MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    calls = _count(context)
    metrics = MetricRecord({"loss": 0.25, "accuracy": 0.75, "num-examples": 4, "calls": calls})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
"""

LEGACY_APP = """\
import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp


class Doubler(NumPyClient):
    def __init__(self, partition):
        self.partition = partition

    def fit(self, parameters, config):
        return [p * 2 for p in parameters], 12, {"partition": self.partition,
                                                 "note": "strings are dropped"}

    def evaluate(self, parameters, config):
        return float(sum(float(p.sum()) for p in parameters)), 5, {"accuracy": 0.5}


def client_fn(context: Context):
    return Doubler(int(context.node_config["partition-id"])).to_client()


app = ClientApp(client_fn=client_fn)
"""


@pytest.fixture(autouse=True)
def _restore_sys_path(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_app(tmp_path: Path, name: str, client_app: str = MESSAGE_APP) -> Path:
    folder = tmp_path / name
    package = folder / name
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    (package / "__init__.py").write_text("")
    (package / "client_app.py").write_text(textwrap.dedent(client_app))
    (package / "server_app.py").write_text("")
    return folder


def task(task_id: str, kind: str = "train", **config) -> dict:
    return {"task_id": task_id, "type": kind, "global_round": 3, "local_round": 1,
            "config": {"server-round": 3, "local-round": 1, **config}}


def test_context_state_survives_tasks_and_node_and_run_config_reach_the_app(tmp_path):
    folder = write_app(tmp_path, "app_state")
    runner = ClientRunner({**BASE, "app_dir": str(folder), "partition_id": 2,
                           "num_partitions": 4, "run_config": {"lr": 0.5}})
    assert not runner.builtin and not runner.legacy
    calls = []
    for i in range(3):
        update, out = runner.handle(task(f"t{i}"), ARRAYS)
        calls.append(update["metrics"]["calls"])
    update, _ = runner.handle(task("e", "evaluate"), ARRAYS)
    assert calls == [1, 2, 3] and update["metrics"]["calls"] == 4
    train, out = runner.handle(task("t9"), ARRAYS)
    assert train["metrics"] == {"train_loss": 0.5, "calls": 5, "num-examples": 10,
                                "partition": 2, "partitions": 4, "epochs": 1,
                                "server-round": 3}
    assert train["num_examples"] == 10 and train["task_id"] == "t9"
    assert train["histogram"] == {} and train["train_time_s"] > 0
    assert list(out) == list(ARRAYS)  # state_dict names and order kept
    for name, array in ARRAYS.items():
        np.testing.assert_allclose(out[name], array + 0.5)
    assert update == {"task_id": "e", "num_examples": 4,
                      "metrics": {"loss": 0.25, "accuracy": 0.75, "num-examples": 4,
                                  "calls": 4}}


def test_run_config_is_the_folder_config_with_the_overrides_fused_over_it(tmp_path):
    folder = write_app(tmp_path, "app_fuse")
    runner = ClientRunner({**BASE, "app_dir": str(folder),
                           "run_config": {"lr": 0.01, "label": "y"}})
    assert runner.context.run_config == {"local-epochs": 1, "lr": 0.01, "label": "y"}
    assert runner.context.node_config == {"partition-id": 0, "num-partitions": 1}
    with pytest.raises(ConfigError) as err:
        ClientRunner({**BASE, "app_dir": str(folder), "run_config": {"learning-rate": 1}})
    assert err.value.key == "run_config" and "learning-rate" in str(err.value)
    with pytest.raises(ConfigError, match="run_config: .*lr"):
        ClientRunner({**BASE, "app_dir": str(folder), "run_config": {"lr": [1, 2]}})


@pytest.mark.parametrize("fail, expected", [
    ("raise", "RuntimeError: boom"),
    ("error", "the app replied with error 7: no data"),
    ("no-count", "lack an integer 'num-examples'"),
])
def test_a_failing_task_becomes_an_error_update_and_the_next_task_runs(tmp_path, fail,
                                                                        expected):
    runner = ClientRunner({**BASE, "app_dir": str(write_app(tmp_path, f"app_fail_{fail}"))})
    update, out = runner.handle(task("t1", fail=fail), ARRAYS)
    assert out is None and set(update) == {"task_id", "error"}
    assert expected in update["error"] and "\n" not in update["error"]
    update, out = runner.handle(task("t2"), ARRAYS)
    assert "error" not in update and update["metrics"]["calls"] == 2 and out is not None


def test_unknown_task_type_is_an_error_update(tmp_path):
    runner = ClientRunner({**BASE, "app_dir": str(write_app(tmp_path, "app_type"))})
    update, out = runner.handle(task("q", "query"), ARRAYS)
    assert out is None and "unknown task type" in update["error"]


def test_legacy_numpyclient_app_gets_the_legacy_layout_and_names_back_by_order(tmp_path):
    folder = write_app(tmp_path, "app_legacy", LEGACY_APP)
    runner = ClientRunner({**BASE, "app_dir": str(folder), "partition_id": 1,
                           "num_partitions": 2})
    assert runner.legacy
    update, out = runner.handle(task("t1"), ARRAYS)
    assert update["num_examples"] == 12
    assert update["metrics"] == {"partition": 1, "num-examples": 12}
    assert list(out) == list(ARRAYS)
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(out[name], array * 2)
        assert out[name].dtype == array.dtype and out[name].shape == array.shape
    update, out = runner.handle(task("e1", "evaluate"), ARRAYS)
    assert out is None
    assert update["metrics"] == {"loss": 20.0, "accuracy": 0.5, "num-examples": 5}


def test_client_app_key_wins_over_the_folder_component(tmp_path):
    folder = write_app(tmp_path, "app_pick", LEGACY_APP)
    (folder / "app_pick" / "other.py").write_text(textwrap.dedent(MESSAGE_APP))
    runner = ClientRunner({**BASE, "app_dir": str(folder), "client_app": "app_pick.other:app"})
    assert runner.path == "app_pick.other:app" and not runner.legacy


@pytest.mark.parametrize("cfg, key, words", [
    ({"app_dir": "/no/such/folder"}, "app_dir", "no such folder"),
    ({"app_dir": "."}, "app_dir", "pyproject.toml"),
    ({"client_app": "no_such_module_xyz:app"}, "client_app", "cannot import"),
    ({"client_app": "os:no_such_attr"}, "client_app", "no attribute 'no_such_attr'"),
    ({"client_app": "os:path"}, "client_app", "not a flwr.clientapp.ClientApp"),
    ({"client_app": "fl_service.apps.builtin"}, "client_app", "module:attribute"),
])
def test_a_bad_app_path_is_one_config_error_line_naming_the_key(tmp_path, monkeypatch, cfg,
                                                                   key, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        ClientRunner({**BASE, **cfg})
    assert err.value.key == key and words in str(err.value) and "\n" not in str(err.value)


def test_an_app_module_that_fails_to_import_is_a_config_error(tmp_path):
    folder = write_app(tmp_path, "app_broken", "raise ImportError('needs a GPU\\nand more')\n")
    with pytest.raises(ConfigError) as err:
        ClientRunner({**BASE, "app_dir": str(folder)})
    assert err.value.key == "app_dir" and "needs a GPU" in str(err.value)
    assert "\n" not in str(err.value)


def test_received_npy_bytes_reach_the_app_without_a_copy():
    frame = encode_frame({"task_id": "x"}, ARRAYS)
    _, received = read_frame(io.BytesIO(frame).read, len(frame))  # as a child reads its task
    record = array_record(received)
    for name, array in received.items():
        assert record[name].data is array.base.base  # the very bytes the frame reader made
        view = ndarray_view(record[name])
        np.testing.assert_array_equal(view, ARRAYS[name])
        assert np.shares_memory(view, array)
    # Arrays that are not views of npy bytes are serialized (np.load reads them back).
    fresh = array_record({"w": np.arange(4.0).reshape(2, 2).T})
    np.testing.assert_array_equal(fresh["w"].numpy(), np.arange(4.0).reshape(2, 2).T)


# ---------------------------------------------------------------- the built-in app
def digits_arrays() -> dict:
    from fl_service.tasks import digits

    return {k: v.numpy().copy() for k, v in digits.load_model({"seed": 0}).state_dict().items()}


def test_builtin_app_trains_and_evaluates_digits_with_its_data_loaded_once(monkeypatch):
    from fl_service.apps import builtin
    from fl_service.tasks import digits

    loads = []
    real_load = digits.load_data
    monkeypatch.setattr(digits, "load_data", lambda cfg: loads.append(1) or real_load(cfg))
    monkeypatch.setattr(builtin, "_local", {})
    monkeypatch.setattr(builtin, "_data", {})
    runner = ClientRunner({**BASE, "partition_id": 1, "num_partitions": 3, "seed": 0})
    assert runner.builtin and runner.path == "fl_service.apps.builtin:app"
    assert runner.context.run_config["learning_rate"] == 0.05
    runner.warm_up()
    histogram = runner.histogram()
    assert histogram is not None and set(histogram) == {str(d) for d in range(10)}
    arrays = digits_arrays()
    update, out = runner.handle(task("t1"), arrays)
    assert set(update["metrics"]) == {"loss", "num-examples"}
    assert update["num_examples"] == sum(histogram.values()) == 479
    assert update["histogram"] == histogram
    assert update["train_time_s"] > 0
    assert list(out) == list(arrays)
    assert not np.allclose(out["classifier.3.weight"], arrays["classifier.3.weight"])
    update, _ = runner.handle(task("e1", "evaluate"), out)
    assert set(update["metrics"]) == {"loss", "accuracy", "num-examples"}
    assert update["num_examples"] == 120  # this node's third of the 360 test images
    runner.handle(task("t2"), out)
    assert loads == [1]


def test_builtin_app_runs_an_old_style_task_module(tmp_path, monkeypatch):
    from fl_service.apps import builtin

    (tmp_path / "old_style_task.py").write_text(textwrap.dedent("""\
        import torch
        from torch.utils.data import TensorDataset
        from fl_service.tasks.supervised import test, train

        def load_model(cfg):
            torch.manual_seed(cfg["seed"])
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))

        def load_data(cfg):
            x = torch.randn(20, 1, 2, 2, generator=torch.Generator().manual_seed(1))
            y = (x.sum(dim=(1, 2, 3)) > 0).long()
            return TensorDataset(x, y), TensorDataset(x, y)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(builtin, "_local", {})
    runner = ClientRunner({**BASE, "task": "old_style_task", "batch_size": 5})
    model_arrays = {"1.weight": np.zeros((2, 4), np.float32), "1.bias": np.zeros(2, np.float32)}
    update, out = runner.handle(task("t1"), model_arrays)
    assert update["num_examples"] == 20 and list(out) == ["1.weight", "1.bias"]
    with pytest.raises(ValueError, match="task: cannot import"):
        ClientRunner({**BASE, "task": "no_such_task_module"})


def test_builtin_app_loads_every_array_it_is_sent_and_names_one_of_the_wrong_shape(
    tmp_path, monkeypatch,
):
    from fl_service.apps import builtin

    (tmp_path / "norm_task.py").write_text(textwrap.dedent("""\
        import torch
        from torch.utils.data import TensorDataset
        from fl_service.tasks.supervised import test, train

        def load_model(cfg):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(4),
                                       torch.nn.Linear(4, 2))

        def load_data(cfg):
            x = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1))
            data = TensorDataset(x, (x.sum(dim=(1, 2, 3)) > 0).long())
            return data, data
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(builtin, "_local", {})
    runner = ClientRunner({**BASE, "task": "norm_task", "batch_size": 4})
    rng = np.random.default_rng(0)
    sent = {"1.weight": rng.random(4, np.float32), "1.bias": rng.random(4, np.float32),
            "1.running_mean": rng.random(4, np.float32),
            "1.running_var": rng.random(4, np.float32) + 1,
            "1.num_batches_tracked": np.array(7, np.int64),
            "2.weight": rng.random((2, 4), np.float32), "2.bias": rng.random(2, np.float32)}
    update, _ = runner.handle(task("e1", "evaluate"), sent)  # evaluation changes no state
    assert "error" not in update
    held = builtin.prepare(runner.context).model.state_dict()
    assert list(held) == list(sent)
    for name, array in sent.items():
        assert held[name].dtype == torch.from_numpy(array).dtype
        np.testing.assert_array_equal(held[name].numpy(), array)
    update, _ = runner.handle(task("e2", "evaluate"),
                              {**sent, "2.weight": np.zeros((4, 2), np.float32)})
    assert "2.weight" in update["error"] and "[4, 2]" in update["error"]


class SavesDoubled(torch.nn.Module):
    """A module whose saved state is computed (as quantized modules' is), not its parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "w"] = self.w.detach() * 2

    def _load_from_state_dict(self, state_dict, prefix, *args):
        with torch.no_grad():
            self.w.copy_(state_dict[prefix + "w"] / 2)


def test_builtin_app_loads_a_model_that_computes_its_state_through_load_state_dict():
    from types import SimpleNamespace

    from fl_service.apps import builtin

    assert builtin._state_is_its_own(torch.nn.Sequential(torch.nn.Linear(2, 2),
                                                         torch.nn.BatchNorm1d(2)))
    model = SavesDoubled()
    assert not builtin._state_is_its_own(model)
    local = SimpleNamespace(model=model, loads_in_place=False)
    builtin._load(local, array_record({"w": np.array([2.0, 4.0], np.float32)}))
    np.testing.assert_array_equal(model.w.detach().numpy(), [1.0, 2.0])
