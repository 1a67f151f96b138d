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
    GA,
    LA,
    TopologyError,
)


def config_digest(config):
    """sha256 of the config without ``parent``: a parent change is a reload, not a restart."""
    body = {k: v for k, v in config.items() if k != "parent"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def service_dir(topology, service):
    """The service's folder on its host: config, pidfile, log and ``state/``."""
    return f"{service.host_state_dir.rstrip('/')}/{topology.pipeline.name}/{service.name}"


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


def _config(topology, service, parent):
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
        cfg["parent"] = f"{parent.address}:{parent.port}"
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
        if p.partitioner == "dirichlet":
            cfg["dirichlet_alpha"] = p.dirichlet_alpha
        elif p.partitioner == "label_skew":
            cfg["classes_per_client"] = p.classes_per_client
    return cfg


def make_plan(topology, assignment=None):
    """The plan dict for ``topology``; ``assignment`` (client -> parent name) overrides the
    inventory's choice for the clients it names (the orchestrator's re-placement)."""
    chosen = default_assignment(topology)
    if assignment:
        merged = {**chosen, **assignment}
        _check_assignment(topology, assignment, merged)
        chosen = merged
    services = []
    for s in topology.services:
        if s.role == GA:
            parent, cost = None, 0
        elif s.role == LA:
            parent = topology.ga
            cost = topology.link_cost(s.name, parent.name)
        else:
            parent = topology.service(chosen[s.name])
            # A client the orchestrator moves outside its cost map has no known cost (None).
            cost = (s.link_cost.get(parent.name) if isinstance(s.link_cost, dict)
                    else s.link_cost)
        config = _config(topology, s, parent)
        services.append({
            "name": s.name,
            "host": s.host,
            "role": s.role,
            "tier": s.tier,
            "parent": parent.name if parent else None,
            "address": s.address,
            "port": s.port,
            "link_cost": cost,
            "resources": dict(s.resources),
            "dir": service_dir(topology, s),
            "config": config,
            "digest": config_digest(config),
        })
    return {
        "pipeline": topology.pipeline.name,
        "runtime": topology.pipeline.runtime,
        "assignment": dict(sorted(chosen.items())),
        "services": services,
    }
