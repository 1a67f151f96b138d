# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Action plugin behind hfl.orchestration.fl_plan (documented in plugins/modules/fl_plan.py):
runs on the controller, reads the inventory from task_vars and writes plan.json there."""

from __future__ import annotations

import json
import os

import yaml
from ansible.plugins.action import ActionBase
from ansible_collections.hfl.orchestration.plugins.plugin_utils import plan, topology


def _plain(value):
    """Inventory values as plain JSON types (Ansible hands out its own subclasses)."""
    return json.loads(json.dumps(value))


def inventory_view(task_vars):
    groups = {g: list(hosts) for g, hosts in task_vars["groups"].items()}
    hostvars = task_vars["hostvars"]
    wanted = topology.inventory_vars()
    hosts = {}
    for name in set(groups.get(topology.CLUSTER_GROUP, [])):
        hv = hostvars[name]
        # Only the variables the topology reads are templated: others may not resolve here.
        hosts[name] = {k: _plain(hv[k]) for k in wanted if k in hv}
    return hosts, groups


def _read_assignment(path):
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    data = data.get("assignment", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping client -> parent")
    return {str(k): str(v) for k, v in data.items()}


def _write_if_changed(path, text):
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return True


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=dict(
            pipeline=dict(type="str"),
            assignment_file=dict(type="path"),
        ))[1]
        try:
            hosts, groups = inventory_view(task_vars)
            topo = topology.build(hosts, groups, pipeline=args["pipeline"])
            assignment = None
            if args["assignment_file"]:
                assignment = _read_assignment(args["assignment_file"])
            the_plan = plan.make_plan(topo, assignment)
        except topology.TopologyError as e:
            return dict(result, failed=True, errors=e.errors,
                        msg="the inventory is not a valid pipeline:\n" + "\n".join(e.errors))
        except (OSError, ValueError, yaml.YAMLError) as e:
            return dict(result, failed=True, msg=f"assignment_file: {e}")

        pipeline_dir = os.path.join(os.path.expanduser(topo.pipeline.state_dir), topo.pipeline.name)
        path = os.path.join(pipeline_dir, "plan.json")
        text = json.dumps(the_plan, indent=2, sort_keys=True) + "\n"
        if self._task.check_mode:
            try:
                with open(path) as f:
                    changed = f.read() != text
            except FileNotFoundError:
                changed = True
        else:
            changed = _write_if_changed(path, text)
        return dict(
            result, changed=changed, plan_path=path,
            ansible_facts=dict(hfl_plan=the_plan, hfl_pipeline_dir=pipeline_dir),
        )
