# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Services left behind: what earlier placements ran that the current plan no longer runs.

Pure Python (no Ansible imports). A host that leaves the inventory cannot be targeted by its
inventory name any more, so the plan keeps how each host was reached (``connections``, the
host's CONNECTION_VARS) and fl_plan keeps one record per service still to stop in
``<hfl_state_dir>/<pipeline>/stale/<id>.json``, until placement (role fl_placement) has
stopped it there and removed the record.
"""

from __future__ import annotations

import hashlib
import json

# Host variables that tell how Ansible reaches a host. Passwords are never kept: a departed
# host reached by one cannot be reached again, and placement says so.
CONNECTION_VARS = (
    "ansible_connection", "ansible_host", "ansible_port", "ansible_user",
    "ansible_ssh_private_key_file", "ansible_private_key_file", "ansible_ssh_common_args",
    "ansible_ssh_extra_args", "ansible_python_interpreter", "ansible_become",
    "ansible_become_method", "ansible_become_user",
)
RECORD_KEYS = ("name", "host", "dir", "connection")


def connection_vars(hostvars):
    """The CONNECTION_VARS a host has, from its (templated) host variables."""
    return {k: hostvars[k] for k in CONNECTION_VARS if k in hostvars}


def _where(record):
    return (record["host"], record["dir"])


def record_id(record):
    """A record's file name (no suffix): the service's name and a digest of its host and
    folder, so two folders of one name never share a record."""
    digest = hashlib.sha256(json.dumps(_where(record)).encode()).hexdigest()[:12]
    return f"{record['name']}-{digest}"


def stale_services(previous, planned, recorded=()):
    """Services to stop because ``planned`` no longer runs them: those of ``previous`` (the
    plan placed last, or None) and of ``recorded`` (records not yet known stopped) that
    ``planned`` does not run on the same host in the same folder: a host that left the
    inventory, a changed ``hfl_host_state_dir``, a switch away from the process runtime.
    Only process services count: podman and k3s find what they placed in their own state (the
    podman host's unit files, the cluster's labelled objects). Clients the orchestrator left
    out stay in the plan's services, so they are not stale: it stops them itself.
    Each is ``{id, name, host, dir, connection}`` (the host's CONNECTION_VARS when it was
    placed), sorted by id; a record wins over the last plan's entry for the same folder."""
    running = set()
    if planned.get("runtime") == "process":
        running = {_where(s) for s in planned["services"]}
    candidates = [r for r in recorded if all(k in r for k in RECORD_KEYS)]
    if previous and previous.get("runtime") == "process":
        connections = previous.get("connections") or {}
        candidates += [{"name": s["name"], "host": s["host"], "dir": s["dir"],
                        "connection": dict(connections.get(s["host"]) or {})}
                       for s in previous.get("services", [])]
    found = {}
    for record in candidates:
        if _where(record) not in running:
            kept = {k: record[k] for k in RECORD_KEYS}
            found.setdefault(record_id(kept), {"id": record_id(kept), **kept})
    return [found[k] for k in sorted(found)]
