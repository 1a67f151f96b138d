# Copyright: hfl.orchestration developers
# Apache License 2.0
"""The plan: which client runs under which parent, and one fl_service spec per service.

Pure Python (no Ansible imports). ``make_plan(topology, assignment)`` returns the JSON-able dict
that docs/architecture.md specifies and that every executor (process, podman, k3s) places.
"""

from __future__ import annotations

import hashlib
import json

from ansible_collections.hfl.orchestration.plugins.plugin_utils.topology import (
    CLIENT,
    CONTROLLER_CN,
    GA,
    LA,
    Service,
    TopologyError,
)

# Where a service finds the shipped Flower app on its host (process runtime): ``<dir>/app``.
APP_SUBDIR = "app"
# A service's own certificate and key and the pipeline's CA on its host: config key -> file
# under ``<dir>/tls`` (role fl_placement copies them there from the controller's fl_pki folder).
TLS_FILES = {"tls_cert": "service.crt", "tls_key": "service.key", "tls_ca": "ca.crt"}


def config_digest(config, app_digest=""):
    """sha256 of the config without ``parent`` (nor a pool's virtual clients' parents): a
    parent change is a reload, not a restart. ``app_digest`` (the Flower app folder's content)
    is part of it when the service runs an app, so an edited app restarts its services; without
    one the digest is the config's alone."""
    body = {k: v for k, v in config.items() if k != "parent"}
    if "virtual_clients" in body:
        body["virtual_clients"] = [{k: v for k, v in m.items() if k != "parent"}
                                   for m in body["virtual_clients"]]
    if app_digest:
        body = {"config": body, "app_digest": app_digest}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def service_dir(topology, service):
    """The service's folder on its host: config, pidfile, log and ``state/``."""
    return f"{service.host_state_dir.rstrip('/')}/{topology.pipeline.name}/{service.name}"


def tls_paths(topology, service):
    """The service's credential paths on its host (config key -> path), or {} when the pipeline
    is ``hfl_insecure`` (plain HTTP)."""
    if topology.pipeline.insecure:
        return {}
    folder = f"{service_dir(topology, service)}/tls"
    return {key: f"{folder}/{name}" for key, name in TLS_FILES.items()}


def parent_address(service):
    """The ``parent`` a child's config names to reach ``service`` (host:port); the orchestrator's
    live switch sends the same, so the reload that placement causes finds it in force."""
    return f"{service.address}:{service.port}"


def service_url(topology, service):
    """Where its peers and the controller's readers reach the service: https unless the
    pipeline is ``hfl_insecure``, at its plan address (no path)."""
    scheme = "http" if topology.pipeline.insecure else "https"
    host = f"[{service.address}]" if ":" in service.address else service.address
    return f"{scheme}://{host}:{service.port}"


def default_assignment(topology):
    """Client -> parent from the inventory: ``hfl_parent`` pins first, then each other client
    (in name order) goes to its cheapest candidate LA with room left; ties go to the LA with the
    fewest clients, then by name. No LA at all is flat FL: every client's parent is the GA."""
    if not topology.las:
        return {c.name: topology.ga.name for c in topology.clients}
    load = {la.name: 0 for la in topology.las}
    room = {la.name: la.capacity for la in topology.las}
    assignment = {}
    for c in topology.clients:
        if c.parent:
            assignment[c.name] = c.parent
            load[c.parent] += 1
    for c in topology.clients:
        if c.name in assignment:
            continue
        options = [p for p in topology.candidates(c.name)
                   if room[p] is None or load[p] < room[p]]
        if not options:
            raise TopologyError([f"host {c.name}: hfl_link_cost: every candidate parent is full "
                                 f"(hfl_capacity)"])
        best = min(options, key=lambda p: (topology.link_cost(c.name, p), load[p], p))
        assignment[c.name] = best
        load[best] += 1
    return assignment


def _check_assignment(topology, assignment, merged):
    errors = []
    aggregators = {s.name for s in topology.services if s.role != CLIENT}
    clients = {c.name for c in topology.clients}
    for child, parent in sorted(assignment.items()):
        if child not in clients:
            errors.append(f"assignment: {child!r} is not a client of pipeline "
                          f"{topology.pipeline.name}")
        elif parent not in aggregators:
            errors.append(f"assignment: {child}: parent {parent!r} is not an aggregator")
        elif parent not in topology.candidates(child) and parent != topology.ga.name:
            errors.append(f"assignment: {child}: {parent!r} is not in its hfl_link_cost map")
    for la in topology.las:
        n = sum(p == la.name for p in merged.values())
        if la.capacity is not None and n > la.capacity:
            errors.append(f"assignment: {la.name} gets {n} clients, above its hfl_capacity "
                          f"{la.capacity}")
    if errors:
        raise TopologyError(errors)


def _app_config(topology, service, app):
    """The Flower app keys of one service's config (only those the inventory sets, so a
    pipeline without them keeps its configs and digests)."""
    p = topology.pipeline
    cfg = {}
    if app is not None:
        cfg["app_dir"] = f"{service_dir(topology, service)}/{APP_SUBDIR}"
    if service.role in (GA, CLIENT) and p.run_config:
        cfg["run_config"] = dict(p.run_config)
    if service.role in (GA, LA) and p.train_config:
        cfg["train_config"] = dict(p.train_config)
    strategy = p.ga_strategy if service.role == GA else p.la_strategy
    if service.role in (GA, LA) and strategy:
        cfg["strategy"] = strategy["class"]
        if strategy.get("kwargs"):
            cfg["strategy_kwargs"] = dict(strategy["kwargs"])
    if service.role == GA:
        for key in ("model", "evaluate_fn"):
            if getattr(p, key):
                cfg[key] = getattr(p, key)
        if p.evaluate_config:
            cfg["evaluate_config"] = dict(p.evaluate_config)
        if p.evaluate_every:
            cfg["evaluate_every"] = p.evaluate_every
    elif service.role == LA and p.la_keep_strategy_state:
        cfg["keep_strategy_state"] = True
    elif service.role == CLIENT:
        client_app = p.client_app or (app.clientapp if app is not None else "")
        if client_app:
            cfg["client_app"] = client_app
    return cfg


def label_slices(topology, client):
    """``client``'s hfl_partition as fl_service's label_slices "CLASS:START:COUNT,...": of each
    class it takes the next examples after those of the stated clients with lower partition ids,
    so stated partitions never overlap and a client that joins later (a higher id) moves no
    one else's."""
    start = {}
    for c in sorted(topology.clients, key=lambda s: s.partition_id):
        if not c.partition:
            continue
        if c.name == client.name:
            return ",".join(f"{cls}:{start.get(cls, 0)}:{c.partition['per_class']}"
                            for cls in c.partition["classes"])
        for cls in c.partition["classes"]:
            start[cls] = start.get(cls, 0) + c.partition["per_class"]
    raise KeyError(client.name)


def _config(topology, service, parent, app=None):
    p = topology.pipeline
    cfg = {
        "name": service.name,
        "pipeline": p.name,
        "bind_host": service.bind_host,
        "port": service.port,
        "state_dir": service_dir(topology, service) + "/state",
        "dataset": p.dataset,
        "seed": p.seed,
    }
    if parent is not None:
        cfg["parent"] = parent_address(parent)
    for key in ("task", "data_dir"):
        if getattr(p, key):
            cfg[key] = getattr(p, key)
    if p.download:
        cfg["download"] = True
    if service.threads is not None:
        cfg["threads"] = service.threads
    if service.device:
        cfg["device"] = service.device
    if service.role in (GA, LA):
        cfg["min_participants"] = p.min_participants
        cfg["round_timeout_s"] = p.round_timeout_s
        if p.example_cap_ratio is not None:
            cfg["example_cap_ratio"] = p.example_cap_ratio
    if service.role == GA:
        cfg["global_rounds"] = p.global_rounds
    elif service.role == LA:
        cfg["local_rounds"] = p.local_rounds
    else:
        cfg.update(
            partitioner=p.partitioner,
            partition_id=service.partition_id,
            num_partitions=topology.num_partitions,
            local_epochs=p.local_epochs,
            batch_size=p.batch_size,
            learning_rate=p.learning_rate,
        )
        if service.partition:
            cfg["label_slices"] = label_slices(topology, service)
        elif p.partitioner == "dirichlet":
            cfg["dirichlet_alpha"] = p.dirichlet_alpha
        elif p.partitioner == "label_skew":
            cfg["classes_per_client"] = p.classes_per_client
    cfg.update(tls_paths(topology, service))
    if tls_paths(topology, service) and p.pki_controller_name != CONTROLLER_CN:
        cfg["controller_name"] = p.pki_controller_name
    cfg.update(_app_config(topology, service, app))
    return cfg


def _pool_config(topology, members, chosen, app):
    """One pool's config: the client config of its host, and per virtual client its name,
    partition and parent (fl_service runs them all in one process)."""
    first = members[0]
    host = Service(**{**first.__dict__, "name": first.pool, "pool": None, "partition": None})
    config = _config(topology, host, None, app)
    config.pop("partition_id")
    config.pop("label_slices", None)
    config["virtual_clients"] = []
    for m in members:
        entry = {"name": m.name, "partition_id": m.partition_id,
                 "parent": parent_address(topology.service(chosen[m.name]))}
        if m.partition:
            entry["label_slices"] = label_slices(topology, m)
        config["virtual_clients"].append(entry)
    return host, config


def hosts_left_out(topology, clients, running):
    """The hosts that leaving out ``clients`` limits away: each one's own host, but a pool's
    only once all its virtual clients are left out (they share one process). A virtual client
    of the ``running`` plan that left the inventory leaves with its pool's new config."""
    was_virtual = {c for s in running.get("services", []) for c in s.get("virtual_clients") or ()}
    pools = topology.pools
    clients = set(clients)
    out = set()
    for name in clients:
        try:
            s = topology.service(name)
        except KeyError:
            if name not in was_virtual:
                out.add(name)
            continue
        if s.pool is None or all(m.name in clients for m in pools[s.pool]):
            out.add(s.host)
    return sorted(out)


def hosts_to_place(running, planned):
    """The hosts of ``planned`` whose services would be placed differently than in the
    ``running`` plan: a service new to it, on another host, or with another config or digest
    (a client's new parent is a new config). Re-placing only these leaves the rest alone."""
    before = {s["name"]: s for s in running.get("services", [])}
    hosts = set()
    for s in planned["services"]:
        old = before.get(s["name"])
        if old is None or any(old.get(k) != s[k] for k in ("host", "config", "digest")):
            hosts.add(s["host"])
    return sorted(hosts)


def _pool_entry(topology, members, chosen, app, app_digest):
    """The plan entry of a pool: one client process on its host; ``virtual_clients`` maps each
    of its clients to its parent and that link's cost (the child ends of those links)."""
    host, config = _pool_config(topology, members, chosen, app)
    return {
        "name": host.name,
        "host": host.name,
        "role": CLIENT,
        "tier": host.tier,
        "parent": None,
        "address": host.address,
        "port": host.port,
        "url": service_url(topology, host),
        "link_cost": None,
        "resources": dict(host.resources),
        "dir": service_dir(topology, host),
        "config": config,
        "digest": config_digest(config, app_digest),
        "virtual_clients": {m.name: {"parent": chosen[m.name], "link_cost": _client_cost(
            m, chosen[m.name])} for m in members},
    }


def _client_cost(client, parent):
    """The cost of client -> parent; None for a parent outside its cost map (the orchestrator
    may move a client there)."""
    if isinstance(client.link_cost, dict):
        return client.link_cost.get(parent)
    return client.link_cost


def make_plan(topology, assignment=None, app=None):
    """The plan dict for ``topology``; ``assignment`` (client -> parent name) overrides the
    inventory's choice for the clients it names (the orchestrator's re-placement). ``app`` is
    the ``hfl_flower_app`` folder (a ``flower_app.App``, or None): every service gets its
    ``app_dir`` and the app's digest in its own."""
    chosen = default_assignment(topology)
    if assignment:
        merged = {**chosen, **assignment}
        _check_assignment(topology, assignment, merged)
        chosen = merged
    services = []
    app_digest = app.digest if app is not None else ""
    pools = topology.pools
    for s in topology.services:
        if s.pool:
            if s is pools[s.pool][0]:  # the pool's one process, where its first client was
                services.append(_pool_entry(topology, pools[s.pool], chosen, app, app_digest))
            continue
        if s.role == GA:
            parent, cost = None, 0
        elif s.role == LA:
            parent = topology.ga
            cost = topology.link_cost(s.name, parent.name)
        else:
            parent = topology.service(chosen[s.name])
            cost = _client_cost(s, parent.name)
        config = _config(topology, s, parent, app)
        services.append({
            "name": s.name,
            "host": s.host,
            "role": s.role,
            "tier": s.tier,
            "parent": parent.name if parent else None,
            "address": s.address,
            "port": s.port,
            "url": service_url(topology, s),
            "link_cost": cost,
            "resources": dict(s.resources),
            "dir": service_dir(topology, s),
            "config": config,
            "digest": config_digest(config, app_digest),
        })
    out = {
        "pipeline": topology.pipeline.name,
        "runtime": topology.pipeline.runtime,
        # Mutual TLS on every link unless hfl_insecure; the playbooks provision and ship the
        # credentials only then.
        "tls": not topology.pipeline.insecure,
        "assignment": dict(sorted(chosen.items())),
        "services": services,
    }
    if app is not None:
        # Where the app comes from on the controller; fl_plan adds the archive it ships.
        out["app"] = {"source": app.dir, "digest": app.digest}
    return out
