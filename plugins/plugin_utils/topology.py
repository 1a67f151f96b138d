# Copyright: hfl.orchestration developers
# Apache License 2.0
"""The topology model: an Ansible inventory turned into one validated pipeline.

Pure Python on purpose (no Ansible imports): the ``fl_plan`` action plugin and the orchestrator
both build it, and unit tests build it from plain dicts.

    topo = build(hosts, groups)          # hosts: {name: hostvars}, groups: {group: [names]}
    topo.ga, topo.las, topo.clients      # Service records
    topo.candidates("c1")                # parents c1 may be placed under
    topo.link_cost("c1", "la1")          # cost weight of that link

Every mistake found becomes one line of ``TopologyError.errors``, naming the host and the
variable, so a user fixes the whole inventory in one pass.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

CLUSTER_GROUP = "hfl_cluster"
TIERS = ("cloud", "fog", "edge")
GA, LA, CLIENT = "global_aggregator", "local_aggregator", "client"
ROLE_TIER = {GA: "cloud", LA: "fog", CLIENT: "edge"}
RUNTIMES = ("process", "podman", "k3s")
DATASETS = ("digits", "fashion_mnist", "cifar10")
PARTITIONERS = ("iid", "dirichlet", "label_skew")
OBJECTIVES = ("max_accuracy", "min_cost")
CONFIG_MODELS = ("min_comm_cost", "min_kld", "flat")
DEFAULT_PORT = 8080
NUM_CLASSES = 10  # every built-in dataset has 10 labels
TRAIN_PER_CLASS = {"fashion_mnist": 6000, "cifar10": 5000}  # training examples of each label
DEFAULT_LINK_COST = 1.0
# The pipeline name is also a Kubernetes namespace, so it must be a DNS label.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")
# The machine every `ansible_connection: local` host runs on.
CONTROLLER = "<controller>"
CONTROLLER_CN = "hfl-controller"  # fl_pki's and fl_service's default controller_name


# Host variables other than the pipeline's that build() reads (for callers that must copy them).
SERVICE_VARS = (
    "hfl_role", "hfl_parent", "hfl_link_cost", "hfl_port", "hfl_bind_host", "hfl_address",
    "hfl_partition_id", "hfl_partition", "hfl_resources", "hfl_capacity", "hfl_allow_any_tier",
    "hfl_host_state_dir", "hfl_threads", "hfl_device", "hfl_supervisor", "hfl_virtual_clients",
    "ansible_host", "ansible_connection",
)
# Most virtual clients one client host may run (hfl_virtual_clients): a bound on typos, far
# above what one machine trains.
MAX_VIRTUAL_CLIENTS = 10000


# What runs a process-runtime service (module fl_process's supervisor): auto picks systemd where
# it can.
SUPERVISORS = ("auto", "systemd", "none")


class TopologyError(Exception):
    """The inventory does not describe a valid pipeline; ``errors`` holds one line per mistake."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Pipeline:
    """Pipeline-wide settings (group ``hfl_cluster`` variables, read from the GA's host)."""

    name: str = "hfl"
    runtime: str = "process"
    global_rounds: int = 10
    local_rounds: int = 1
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    dataset: str = "digits"
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    num_partitions: int | None = None  # None: one partition per client
    seed: int = 0
    task: str = ""
    data_dir: str = ""
    download: bool = False
    min_participants: int = 1
    round_timeout_s: float = 60.0
    budget: float | None = None
    objective: str = "max_accuracy"
    target_accuracy: float | None = None
    config_model: str = "min_comm_cost"
    state_dir: str = "~/.hfl"
    # A Flower app (docs/inventory.md, "Bring your Flower app"); empty/None: the built-ins.
    flower_app: str = ""  # folder on the controller, as written (fl_plan resolves it)
    client_app: str = ""  # module:attr of a ClientApp
    run_config: dict = field(default_factory=dict)  # flat (dotted keys), Flower run config
    train_config: dict = field(default_factory=dict)
    evaluate_config: dict = field(default_factory=dict)
    ga_strategy: dict | None = None  # {"class": "module:Name", "kwargs": {...}}
    la_strategy: dict | None = None
    la_keep_strategy_state: bool = False
    evaluate_every: int = 0
    model: str = ""  # module:callable
    evaluate_fn: str = ""  # module:function
    # Plain HTTP between the tiers, no certificates: a lab-only opt-out of mutual TLS.
    insecure: bool = False
    # fl_service's example_cap_ratio of the aggregators; None: fl_service's default.
    example_cap_ratio: float | None = None
    # CN of the controller's certificate (role fl_pki's variable): services let it /control.
    pki_controller_name: str = CONTROLLER_CN


@dataclass(frozen=True)
class Service:
    """One fl_service instance: one inventory host with an ``hfl_role``."""

    name: str
    role: str
    tier: str
    address: str  # how other services reach it
    bind_host: str  # what its HTTP port binds to
    port: int
    machine: str  # identity of the machine it runs on (port clashes)
    host_state_dir: str  # per-host root of service folders on the target
    link_cost: float | dict = DEFAULT_LINK_COST  # uplink cost, or {parent: cost}
    parent: str | None = None  # client: the LA pinned by hfl_parent
    capacity: int | None = None  # LA: most clients it takes
    partition_id: int | None = None  # client
    partition: dict | None = None  # client: stated label mix {"classes": [...], "per_class": n}
    resources: dict = field(default_factory=dict)
    threads: int | None = None
    device: str = ""
    # A virtual client: the inventory host whose one process (the pool) runs it, else None.
    pool: str | None = None

    @property
    def host(self):
        return self.pool or self.name


@dataclass(frozen=True)
class Topology:
    pipeline: Pipeline
    services: tuple

    @property
    def ga(self):
        return next(s for s in self.services if s.role == GA)

    @property
    def las(self):
        return [s for s in self.services if s.role == LA]

    @property
    def clients(self):
        return [s for s in self.services if s.role == CLIENT]

    @cached_property
    def pools(self):
        """Client hosts with hfl_virtual_clients -> their virtual clients, in name order."""
        out = {}
        for s in self.clients:
            if s.pool:
                out.setdefault(s.pool, []).append(s)
        return out

    @property
    def num_partitions(self):
        return self.pipeline.num_partitions or len(self.clients)

    @cached_property
    def _by_name(self):
        return {s.name: s for s in self.services}

    def service(self, name):
        return self._by_name[name]

    def candidates(self, client):
        """Parents a client may be placed under: its cost map's keys, else every LA (or the GA
        when there is no LA: flat FL)."""
        cost = self.service(client).link_cost
        if isinstance(cost, dict):
            return sorted(cost)
        return [s.name for s in self.las] or [self.ga.name]

    def link_cost(self, child, parent):
        """Cost weight of the link child -> parent; KeyError if parent is not a candidate."""
        cost = self.service(child).link_cost
        if isinstance(cost, dict):
            return cost[parent]
        if parent not in [s.name for s in self.services if s.role != CLIENT]:
            raise KeyError(parent)
        return cost


_INT_KEYS = {  # pipeline key -> smallest allowed value
    "global_rounds": 1, "local_rounds": 1, "local_epochs": 1, "batch_size": 1,
    "classes_per_client": 1, "num_partitions": 1, "seed": 0, "min_participants": 1,
    "evaluate_every": 0,
}
_POSITIVE_FLOAT_KEYS = ("learning_rate", "dirichlet_alpha", "round_timeout_s")
_CHOICES = {
    "runtime": RUNTIMES, "dataset": DATASETS, "partitioner": PARTITIONERS,
    "objective": OBJECTIVES, "config_model": CONFIG_MODELS,
}


def inventory_vars():
    """Every variable build() reads from a host."""
    pipeline = [("hfl_pipeline" if k == "name" else f"hfl_{k}") for k in Pipeline().__dict__]
    return tuple(pipeline) + SERVICE_VARS


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _pipeline(vars_, host, errors):
    """Read and check the pipeline settings from one host's variables."""
    values = {}
    for key, default in Pipeline().__dict__.items():
        var = "hfl_pipeline" if key == "name" else f"hfl_{key}"
        value = vars_.get(var, default)
        bad = None
        if key in _INT_KEYS and value is not None:
            if not _is_int(value) or value < _INT_KEYS[key]:
                bad = f"must be an integer >= {_INT_KEYS[key]}"
        elif key in _POSITIVE_FLOAT_KEYS:
            if not _is_number(value) or value <= 0:
                bad = "must be a positive number"
            else:
                value = float(value)
        elif key in _CHOICES and value not in _CHOICES[key]:
            bad = "must be one of " + ", ".join(_CHOICES[key])
        elif key == "name" and not (isinstance(value, str) and _DNS_LABEL.match(value)):
            bad = "must be a DNS label (lower-case letters, digits, '-'; it names a namespace)"
        elif key == "budget" and value is not None and (not _is_number(value) or value < 0):
            bad = "must be a number >= 0"
        elif key == "target_accuracy" and value is not None and (
            not _is_number(value) or not 0 < value <= 1
        ):
            bad = "must be a number in (0, 1]"
        elif key in ("download", "insecure") and not isinstance(value, bool):
            bad = "must be true or false"
        elif key == "example_cap_ratio" and value is not None:
            # fl_service refuses a ratio below 1: an honest count would be over the cap.
            if not _is_number(value) or value < 1:
                bad = "must be a number >= 1"
            else:
                value = float(value)
        elif key in ("task", "data_dir", "state_dir") and not isinstance(value, str):
            bad = "must be a string"
        elif key == "pki_controller_name" and not (isinstance(value, str)
                                                   and _DNS_NAME.match(value)):
            bad = "must be a DNS name (it is the controller certificate's name)"
        elif key in _APP_CHECKS:
            # These messages quote the offending part themselves (a map can be long).
            problem, value = _APP_CHECKS[key](value)
            if problem:
                errors.append(f"host {host}: {var}: {problem}")
                value = default
        if bad:
            errors.append(f"host {host}: {var}: {bad}, got {value!r}")
            value = default
        values[key] = value
    return Pipeline(**values)


# "module:attr", Flower's own component syntax (e.g. "task:Net", "pkg.client_app:app").
_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                          r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALAR = (bool, int, float, str)


def _import_path(what):
    def check(value):
        if value in (None, ""):
            return None, ""
        if not isinstance(value, str) or not _IMPORT_PATH.match(value):
            return f"must be 'module:{what}' (e.g. 'task:{what}'), got {value!r}", value
        return None, value
    return check


def _is_scalar(v):
    return isinstance(v, _SCALAR) and (not isinstance(v, float) or math.isfinite(v))


def _flat_run_config(value, prefix=""):
    """Nested maps become dotted keys, as Flower flattens [tool.flwr.app.config]; the first
    problem is returned instead."""
    out = {}
    for k, v in value.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or not k:
            return f"key {k!r}: keys must be non-empty strings", None
        if isinstance(v, dict):
            bad, sub = _flat_run_config(v, key + ".")
            if bad:
                return bad, None
            out.update(sub)
        elif _is_scalar(v):
            out[key] = v
        else:
            return (f"{key!r}: must be a bool, int, float or string (a Flower run config "
                    f"value), got {v!r}"), None
    return None, out


def _run_config(value):
    if value is None:
        return None, {}
    if not isinstance(value, dict):
        return f"must be a map key -> value, got {value!r}", {}
    bad, flat = _flat_run_config(value)
    return (bad, {}) if bad else (None, flat)


def _config_record(value):
    """A Flower ConfigRecord's content: str keys; int, float, str, bool or a list of one type."""
    if value is None:
        return None, {}
    if not isinstance(value, dict):
        return f"must be a map key -> value, got {value!r}", {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            return f"key {k!r}: keys must be non-empty strings", {}
        ok = _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v)
                               and len({type(x) for x in v}) <= 1)
        if not ok:
            return (f"{k!r}: must be an int, float, string, bool or a list of one of them "
                    f"(a Flower ConfigRecord value), got {v!r}"), {}
    return None, dict(value)


def _strategy(value):
    if value is None:
        return None, None
    shape = "must be a map {class: 'module:Name', kwargs: {...}}"
    if not isinstance(value, dict):
        return f"{shape}, got {value!r}", None
    unknown = sorted(str(k) for k in value if k not in ("class", "kwargs"))
    if unknown:
        return f"unknown key {unknown[0]!r}; {shape}", None
    cls = value.get("class")
    if not isinstance(cls, str) or not _IMPORT_PATH.match(cls):
        return (f"class: must be 'module:Name' (e.g. 'flwr.serverapp.strategy:FedAvg'), "
                f"got {cls!r}"), None
    kwargs = value.get("kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        return f"kwargs: must be a map keyword -> value, got {kwargs!r}", None
    for k in kwargs:
        if not isinstance(k, str) or not _IDENTIFIER.match(k):
            return f"kwargs: {k!r} is not a Python keyword name", None
    return None, {"class": cls, "kwargs": dict(kwargs)}


def _bool(value):
    if not isinstance(value, bool):
        return f"must be true or false, got {value!r}", False
    return None, value


def _string(value):
    if value is None:
        return None, ""
    if not isinstance(value, str):
        return f"must be a string, got {value!r}", ""
    return None, value


# Pipeline keys of a Flower app: key -> check(value) -> (problem or None, value to keep).
_APP_CHECKS: dict[str, Any] = {
    "flower_app": _string,
    "client_app": _import_path("attr"),
    "model": _import_path("callable"),
    "evaluate_fn": _import_path("function"),
    "run_config": _run_config,
    "train_config": _config_record,
    "evaluate_config": _config_record,
    "ga_strategy": _strategy,
    "la_strategy": _strategy,
    "la_keep_strategy_state": _bool,
}


def _machine(name, vars_):
    if vars_.get("ansible_connection") == "local":
        return CONTROLLER
    return str(vars_.get("ansible_host") or vars_.get("hfl_address") or name)


def _service(name, vars_, tier, errors):
    role = vars_["hfl_role"]
    local = vars_.get("ansible_connection") == "local"
    address = vars_.get("hfl_address") or vars_.get("ansible_host")
    address = str(address or ("127.0.0.1" if local else name))
    # Loopback is safe on the controller; a remote service must be reachable from its peers.
    bind_host = str(vars_.get("hfl_bind_host") or ("127.0.0.1" if local else "0.0.0.0"))

    port = vars_.get("hfl_port", DEFAULT_PORT)
    if not _is_int(port) or not 1 <= port <= 65535:
        errors.append(f"host {name}: hfl_port: must be an integer in 1..65535, got {port!r}")
        port = DEFAULT_PORT

    default_cost = 0 if role == GA else DEFAULT_LINK_COST
    cost = vars_.get("hfl_link_cost", default_cost)
    if isinstance(cost, dict):
        for parent, c in cost.items():
            if not _is_number(c) or c < 0:
                errors.append(
                    f"host {name}: hfl_link_cost: cost to {parent} must be a number >= 0, "
                    f"got {c!r}"
                )
        cost = {str(k): v for k, v in cost.items()}
    elif not _is_number(cost) or cost < 0:
        errors.append(f"host {name}: hfl_link_cost: must be a number >= 0 or a map "
                      f"parent -> number, got {cost!r}")
        cost = default_cost

    capacity = vars_.get("hfl_capacity")
    if capacity is not None and (not _is_int(capacity) or capacity < 1):
        errors.append(f"host {name}: hfl_capacity: must be an integer >= 1, got {capacity!r}")
        capacity = None
    pid = vars_.get("hfl_partition_id")
    if pid is not None and (not _is_int(pid) or pid < 0):
        errors.append(f"host {name}: hfl_partition_id: must be an integer >= 0, got {pid!r}")
        pid = None
    partition = vars_.get("hfl_partition")
    problem = None if partition is None else _partition_problem(partition, role)
    if problem:
        errors.append(f"host {name}: hfl_partition: {problem}")
        partition = None
    resources = vars_.get("hfl_resources") or {}
    if not isinstance(resources, dict):
        errors.append(f"host {name}: hfl_resources: must be a map {{cpu, memory}}, "
                      f"got {resources!r}")
        resources = {}
    threads = vars_.get("hfl_threads")
    if threads is not None and (not _is_int(threads) or threads < 1):
        errors.append(f"host {name}: hfl_threads: must be an integer >= 1, got {threads!r}")
        threads = None
    supervisor = vars_.get("hfl_supervisor", "auto")
    if supervisor not in SUPERVISORS:
        errors.append(f"host {name}: hfl_supervisor: must be one of {', '.join(SUPERVISORS)}, "
                      f"got {supervisor!r}")
    return Service(
        name=name, role=role, tier=tier, address=address, bind_host=bind_host, port=port,
        machine=_machine(name, vars_),
        host_state_dir=str(vars_.get("hfl_host_state_dir") or "~/.local/state/hfl"),
        link_cost=cost, parent=vars_.get("hfl_parent"), capacity=capacity, partition_id=pid,
        partition=partition, resources=dict(resources), threads=threads,
        device=str(vars_.get("hfl_device") or ""),
    )


def virtual_client_name(host, index):
    """The name of ``host``'s virtual client number ``index`` (0-based)."""
    return f"{host}-{index}"


def _virtual_clients(service, vars_, errors):
    """``service`` as the services it stands for: itself, or the virtual clients its
    ``hfl_virtual_clients`` asks for (each a client of its own: name, partition, parent, link
    counters; they share the host, its port and its pinned parent and link costs)."""
    n = vars_.get("hfl_virtual_clients")
    if n is None:
        return [service]
    where = f"host {service.name}: hfl_virtual_clients"
    if service.role != CLIENT:
        errors.append(f"{where}: only a client host runs virtual clients (this host is a "
                      f"{service.role})")
        return [service]
    if not _is_int(n) or not 1 <= n <= MAX_VIRTUAL_CLIENTS:
        errors.append(f"{where}: must be an integer in 1..{MAX_VIRTUAL_CLIENTS}, got {n!r}")
        return [service]
    if service.partition_id is not None:
        errors.append(f"host {service.name}: hfl_partition_id: a host with hfl_virtual_clients "
                      f"cannot pin one partition (its virtual clients take the lowest free ids)")
    return [Service(**{**service.__dict__, "name": virtual_client_name(service.name, i),
                       "pool": service.name, "partition_id": None}) for i in range(n)]


def _check_names(services, hosts, errors):
    """A virtual client's name may not be another host's or service's."""
    seen = {}
    for s in services:
        if s.pool is None:
            continue
        if s.name in hosts:
            errors.append(f"host {s.pool}: hfl_virtual_clients: its virtual client {s.name!r} "
                          f"has the name of inventory host {s.name!r}")
        elif s.name in seen:
            errors.append(f"host {s.pool}: hfl_virtual_clients: its virtual client {s.name!r} "
                          f"is also host {seen[s.name]}'s")
        seen.setdefault(s.name, s.pool)


def _partition_problem(value, role):
    """What is wrong with an hfl_partition value, or None."""
    if role != CLIENT:
        return f"only clients hold data (this host is a {role})"
    if not isinstance(value, dict) or set(value) != {"classes", "per_class"}:
        return f"must be a map {{classes: [label, ...], per_class: N}}, got {value!r}"
    classes, per_class = value["classes"], value["per_class"]
    if (not isinstance(classes, list) or not classes or not all(_is_int(c) for c in classes)
            or not all(0 <= c < NUM_CLASSES for c in classes)
            or len(set(classes)) != len(classes)):
        return (f"classes must be a non-empty list of distinct labels in 0..{NUM_CLASSES - 1}, "
                f"got {classes!r}")
    if not _is_int(per_class) or per_class < 1:
        return f"per_class must be an integer >= 1, got {per_class!r}"
    return None


def _check_parents(services, pipeline_of, errors):
    by_name = {s.name: s for s in services}
    las = {s.name for s in services if s.role == LA}
    ga = [s.name for s in services if s.role == GA]
    for s in services:
        if s.parent is not None and s.role != CLIENT:
            errors.append(f"host {s.host}: hfl_parent: only clients have a parent "
                          f"(this host is a {s.role})")
        elif s.role == CLIENT and s.parent is not None and s.parent not in las:
            other = pipeline_of.get(s.parent)
            if s.parent in by_name or other is None:
                what = (f"is a {by_name[s.parent].role}" if s.parent in by_name
                        else "is not a host of the inventory")
            else:
                what = f"belongs to pipeline {other!r}"
            errors.append(f"host {s.host}: hfl_parent: {s.parent!r} {what}; it must name a "
                          f"local_aggregator of this pipeline")
        if isinstance(s.link_cost, dict) and s.role != GA:
            allowed = las if s.role == CLIENT else set(ga)
            if s.role == CLIENT and not las:
                allowed = set(ga)
            for parent in s.link_cost:
                if parent not in allowed:
                    errors.append(f"host {s.host}: hfl_link_cost: {parent!r} is not a possible "
                                  f"parent (one of: {', '.join(sorted(allowed))})")
            if s.role == LA and ga and ga[0] not in s.link_cost:
                errors.append(f"host {s.host}: hfl_link_cost: has no cost for the "
                              f"global_aggregator {ga[0]!r}")
            if s.parent is not None and s.parent in las and s.parent not in s.link_cost:
                errors.append(f"host {s.host}: hfl_link_cost: has no cost for its hfl_parent "
                              f"{s.parent!r}")


def _check_capacity(services, errors):
    pinned = {}
    for s in services:
        if s.role == CLIENT and s.parent:
            pinned[s.parent] = pinned.get(s.parent, 0) + 1
    n_clients = sum(s.role == CLIENT for s in services)
    las = [s for s in services if s.role == LA]
    for la in las:
        if la.capacity is not None and pinned.get(la.name, 0) > la.capacity:
            errors.append(f"host {la.name}: hfl_capacity: {la.capacity} but "
                          f"{pinned[la.name]} clients pin it with hfl_parent")
    if las and all(la.capacity is not None for la in las):
        total = sum(la.capacity for la in las)
        if total < n_clients:
            errors.append(f"host {las[0].name}: hfl_capacity: the LAs take {total} clients in "
                          f"all, but there are {n_clients}")


def _check_partitions(services, pipeline, errors):
    clients = [s for s in services if s.role == CLIENT]
    n = pipeline.num_partitions or len(clients)
    seen = {}
    for c in clients:
        if c.partition_id is None:
            continue
        if c.partition_id >= n:
            errors.append(f"host {c.name}: hfl_partition_id: {c.partition_id} is not below "
                          f"the number of partitions ({n})")
        elif c.partition_id in seen:
            errors.append(f"host {c.name}: hfl_partition_id: {c.partition_id} is also host "
                          f"{seen[c.partition_id]}'s")
        seen.setdefault(c.partition_id, c.name)
    # Stated partitions are disjoint, so together they cannot ask more of a class than it has.
    size = TRAIN_PER_CLASS.get(pipeline.dataset) if not pipeline.task else None
    asked = {}
    for c in clients:
        for cls in (c.partition or {}).get("classes", []):
            asked[cls] = asked.get(cls, 0) + c.partition["per_class"]
            if size is not None and asked[cls] > size:
                errors.append(f"host {c.host}: hfl_partition: class {cls} has {size} training "
                              f"examples in {pipeline.dataset}; the clients' hfl_partition ask "
                              f"{asked[cls]} of it")
    if pipeline.num_partitions is not None and len(clients) > pipeline.num_partitions:
        errors.append(f"host {clients[0].host}: hfl_num_partitions: {pipeline.num_partitions} "
                      f"is fewer than the {len(clients)} clients")


def _assign_partitions(services, pipeline):
    """Clients without hfl_partition_id take the lowest free ids, in name order."""
    taken = {s.partition_id for s in services if s.role == CLIENT and s.partition_id is not None}
    free = (i for i in range(10**9) if i not in taken)
    out = []
    for s in services:
        if s.role == CLIENT and s.partition_id is None:
            s = Service(**{**s.__dict__, "partition_id": next(free)})
        out.append(s)
    return out


def _check_ports(hosts, errors):
    """Two services on one machine cannot share a port (across every pipeline given)."""
    seen = {}
    for name in sorted(hosts):
        vars_ = hosts[name]
        if "hfl_role" not in vars_:
            continue
        port = vars_.get("hfl_port", DEFAULT_PORT)
        key = (_machine(name, vars_), port)
        if key in seen:
            where = "this machine" if key[0] == CONTROLLER else key[0]
            errors.append(f"host {name}: hfl_port: {port} is also used by host {seen[key]} "
                          f"on {where}")
        else:
            seen[key] = name


def build(hosts, groups, pipeline=None):
    """Build and validate the Topology of one pipeline.

    ``hosts`` maps inventory names to their variables (host and group vars merged, as in
    ``hostvars``); ``groups`` maps group names to host names (as Ansible's ``groups``, where a
    parent group lists its children's hosts). Hosts of ``hfl_cluster`` take part. With several
    pipelines in one inventory, ``pipeline`` names the one to build.
    Raises TopologyError with one line per mistake.
    """
    errors = []
    members = sorted(set(groups.get(CLUSTER_GROUP, [])))
    if not members:
        raise TopologyError([f"group {CLUSTER_GROUP}: no hosts (put them in its children "
                             f"groups {', '.join(TIERS)})"])
    pipeline_of = {h: hosts[h].get("hfl_pipeline", Pipeline.name) for h in members}
    names = sorted(set(pipeline_of.values()), key=str)
    if pipeline is None:
        if len(names) > 1:
            raise TopologyError([f"group {CLUSTER_GROUP}: hfl_pipeline: the inventory holds "
                                 f"several pipelines ({', '.join(map(str, names))}); choose one"])
        pipeline = names[0]
    own = [h for h in members if pipeline_of[h] == pipeline]
    if not own:
        raise TopologyError([f"group {CLUSTER_GROUP}: hfl_pipeline: no host belongs to "
                             f"pipeline {pipeline!r}"])

    services = []
    for name in own:
        vars_ = hosts[name]
        tiers = [t for t in TIERS if name in groups.get(t, [])]
        role = vars_.get("hfl_role")
        if len(tiers) != 1:
            where = "in no tier group" if not tiers else "in tiers " + " and ".join(tiers)
            errors.append(f"host {name}: tier: {where}; put it in exactly one of "
                          f"{', '.join(TIERS)}")
        if role not in ROLE_TIER:
            errors.append(f"host {name}: hfl_role: {role!r} is not one of "
                          f"{', '.join(ROLE_TIER)}")
            continue
        tier = tiers[0] if tiers else ROLE_TIER[role]
        if len(tiers) == 1 and tier != ROLE_TIER[role] and not vars_.get("hfl_allow_any_tier"):
            errors.append(f"host {name}: hfl_role: a {role} belongs on tier {ROLE_TIER[role]}, "
                          f"not {tier} (set hfl_allow_any_tier: true to allow it)")
        services.extend(_virtual_clients(_service(name, vars_, tier, errors), vars_, errors))

    gas = [s.name for s in services if s.role == GA]
    if len(gas) != 1:
        what = "none" if not gas else ", ".join(gas)
        errors.append(f"pipeline {pipeline}: hfl_role: needs exactly one global_aggregator, "
                      f"found {what}")
    source = gas[0] if gas else own[0]
    settings = _pipeline(hosts[source], source, errors)
    if not any(s.role == CLIENT for s in services):
        errors.append(f"pipeline {pipeline}: hfl_role: needs at least one client")
    _check_names(services, hosts, errors)
    _check_parents(services, pipeline_of, errors)
    _check_capacity(services, errors)
    _check_partitions(services, settings, errors)
    _check_ports({h: hosts[h] for h in members}, errors)
    if errors:
        # A pool host's mistake is its every virtual client's: said once.
        raise TopologyError(list(dict.fromkeys(errors)))
    order = {GA: 0, LA: 1, CLIENT: 2}
    # A pool's virtual clients stay together, in number order.
    services = sorted(_assign_partitions(services, settings), key=lambda s: (
        order[s.role], s.host, int(s.name.rsplit("-", 1)[1]) if s.pool else -1))
    return Topology(pipeline=settings, services=tuple(services))
