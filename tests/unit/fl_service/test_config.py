from pathlib import Path

import pytest
import yaml

from fl_service.config import KEYS, ConfigError, help_text, load_config, parse_address


def write(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_defaults_fill_in_and_state_dir_follows_the_name(tmp_path: Path) -> None:
    cfg = load_config("global-aggregator", write(tmp_path, name="ga", port=8080), environ={})
    assert cfg["global_rounds"] == 10 and cfg["bind_host"] == "127.0.0.1"
    assert cfg["parent"] == "" and cfg["state_dir"] == str(Path("hfl-state") / "ga")


def test_environment_wins_over_the_file_and_is_typed(tmp_path: Path) -> None:
    path = write(tmp_path, name="la", port=8081, parent="ga:8080", local_rounds=2)
    env = {"HFL_LOCAL_ROUNDS": "3", "HFL_ROUND_TIMEOUT_S": "7", "HFL_DOWNLOAD": "true",
           "HFL_PARENT": "other:9000", "HFL_UNRELATED": "x"}
    cfg = load_config("local-aggregator", path, environ=env)
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
        ("local-aggregator", {"name": "l", "port": 1}, "parent"),
        ("client", {"port": 1, "parent": "a:1"}, "name"),
        ("global-aggregator", {"name": "g"}, "port"),
        ("global-aggregator", {"name": "g", "port": "http"}, "port"),
        ("global-aggregator", {"name": "g", "port": 70000}, "port"),
        ("global-aggregator", {"name": "g", "port": True}, "port"),
        ("local-aggregator", {"name": "l", "port": 1, "parent": "a:1", "local_rounds": 0},
         "local_rounds"),
        ("client", {"name": "c", "port": 1, "parent": "a:1", "dataset": "mnist"}, "dataset"),
        ("client", {"name": "c", "port": 1, "parent": "a:1", "partitioner": "x"}, "partitioner"),
        ("client", {"name": "c", "port": 1, "parent": "a", "partitioner": "iid"}, "parent"),
        ("client", {"name": "c", "port": 1, "parent": "a:1", "partition_id": 3,
                    "num_partitions": 3}, "partition_id"),
        ("global-aggregator", {"name": "g", "port": 1, "round_timeout_s": 0}, "round_timeout_s"),
        ("global-aggregator", {"name": "g", "port": 1, "tls_cert": "c.pem"}, "tls_key"),
        ("global-aggregator", {"name": "g", "port": 1, "download": "yes please"}, "download"),
        ("global-aggregator", {"name": "g", "port": 1, "device": "tpu"}, "device"),
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
        load_config("global-aggregator", path, environ={"HFL_GLOBAL_ROUNDS": "ten"})


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
