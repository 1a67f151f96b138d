# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Action plugin behind hfl.orchestration.fl_plan (documented in plugins/modules/fl_plan.py):
runs on the controller, reads the inventory from task_vars and writes plan.json there."""

from __future__ import annotations

import json
import os
import sys

import yaml
from ansible.plugins.action import ActionBase
from ansible_collections.hfl.orchestration.plugins.module_utils.args_common import (
    PIPELINE_ARG_SPEC,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    flower_app,
    plan,
    stale,
    topology,
)

APP_CHECK_FILE = "app-check.json"  # in the pipeline folder: the last import check that passed
STALE_DIR = "stale"  # in the pipeline folder: one record per placed service still to stop


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
    """(client -> parent, the clients left out) from an assignment file."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    left_out = data.get("left_out") or [] if isinstance(data, dict) else []
    data = data.get("assignment", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not isinstance(left_out, list):
        raise ValueError(f"{path}: expected a mapping client -> parent (and a list left_out)")
    return {str(k): str(v) for k, v in data.items() if k != "left_out"}, [str(h) for h in left_out]


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _stale(pipeline_dir, previous, the_plan, check_mode):
    """The services to stop (stale.stale_services), each kept in <pipeline>/stale/<id>.json
    until placement has stopped it and removes the file; a record of a service that runs again
    is dropped. Check mode writes nothing."""
    folder = os.path.join(pipeline_dir, STALE_DIR)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        names = []
    recorded = [r for r in (_read_json(os.path.join(folder, n)) for n in names)
                if isinstance(r, dict)]
    to_stop = stale.stale_services(previous, the_plan, recorded)
    if not check_mode:
        keep = {f"{r['id']}.json" for r in to_stop}
        for record in to_stop:
            _write_if_changed(os.path.join(folder, f"{record['id']}.json"),
                              json.dumps(record, indent=2, sort_keys=True) + "\n")
        for name in set(names) - keep:
            os.remove(os.path.join(folder, name))
    return to_stop


def _base_dir(task_vars, host):
    """What a relative hfl_flower_app is relative to: the folder of the inventory file that
    defines the host (the GA's), else the playbook's folder."""
    hv = task_vars["hostvars"][host]
    return str(hv.get("inventory_dir") or task_vars.get("playbook_dir") or os.getcwd())


def _load_app(topo, task_vars):
    """The hfl_flower_app folder (or None), with hfl_run_config checked against its config."""
    who = f"host {topo.ga.name}"
    app = None
    if topo.pipeline.flower_app:
        path = flower_app.resolve(topo.pipeline.flower_app, _base_dir(task_vars, topo.ga.name))
        try:
            app = flower_app.load(path, who)
        except OSError as e:  # a file that cannot be read while hashing
            raise topology.TopologyError([f"{who}: hfl_flower_app: {e}"]) from None
    errors = flower_app.check_run_config(topo.pipeline.run_config, app, who)
    if errors:
        raise topology.TopologyError(errors)
    return app


def _check_imports(topo, app, pipeline_dir, check_mode):
    """Import the components the inventory names (a subprocess of this interpreter, the app
    folder on its path); a check that passed for the same app, components and interpreter is
    not run again. Returns a warning when it could not run, else None."""
    checks = flower_app.components(topo.pipeline, app)
    if not checks:
        return None
    python = sys.executable
    key = flower_app.check_key(checks, app, python)
    cache = os.path.join(pipeline_dir, APP_CHECK_FILE)
    try:
        with open(cache) as f:
            if json.load(f).get("key") == key:
                return None
    except (OSError, ValueError):
        pass
    errors, skipped = flower_app.import_check(checks, app.dir if app else "", python,
                                              f"host {topo.ga.name}")
    if errors:
        raise topology.TopologyError(errors)
    if skipped:
        return f"the Flower app's components were not checked before placing: {skipped}"
    if not check_mode:
        _write_if_changed(cache, json.dumps({"key": key}) + "\n")
    return None


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
            assignment_file=dict(type="path"),
            **PIPELINE_ARG_SPEC,
        ))[1]
        try:
            hosts, groups = inventory_view(task_vars)
            topo = topology.build(hosts, groups, pipeline=args["pipeline"])
            assignment, left_out = None, []
            if args["assignment_file"]:
                try:
                    assignment, left_out = _read_assignment(args["assignment_file"])
                except (OSError, ValueError, yaml.YAMLError) as e:
                    return dict(result, failed=True, msg=f"assignment_file: {e}")
            app = _load_app(topo, task_vars)
            the_plan = plan.make_plan(topo, assignment, app)
            # Left-out clients keep their spec (the orchestrator stops them through it on the
            # process runtime); podman and k3s render none of them.
            # Left out by host: a client, or a pool (all its virtual clients together).
            clients = {s["name"] for s in the_plan["services"] if s["role"] == topology.CLIENT}
            if set(left_out) & clients:
                the_plan["left_out"] = sorted(set(left_out) & clients)
            the_plan["connections"] = {
                s.host: _plain(stale.connection_vars(task_vars["hostvars"][s.host]))
                for s in topo.services}
            pipeline_dir = os.path.join(os.path.expanduser(topo.pipeline.state_dir),
                                        topo.pipeline.name)
            warning = _check_imports(topo, app, pipeline_dir, self._task.check_mode)
        except topology.TopologyError as e:
            return dict(result, failed=True, errors=e.errors,
                        msg="the inventory is not a valid pipeline:\n" + "\n".join(e.errors))
        if warning:
            result.setdefault("warnings", []).append(warning)

        if app is not None:
            # The one archive every host unpacks (roles/fl_placement/tasks/app.yml).
            archive_dir = os.path.join(pipeline_dir, "app")
            the_plan["app"]["archive"] = (
                os.path.join(archive_dir, f"{app.digest[:16]}.tar.gz") if self._task.check_mode
                else flower_app.write_archive(app, archive_dir))
        path = os.path.join(pipeline_dir, "plan.json")
        to_stop = _stale(pipeline_dir, _read_json(path), the_plan, self._task.check_mode)
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
            ansible_facts=dict(hfl_plan={**the_plan, "stale": to_stop},
                               hfl_pipeline_dir=pipeline_dir),
        )
