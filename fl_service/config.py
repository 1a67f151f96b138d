"""Service configuration: one YAML file, every key overridable by `HFL_<KEY>` (env wins).

A bad config is reported as one line naming the key (`ConfigError`) before any network
activity; `python -m fl_service --help` prints `KEYS` as the reference.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fl_service.choices import DATASETS, DEVICES, PARTITIONERS

# The inventory's spelling of each role, used from hfl_role to /status and results.
ROLES = ("global_aggregator", "local_aggregator", "client")
GA, LA, CLIENT = ROLES
ALL = ROLES


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    roles: tuple[str, ...]
    help: str


REQUIRED = object()

KEYS: dict[str, Key] = {
    "name": Key(str, REQUIRED, ALL, "service name; also the peer name on links"),
    "pipeline": Key(str, "hfl", ALL, "pipeline name"),
    "bind_host": Key(str, "127.0.0.1", ALL, "address the HTTP port binds to"),
    "port": Key(int, REQUIRED, ALL, "the one HTTP port: FL protocol, /status, /metrics, /control"),
    "parent": Key(str, REQUIRED, (LA, CLIENT), "host:port of the parent aggregator (GA or LA)"),
    "state_dir": Key(str, "", ALL, "results.jsonl, checkpoint, final model (./hfl-state/<name>)"),
    "dataset": Key(str, "digits", ALL, "one of: " + ", ".join(DATASETS)),
    "data_dir": Key(str, "~/.cache/hfl/data", ALL, "where torchvision datasets live"),
    "download": Key(bool, False, ALL, "let torchvision download CIFAR-10/Fashion-MNIST"),
    "task": Key(str, "", ALL, "import path of a user task module (overrides the built-in one)"),
    "partitioner": Key(str, "iid", (CLIENT,), "one of: " + ", ".join(PARTITIONERS)),
    "dirichlet_alpha": Key(float, 0.5, (CLIENT,), "Dirichlet concentration"),
    "classes_per_client": Key(int, 2, (CLIENT,), "label_skew: classes per client"),
    "partition_id": Key(int, 0, (CLIENT,), "which slice of the training split this client holds"),
    "num_partitions": Key(int, 1, (CLIENT,), "how many slices the training split is cut into"),
    "label_slices": Key(str, "", (CLIENT,), "a stated label mix, CLASS:START:COUNT,... (the "
                        "plan's from hfl_partition; overrides partitioner)"),
    "seed": Key(int, 0, ALL, "partitioning and initialisation seed"),
    "global_rounds": Key(int, 10, (GA,), "global rounds to run"),
    "local_rounds": Key(int, 1, (LA,), "LA rounds per global round (>= 1)"),
    "local_epochs": Key(int, 1, (CLIENT,), "local training epochs per round"),
    "batch_size": Key(int, 32, (CLIENT,), "local training batch size"),
    "learning_rate": Key(float, 0.05, (CLIENT,), "local training learning rate"),
    "min_participants": Key(int, 1, (GA, LA), "a round closes only if this many children answered"),
    "round_timeout_s": Key(float, 60.0, (GA, LA), "a round closes at this deadline"),
    "example_cap_ratio": Key(float, 2.0, (GA, LA), "a train update may claim at most this many "
                             "times the examples its child declared at join"),
    "tls_cert": Key(str, "", ALL, "this service's certificate (PEM): serves HTTPS, and is the "
                    "client certificate it shows its parent; mutual TLS needs tls_cert, tls_key "
                    "and tls_ca together (none: plain HTTP)"),
    "tls_key": Key(str, "", ALL, "private key of tls_cert (PEM)"),
    "tls_ca": Key(str, "", ALL, "the pipeline's CA (PEM): verifies the parent's certificate "
                  "and the certificates of those who call this service"),
    "controller_name": Key(str, "hfl-controller", ALL, "CN of the controller's certificate "
                           "(it may POST /control)"),
    "app_dir": Key(str, "", ALL, "a Flower app folder (pyproject.toml with [tool.flwr.app]); "
                   "put on sys.path, its config is the base of run_config"),
    "client_app": Key(str, "", (CLIENT,), "module:attr of a flwr ClientApp (default: the app "
                      "folder's clientapp, else the built-in app)"),
    "run_config": Key(dict, {}, ALL, "overrides fused over the app's [tool.flwr.app.config]"),
    "model": Key(str, "", (GA,), "module:callable returning the initial torch model "
                 "(default: the built-in task's)"),
    "evaluate_fn": Key(str, "", (GA,), "module:function(server_round, arrays) -> MetricRecord, "
                       "central evaluation (default: the built-in task's test)"),
    "strategy": Key(str, "flwr.serverapp.strategy:FedAvg", (GA, LA),
                    "module:Class of a Flower Message-API strategy"),
    "strategy_kwargs": Key(dict, {}, (GA, LA), "keyword arguments of the strategy"),
    "keep_strategy_state": Key(bool, False, (LA,), "keep the LA's strategy across global rounds "
                               "(default: a new one each global round)"),
    "train_config": Key(dict, {}, (GA, LA), "ConfigRecord entries sent with every train task"),
    "evaluate_config": Key(dict, {}, (GA,), "ConfigRecord entries sent with every evaluate task"),
    "evaluate_every": Key(int, 0, (GA,), "federated evaluation every N global rounds (0: never)"),
    "device": Key(str, "auto", ALL, "one of: " + ", ".join(DEVICES)),
    "threads": Key(int, 1, ALL, "torch intra-op threads"),
    "virtual_clients": Key(list, [], (CLIENT,), "a pool: one client per entry {name, "
                           "partition_id, parent, label_slices?} in this one process, each the "
                           "rest of this config with its entry over it (top-level parent unused)"),
}

# Lower bounds of numeric keys; (key, bound, strict)
MINIMUMS = {
    "port": (1, False),
    "global_rounds": (1, False),
    "local_rounds": (1, False),
    "local_epochs": (1, False),
    "batch_size": (1, False),
    "learning_rate": (0.0, True),
    "min_participants": (1, False),
    "round_timeout_s": (0.0, True),
    "example_cap_ratio": (1.0, False),
    "num_partitions": (1, False),
    "partition_id": (0, False),
    "classes_per_client": (1, False),
    "dirichlet_alpha": (0.0, True),
    "threads": (1, False),
    "evaluate_every": (0, False),
}
# Keys naming a Python object as Flower's components do: "package.module:attribute".
IMPORT_PATHS = ("client_app", "model", "evaluate_fn", "strategy")
CHOICES = {"dataset": DATASETS, "partitioner": PARTITIONERS, "device": DEVICES}


class ConfigError(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


def _coerce(key: str, value: Any, from_env: bool) -> Any:
    want = KEYS[key].type
    if from_env and want is not str:
        # Environment values are strings; YAML scalar rules give "3" -> 3, "true" -> True.
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(key, f"cannot parse {value!r}") from None
    if value is None and want in (str, dict, list):
        return want()
    if want is dict and isinstance(value, dict) and not all(isinstance(k, str) for k in value):
        raise ConfigError(key, f"keys must be strings, got {sorted(map(repr, value))}")
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(key, f"expected {want.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check(cfg: dict[str, Any], role: str) -> None:
    pool = role == CLIENT and bool(cfg["virtual_clients"])
    if pool:
        cfg["parent"] = ""  # each virtual client has its own; the pool has none
    for key, spec in KEYS.items():
        if cfg[key] is REQUIRED:
            if role in spec.roles:
                raise ConfigError(key, f"required for {role}")
            cfg[key] = ""
    for key, (bound, strict) in MINIMUMS.items():
        value = cfg[key]
        if value < bound or (strict and value == bound):
            raise ConfigError(key, f"must be {'>' if strict else '>='} {bound}, got {value}")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ConfigError(key, f"unknown {key} {cfg[key]!r}; one of {', '.join(allowed)}")
    if cfg["port"] > 65535:
        raise ConfigError("port", f"must be <= 65535, got {cfg['port']}")
    if cfg["partition_id"] >= cfg["num_partitions"]:
        raise ConfigError("partition_id", f"must be < num_partitions ({cfg['num_partitions']})")
    if role != GA and not pool:
        parse_address(cfg["parent"], "parent")
    for key in IMPORT_PATHS:
        if cfg[key]:
            split_import_path(cfg[key], key)
    if not cfg["controller_name"]:
        raise ConfigError("controller_name", "must not be empty")
    _check_tls(cfg)
    if pool:
        _check_virtual_clients(cfg)


# A virtual client's entry: its required keys, and all it may set.
MEMBER_REQUIRED = ("name", "partition_id", "parent")
MEMBER_KEYS = (*MEMBER_REQUIRED, "label_slices")


def _check_virtual_clients(cfg: dict[str, Any]) -> None:
    """Each entry of a pool's `virtual_clients` (after the base's own checks); ConfigError
    naming `virtual_clients[i].<key>`."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(cfg["virtual_clients"]):
        where = f"virtual_clients[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, f"expected a mapping with {', '.join(MEMBER_REQUIRED)}, "
                              f"got {type(entry).__name__} {entry!r}")
        for key in entry:
            if key not in MEMBER_KEYS:
                raise ConfigError(f"{where}.{key}",
                                  f"unknown key; one of {', '.join(MEMBER_KEYS)}")
        for key in MEMBER_REQUIRED:
            if entry.get(key) is None:
                raise ConfigError(f"{where}.{key}", "required")
        name = entry["name"]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name", f"expected a non-empty string, got {name!r}")
        if name in seen:
            raise ConfigError(f"{where}.name", f"duplicate {name!r} (also "
                              f"virtual_clients[{seen[name]}])")
        seen[name] = i
        pid = entry["partition_id"]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise ConfigError(f"{where}.partition_id", f"expected an integer >= 0, got {pid!r}")
        if pid >= cfg["num_partitions"]:
            raise ConfigError(f"{where}.partition_id",
                              f"must be < num_partitions ({cfg['num_partitions']}), got {pid}")
        parse_address(entry["parent"], f"{where}.parent")
        slices = entry.get("label_slices", "")
        if not isinstance(slices, str):
            raise ConfigError(f"{where}.label_slices", f"expected str, got {slices!r}")


def virtual_client_configs(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A pool's config -> one ordinary client config per virtual client: the pool's, with the
    entry's keys over it (and no virtual_clients of its own)."""
    return [{**cfg, **entry, "virtual_clients": []} for entry in cfg["virtual_clients"]]


TLS_KEYS = ("tls_cert", "tls_key", "tls_ca")


def tls_enabled(cfg: Mapping[str, Any]) -> bool:
    """Mutual TLS is on: the config names a certificate, its key and the CA (all or none)."""
    return all(cfg.get(key) for key in TLS_KEYS)


def _check_tls(cfg: dict[str, Any]) -> None:
    given = [key for key in TLS_KEYS if cfg[key]]
    if given and len(given) < len(TLS_KEYS):
        missing = next(key for key in TLS_KEYS if not cfg[key])
        raise ConfigError(missing, "missing: mutual TLS needs tls_cert, tls_key and tls_ca "
                          f"together (this config sets {' and '.join(given)}; none of the "
                          "three means plain HTTP)")
    for key in given:
        path = Path(cfg[key])
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(key, f"{cfg[key]} is not a readable file")


def parse_address(value: str, key: str = "parent") -> tuple[str, int]:
    """'host:port' -> (host, port); ConfigError naming `key` if malformed."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(key, f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def split_import_path(value: str, key: str) -> tuple[str, str]:
    """'pkg.module:attr' -> ('pkg.module', 'attr'); ConfigError naming `key` if malformed."""
    module, sep, attr = str(value).partition(":")
    if not sep or not module or not attr or ":" in attr:
        raise ConfigError(key, f"expected module:attribute, got {value!r}")
    return module, attr


def load_config(
    role: str, path: str | os.PathLike | None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Read, merge (env over file over defaults) and validate; raises ConfigError."""
    if role not in ROLES:
        raise ConfigError("role", f"unknown role {role!r}; one of {', '.join(ROLES)}")
    environ = os.environ if environ is None else environ
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError("config", f"cannot read {path}: {exc}".splitlines()[0]) from None
        if not isinstance(raw, dict):
            raise ConfigError("config", f"{path} must hold a YAML mapping")
    # Mapping defaults are copied: a config must never share one with another.
    cfg = {key: spec.type(spec.default) if spec.type in (dict, list) else spec.default
           for key, spec in KEYS.items()}
    for key, value in raw.items():
        if key not in KEYS:
            raise ConfigError(str(key), "unknown key")
        cfg[key] = _coerce(key, value, from_env=False)
    for key in KEYS:
        env_value = environ.get(f"HFL_{key.upper()}")
        if env_value is not None:
            cfg[key] = _coerce(key, env_value, from_env=True)
    _check(cfg, role)
    if not cfg["state_dir"]:
        cfg["state_dir"] = str(Path("hfl-state") / cfg["name"])
    cfg["role"] = role
    cfg["config_path"] = str(path) if path is not None else ""
    return cfg


def help_text() -> str:
    lines = ["config keys (YAML file; each also from env HFL_<KEY>, env wins):"]
    short = {GA: "ga", LA: "la", CLIENT: "client"}
    for key, spec in KEYS.items():
        default = "required" if spec.default is REQUIRED else repr(spec.default)
        roles = ",".join(short[r] for r in spec.roles) if spec.roles != ALL else "all"
        kind = spec.type.__name__
        lines.append(f"  {key:<20} {kind:<6} [{roles}] default {default}: {spec.help}")
    return "\n".join(lines)
