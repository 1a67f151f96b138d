# Copyright: hfl.orchestration developers; Apache-2.0
"""What the controller reads, in the configuration models' terms: the inventory's Topology as a
policies.Fleet, a service's /status histogram as counts by label, the GA's /status as the global
rounds it has completed. The orchestrator's observe step and the report both read them so.
"""

from __future__ import annotations

import contextlib

from ansible_collections.hfl.orchestration.plugins.plugin_utils import policies


def fleet_of(topology) -> policies.Fleet:
    """The configuration models' view of a topology.Topology (what the inventory says)."""
    ga = topology.ga.name
    weights: dict[str, dict[str, float]] = {}
    for la in topology.las:
        weights[la.name] = {ga: float(topology.link_cost(la.name, ga))}
    for c in topology.clients:
        row = {p: float(topology.link_cost(c.name, p)) for p in topology.candidates(c.name)}
        # Straight to the GA: the overflow when every LA is full, and flat FL.
        with contextlib.suppress(KeyError):
            row.setdefault(ga, float(topology.link_cost(c.name, ga)))
        weights[c.name] = row
    return policies.Fleet(
        ga=ga, las=[la.name for la in topology.las], clients=[c.name for c in topology.clients],
        cost=weights, capacity={la.name: la.capacity for la in topology.las},
        pins={c.name: c.parent for c in topology.clients if c.parent},
        budget=topology.pipeline.budget)


def histogram_list(hist: dict | list) -> list[int]:
    """A /status histogram ({"label": count}) as counts indexed by label."""
    if isinstance(hist, list):
        return [int(v) for v in hist]
    width = 1 + max(int(k) for k in hist)
    out = [0] * width
    for k, v in hist.items():
        out[int(k)] = int(v)
    return out


def completed_round(ga_status: dict | None) -> int:
    """Global rounds the GA has completed: /status `global_round` is the round in progress,
    or the last one once the pipeline has finished."""
    if not ga_status or not ga_status.get("reachable", True):
        return 0
    rnd = int(ga_status.get("global_round") or 0)
    return rnd if ga_status.get("state") == "finished" else max(0, rnd - 1)


def clients_seen_by_parents(clients, statuses: dict[str, dict]) -> dict[str, dict]:
    """What the controller knows of `clients` it cannot ask itself (pods on podman and k3s
    publish no client port): a client is reachable while an aggregator that answered lists it
    among its children, its /status then standing in for the client's (no histogram)."""
    seen = {}
    for parent, st in statuses.items():
        if st.get("reachable", True):
            for child in st.get("children") or []:
                seen.setdefault(child, parent)
    return {c: ({"reachable": True, "parent_name": seen[c], "read_at": seen[c]} if c in seen else
                {"reachable": False,
                 "error": "not among any aggregator's children (a client in a pod is read at "
                          "its parent)"})
            for c in clients}
