"""A pool of virtual clients in one client process (config key `virtual_clients`): its config
checks, and what its /status, /metrics and /control make of its virtual clients."""

import json
import socket
from pathlib import Path

import pytest
import yaml

from fl_service.config import ConfigError, load_config, virtual_client_configs
from fl_service.roles.pool import Pool, pool_state


def closed_port() -> int:
    """A loopback port nothing listens on (a parent that is down: a switch's farewell fails
    at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LA1, LA2 = f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"


def members(n: int, parent: str = LA1) -> list[dict]:
    return [{"name": f"p-{i}", "partition_id": i, "parent": parent} for i in range(n)]


def pool_config(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "port": 1, "num_partitions": 4,
                                    "state_dir": str(tmp_path / "state"), **cfg}))
    return path


def test_a_pool_needs_no_parent_and_each_virtual_client_is_the_base_with_its_entry(tmp_path):
    entries = [*members(2), {"name": "x", "partition_id": 3, "parent": LA2,
                             "label_slices": "3:0:10"}]
    path = pool_config(tmp_path, virtual_clients=entries, parent="ignored:1", local_epochs=2)
    cfg = load_config("client", path, environ={})
    assert cfg["parent"] == ""  # the pool has none; each virtual client has its own
    configs = virtual_client_configs(cfg)
    assert [(c["name"], c["partition_id"], c["parent"], c["label_slices"]) for c in configs] == [
        ("p-0", 0, LA1, ""), ("p-1", 1, LA1, ""), ("x", 3, LA2, "3:0:10")]
    assert {(c["num_partitions"], c["local_epochs"], c["state_dir"], len(c["virtual_clients"]))
            for c in configs} == {(4, 2, str(tmp_path / "state"), 0)}


def test_virtual_clients_come_from_the_environment_as_json(tmp_path):
    env = {"HFL_VIRTUAL_CLIENTS": json.dumps(members(3))}
    cfg = load_config("client", pool_config(tmp_path), environ=env)
    assert [m["name"] for m in cfg["virtual_clients"]] == ["p-0", "p-1", "p-2"]


@pytest.mark.parametrize(("entries", "key", "problem"), [
    ({"p-0": LA1}, "virtual_clients", "expected list, got dict"),
    (["p-0"], "virtual_clients[0]", "expected a mapping with name, partition_id, parent"),
    ([{"partition_id": 0, "parent": LA1}], "virtual_clients[0].name", "required"),
    ([{"name": "a", "parent": LA1}], "virtual_clients[0].partition_id", "required"),
    ([{"name": "a", "partition_id": 0}], "virtual_clients[0].parent", "required"),
    ([*members(2), {"name": "p-0", "partition_id": 2, "parent": LA1}],
     "virtual_clients[2].name", "duplicate 'p-0' (also virtual_clients[0])"),
    ([{"name": 7, "partition_id": 0, "parent": LA1}], "virtual_clients[0].name",
     "expected a non-empty string"),
    ([{"name": "a", "partition_id": -1, "parent": LA1}], "virtual_clients[0].partition_id",
     "expected an integer >= 0, got -1"),
    ([{"name": "a", "partition_id": "0", "parent": LA1}], "virtual_clients[0].partition_id",
     "expected an integer >= 0, got '0'"),
    ([{"name": "a", "partition_id": 4, "parent": LA1}], "virtual_clients[0].partition_id",
     "must be < num_partitions (4), got 4"),
    ([*members(1), {"name": "b", "partition_id": 1, "parent": "la1"}],
     "virtual_clients[1].parent", "expected host:port, got 'la1'"),
    ([{"name": "a", "partition_id": 0, "parent": LA1, "port": 9}], "virtual_clients[0].port",
     "unknown key; one of name, partition_id, parent, label_slices"),
    ([{"name": "a", "partition_id": 0, "parent": LA1, "label_slices": 3}],
     "virtual_clients[0].label_slices", "expected str, got 3"),
])
def test_each_bad_virtual_client_is_one_line_naming_it(tmp_path, entries, key, problem):
    with pytest.raises(ConfigError) as error:
        load_config("client", pool_config(tmp_path, virtual_clients=entries), environ={})
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: {problem}")
    assert "\n" not in str(error.value)


def test_an_empty_list_is_a_plain_client_that_needs_its_parent(tmp_path):
    with pytest.raises(ConfigError, match="^parent: required for client"):
        load_config("client", pool_config(tmp_path, virtual_clients=[]), environ={})


def test_the_pools_state_follows_its_virtual_clients():
    assert pool_state(["finished", "finished"]) == "finished"
    assert pool_state(["waiting", "training", "starting"]) == "training"
    assert pool_state(["waiting", "starting", "finished"]) == "starting"
    assert pool_state(["waiting", "finished"]) == "waiting"


@pytest.fixture
def pool(tmp_path) -> Pool:
    path = pool_config(tmp_path, virtual_clients=members(3), dataset="digits")
    return Pool(load_config("client", path, environ={}))


def control(pool: Pool, message: dict) -> tuple[int, dict]:
    reply = pool._control_route({}, json.dumps(message).encode(), None)
    return reply.status, json.loads(reply.body)


def test_status_nests_each_virtual_clients_own_document(pool):
    status = pool.status()
    assert (status["name"], status["role"], status["parent"]) == ("p", "client", None)
    assert status["state"] == "starting"
    assert list(status["virtual_clients"]) == ["p-0", "p-1", "p-2"]
    one = status["virtual_clients"]["p-1"]
    assert (one["name"], one["role"], one["parent"], one["pid"]) == (
        "p-1", "client", LA1, status["pid"])


def test_metrics_carry_a_series_per_virtual_client(pool):
    text = pool.metrics_text().decode()
    for name in ("p-0", "p-1", "p-2"):
        assert f'hfl_global_round{{role="client",service="{name}"}} 0.0' in text
    assert 'service="p"' not in text
    assert text.count("# TYPE hfl_global_round gauge") == 1


def test_control_moves_one_virtual_client_then_many(pool):
    assert control(pool, {"client": "p-1", "parent": LA2}) == (
        200, {"client": "p-1", "parent": LA2, "switched": True})
    assert control(pool, {"client": "p-1", "parent": LA2})[1]["switched"] is False
    assert control(pool, {"parents": {"p-0": LA2, "p-1": LA2, "p-2": LA1}}) == (
        200, {"switched": ["p-0"]})
    assert [m.state.parent for m in pool.members.values()] == [LA2, LA2, LA1]


@pytest.mark.parametrize(("message", "error"), [
    ({"client": "p-9", "parent": LA2}, "no virtual client 'p-9' in pool p"),
    ({"parents": {"p-0": LA2, "p-9": LA2}}, "no virtual client 'p-9' in pool p"),
    ({"parents": {"p-0": LA2, "p-1": "la2"}}, "parents.p-1: expected host:port, got 'la2'"),
    ({"parents": [LA2]}, '"parents" must map virtual client names to host:port, got list'),
    ({"client": "p-0"}, """{"client": 'p-0'} needs "parent": "host:port\""""),
    ({"parent": LA2}, 'p is a pool of virtual clients: it needs "client" (one) or "parents"'),
    ({}, 'expected {"client": NAME, "parent": "host:port"}'),
])
def test_a_bad_control_message_is_400_naming_what_and_moves_nothing(pool, message, error):
    status, reply = control(pool, message)
    assert status == 400 and reply["error"].startswith(error)
    assert {m.state.parent for m in pool.members.values()} == {LA1}


def test_reload_moves_every_virtual_client_whose_parent_changed_in_the_file(pool):
    path = Path(pool.cfg["config_path"])
    cfg = yaml.safe_load(path.read_text())
    cfg["virtual_clients"][2]["parent"] = LA2
    path.write_text(yaml.safe_dump(cfg))
    assert control(pool, {"reload": True}) == (200, {"switched": ["p-2"]})
    assert control(pool, {"reload": True}) == (200, {"switched": []})
    assert pool.members["p-2"].state.status()["parent"] == LA2


def test_a_virtual_client_that_fails_ends_the_pool_naming_it(tmp_path):
    # Class 3 of digits' training split holds fewer than 10000 examples: its warm-up fails.
    entries = [{"name": "p-0", "partition_id": 0, "parent": LA1, "label_slices": "3:0:10000"}]
    pool = Pool(load_config("client", pool_config(tmp_path, virtual_clients=entries),
                            environ={}))
    with pytest.raises(RuntimeError, match="^virtual client p-0 failed:\n") as failed:
        pool.run()
    assert "label_slices: class 3 has" in str(failed.value)
