from pathlib import Path

import pytest
import yaml

from fl_service.config import KEYS, ConfigError, help_text, load_config, parse_address


def write(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_defaults_fill_in_and_state_dir_follows_the_name(tmp_path: Path) -> None:
    cfg = load_config("global_aggregator", write(tmp_path, name="ga", port=8080), environ={})
    assert cfg["global_rounds"] == 10 and cfg["bind_host"] == "127.0.0.1"
    assert cfg["parent"] == "" and cfg["state_dir"] == str(Path("hfl-state") / "ga")


def test_environment_wins_over_the_file_and_is_typed(tmp_path: Path) -> None:
    path = write(tmp_path, name="la", port=8081, parent="ga:8080", local_rounds=2)
    env = {"HFL_LOCAL_ROUNDS": "3", "HFL_ROUND_TIMEOUT_S": "7", "HFL_DOWNLOAD": "true",
           "HFL_PARENT": "other:9000", "HFL_UNRELATED": "x"}
    cfg = load_config("local_aggregator", path, environ=env)
    assert (cfg["local_rounds"], cfg["round_timeout_s"], cfg["download"]) == (3, 7.0, True)
    assert cfg["parent"] == "other:9000"


def test_environment_alone_is_a_whole_config() -> None:
    env = {"HFL_NAME": "c1", "HFL_PORT": "9000", "HFL_PARENT": "la1:8081"}
    assert load_config("client", None, environ=env)["name"] == "c1"


@pytest.mark.parametrize(
    ("role", "cfg", "key"),
    [
        ("client", {"name": "c", "port": 1, "parent": "a:1", "colour": "red"}, "colour"),
        ("client", {"name": "c", "port": 1}, "parent"),
        ("local_aggregator", {"name": "l", "port": 1}, "parent"),
        ("client", {"port": 1, "parent": "a:1"}, "name"),
        ("global_aggregator", {"name": "g"}, "port"),
        ("global_aggregator", {"name": "g", "port": "http"}, "port"),
        ("global_aggregator", {"name": "g", "port": 70000}, "port"),
        ("global_aggregator", {"name": "g", "port": True}, "port"),
        ("local_aggregator", {"name": "l", "port": 1, "parent": "a:1", "local_rounds": 0},
         "local_rounds"),
        ("client", {"name": "c", "port": 1, "parent": "a:1", "dataset": "mnist"}, "dataset"),
        ("client", {"name": "c", "port": 1, "parent": "a:1", "partitioner": "x"}, "partitioner"),
        ("client", {"name": "c", "port": 1, "parent": "a", "partitioner": "iid"}, "parent"),
        ("client", {"name": "c", "port": 1, "parent": "a:1", "partition_id": 3,
                    "num_partitions": 3}, "partition_id"),
        ("global_aggregator", {"name": "g", "port": 1, "round_timeout_s": 0}, "round_timeout_s"),
        ("global_aggregator", {"name": "g", "port": 1, "tls_cert": "c.pem"}, "tls_key"),
        ("global_aggregator", {"name": "g", "port": 1, "download": "yes please"}, "download"),
        ("global_aggregator", {"name": "g", "port": 1, "device": "tpu"}, "device"),
    ],
)
def test_each_bad_config_names_its_key(tmp_path: Path, role: str, cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(role, write(tmp_path, **cfg), environ={})
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")
    assert "\n" not in str(error.value)


def test_bad_environment_value_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, name="g", port=1)
    with pytest.raises(ConfigError, match="^global_rounds: "):
        load_config("global_aggregator", path, environ={"HFL_GLOBAL_ROUNDS": "ten"})


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="^config: "):
        load_config("client", path, environ={})


def test_help_lists_every_key() -> None:
    text = help_text()
    assert all(f"  {key} " in text for key in KEYS)


def test_parse_address() -> None:
    assert parse_address("ga.example:8080") == ("ga.example", 8080)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("ga", "ga:", ":80", "ga:port", "ga:0"):
        with pytest.raises(ConfigError):
            parse_address(bad)


def test_flower_keys_take_mappings_and_import_paths(tmp_path):
    path = write(tmp_path, name="ga", port=1, strategy="flwr.serverapp.strategy:FedAdam",
                 strategy_kwargs={"eta": 0.1}, train_config={"lr": 0.01}, evaluate_every=2)
    cfg = load_config("global_aggregator", path, environ={})
    assert cfg["strategy_kwargs"] == {"eta": 0.1} and cfg["train_config"] == {"lr": 0.01}
    assert load_config("global_aggregator", write(tmp_path, name="g", port=1),
                       environ={})["run_config"] == {}
    env = {"HFL_RUN_CONFIG": "{local-epochs: 2}"}
    assert load_config("global_aggregator", path, environ=env)["run_config"] == {
        "local-epochs": 2}


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"strategy": "flwr.serverapp.strategy.FedAvg"}, "strategy"),
        ({"model": "pkg:"}, "model"),
        ({"strategy_kwargs": [1, 2]}, "strategy_kwargs"),
        ({"run_config": {1: "x"}}, "run_config"),
        ({"evaluate_every": -1}, "evaluate_every"),
    ],
)
def test_bad_flower_keys_name_the_key(tmp_path, extra, key):
    with pytest.raises(ConfigError) as err:
        load_config("global_aggregator", write(tmp_path, name="g", port=1, **extra), environ={})
    assert err.value.key == key


def test_load_object_names_the_key_of_a_path_that_does_not_resolve():
    from fl_service.imports import load_object

    assert load_object("flwr.serverapp.strategy:FedAvg", "strategy").__name__ == "FedAvg"
    with pytest.raises(ConfigError, match=r"^model: cannot import no_such_pkg"):
        load_object("no_such_pkg.task:Net", "model")
    with pytest.raises(ConfigError, match=r"^strategy: flwr.serverapp.strategy has no attribute"):
        load_object("flwr.serverapp.strategy:NoSuch", "strategy")


@pytest.mark.parametrize(("given", "missing"), [
    (("tls_cert",), "tls_key"),
    (("tls_cert", "tls_key"), "tls_ca"),
    (("tls_ca",), "tls_cert"),
    (("tls_key", "tls_ca"), "tls_cert"),
])
def test_mutual_tls_takes_all_three_files_or_none(tmp_path, given, missing):
    pem = tmp_path / "x.pem"
    pem.write_text("")
    path = write(tmp_path, name="g", port=1, **{key: str(pem) for key in given})
    with pytest.raises(ConfigError) as err:
        load_config("global_aggregator", path, environ={})
    assert err.value.key == missing
    assert str(err.value) == (
        f"{missing}: missing: mutual TLS needs tls_cert, tls_key and tls_ca together (this "
        f"config sets {' and '.join(given)}; none of the three means plain HTTP)")


def test_tls_files_must_be_readable_and_the_controller_named(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("")
    files = {"tls_cert": str(pem), "tls_key": str(tmp_path / "gone.key"), "tls_ca": str(pem)}
    with pytest.raises(ConfigError, match=r"^tls_key: .*gone.key is not a readable file$"):
        load_config("client", write(tmp_path, name="c", port=1, parent="a:1", **files),
                    environ={})
    files["tls_key"] = str(pem)
    cfg = load_config("global_aggregator", write(tmp_path, name="g", port=1, **files),
                      environ={})
    assert cfg["tls_ca"] == str(pem) and cfg["controller_name"] == "hfl-controller"
    with pytest.raises(ConfigError, match="^controller_name: must not be empty"):
        load_config("global_aggregator", write(tmp_path, name="g", port=1, controller_name=""),
                    environ={})
