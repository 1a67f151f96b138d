# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Action plugin behind hfl.orchestration.orchestrate (docs: plugins/modules/orchestrate.py).

Wiring only: the loop, the policies, the cost model and the check live in plugin_utils
(orchestrator.py and friends). Here are the Ansible ends of its hooks: the inventory file
re-read every iteration, every /status fetched from the task's host, placement re-run through
ansible-runner, the GA told its last round, events appended to events.jsonl.

Where the task's host (the GA's) is this machine (connection local) the fetches and the GA's
/control run in this process: an iteration then takes milliseconds, where executing a module
takes a second or more and lets fast rounds run past a decision. Elsewhere they run there as
the modules fl_status_info and ansible.builtin.uri.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from ansible import constants as C
from ansible.inventory.manager import InventoryManager
from ansible.module_utils.urls import open_url
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.action import ActionBase
from ansible.template import Templar
from ansible.utils.display import Display
from ansible.utils.vars import load_extra_vars
from ansible.vars.manager import VariableManager
from ansible_collections.hfl.orchestration.plugins.module_utils.fl_status import (
    fetch_all,
    tls_options,
    virtual_client_statuses,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (
    flower_app,
    plan,
    topology,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import (
    clients_seen_by_parents,
    fleet_of,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.orchestrator import (
    Hooks,
    Orchestrator,
    Settings,
)

display = Display()
PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"

SPEC = dict(
    pipeline=dict(type="str"),
    inventory=dict(type="list", elements="path"),
    state_dir=dict(type="path"),
    config_model=dict(type="str", choices=["min_comm_cost", "min_kld", "flat"]),
    verify=dict(type="bool", default=True),
    window=dict(type="int", default=5),
    stall_window=dict(type="int", default=5),
    poll_s=dict(type="float", default=2.0),
    max_iterations=dict(type="int", default=100_000),
    max_wall_s=dict(type="float", default=3600.0),
    status_timeout=dict(type="float", default=3.0),
)


def _plain(value):
    return json.loads(json.dumps(value, default=str))


def read_inventory(sources, extra_vars, pipeline):
    """The inventory as it is on disk now: the Topology of `pipeline` (TopologyError if bad)."""
    loader = DataLoader()
    inv = InventoryManager(loader=loader, sources=sources)
    vm = VariableManager(loader=loader, inventory=inv)
    groups = {g: list(h) for g, h in inv.get_groups_dict().items()}
    wanted = topology.inventory_vars()
    hosts = {}
    for name in groups.get(topology.CLUSTER_GROUP, []):
        hv = {**vm.get_vars(host=inv.get_host(name), include_hostvars=False), **extra_vars}
        templar = Templar(loader=loader, variables=hv)
        hosts[name] = {k: _plain(templar.template(hv[k])) for k in wanted if k in hv}
        if "ansible_connection" in hv:
            hosts[name]["ansible_connection"] = str(hv["ansible_connection"])
    return topology.build(hosts, groups, pipeline=pipeline)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=SPEC)[1]
        if args["stall_window"] < 0:
            return dict(result, failed=True, msg="stall_window (hfl_stall_window) must be 0 (no "
                        f"stall experiments) or more global rounds, got {args['stall_window']}")
        self._vars = task_vars
        self._args = args
        self._sources = args["inventory"] or list(task_vars.get("ansible_inventory_sources", []))
        self._extra = dict(load_extra_vars(DataLoader()))
        self._place_extra = {}
        self._stopped = set()  # left-out hosts already stopped
        try:
            self._topo = read_inventory(self._sources, self._extra, args["pipeline"])
        except topology.TopologyError as e:
            return dict(result, failed=True, msg="the inventory is not a valid pipeline:\n"
                        + "\n".join(e.errors))
        p = self._topo.pipeline
        state_root = args["state_dir"] or self._extra.get("hfl_state_dir") or p.state_dir
        self._dir = Path(os.path.expanduser(state_root)) / p.name
        self._dir.mkdir(parents=True, exist_ok=True)
        self._events = []
        settings = Settings(
            config_model=args["config_model"] or p.config_model, objective=p.objective,
            budget=p.budget, target_accuracy=p.target_accuracy, global_rounds=p.global_rounds,
            local_rounds=p.local_rounds, verify=args["verify"], window=args["window"],
            stall_window=args["stall_window"], poll_s=args["poll_s"],
            max_iterations=args["max_iterations"], max_wall_s=args["max_wall_s"])
        hooks = Hooks(read_fleet=self._read_fleet, observe=self._observe,
                      reroute=self._reroute, apply=self._apply,
                      set_last_round=self._set_last_round, emit=self._emit)
        orch = Orchestrator(settings=settings, hooks=hooks, assignment=self._running())
        if self._task.check_mode:
            preview = orch.preview()
            display.display(f"orchestrate (check mode) would apply: {preview['assignment']}")
            return dict(result, changed=preview["changed"], assignment=preview["assignment"],
                        events=self._events)
        summary = orch.run()
        failed = (summary["stop_reason"] or "").startswith("placement failed")
        if summary["stop_reason"].startswith("oscillation"):
            result.setdefault("warnings", []).append(summary["stop_reason"])
        return dict(result, changed=summary["reconfigurations"] > 0, failed=failed,
                    msg=summary["stop_reason"], events_path=str(self._dir / "events.jsonl"),
                    **summary)

    # --- hooks -----------------------------------------------------------------------------

    def _running_plan(self):
        """plan.json of the last placement, or {}."""
        try:
            return json.loads((self._dir / "plan.json").read_text())
        except (OSError, ValueError):
            return {}

    def _running(self):
        """The assignment placed now: plan.json from the last placement, else the default."""
        return self._running_plan().get("assignment") or plan.default_assignment(self._topo)

    def _read_fleet(self):
        try:
            self._topo = read_inventory(self._sources, self._extra, self._args["pipeline"])
        except topology.TopologyError as e:
            # Mid-edit or broken: keep the last good inventory and say so once per iteration.
            display.warning("orchestrate: inventory invalid, keeping the last good one: "
                            + "; ".join(e.errors))
        return fleet_of(self._topo)

    def _url(self, name, path):
        """A service's URL (a virtual client's is its pool's), or a pool host's."""
        pools = self._topo.pools
        service = pools[name][0] if name in pools else self._topo.service(name)
        return plan.service_url(self._topo, service) + path

    def _tls(self, ca_option="ca"):
        """The GA's credentials on the GA's host (where this runs) as module options
        (fl_status_info: ca, ansible.builtin.uri: ca_path), or {} for a pipeline with
        hfl_insecure."""
        paths = plan.tls_paths(self._topo, self._topo.ga)
        if not paths:
            return {}
        return {ca_option: paths["tls_ca"], "client_cert": paths["tls_cert"],
                "client_key": paths["tls_key"]}

    def _in_process(self):
        """Whether the GA's host is this machine: its fetches need no module."""
        return self._connection.transport == "local"

    def _local_tls(self):
        """open_url's TLS keywords for the GA's credentials on this machine (None: plain)."""
        tls = {k: os.path.expanduser(v) for k, v in self._tls().items()}
        return tls_options(**tls)

    def _observe(self, names):
        known = {s.name: s for s in self._topo.services}
        # Clients in pods have no port the controller reaches: their parents answer for them.
        in_pods = ({c.name for c in self._topo.clients} & set(names)
                   if self._topo.pipeline.runtime != "process" else set())
        asked = [known[n] for n in names if n in known and n not in in_pods]
        # A pool's /status holds all its virtual clients': read once for them all.
        pools = {}
        for s in asked:
            if s.pool:
                pools.setdefault(s.pool, []).append(s.name)
        services = [{"name": s.host, "url": self._url(s.host, "/status")}
                    for s in asked if not s.pool or pools[s.pool][0] == s.name]
        if self._in_process():
            statuses = fetch_all(services, self._args["status_timeout"], self._local_tls())
        else:
            out = self._execute_module(
                module_name="hfl.orchestration.fl_status_info",
                module_args=dict(services=services, timeout=self._args["status_timeout"],
                                 **self._tls()),
                task_vars=self._vars)
            if out.get("failed"):
                raise RuntimeError(f"fl_status_info failed: {out.get('msg')}")
            statuses = out["statuses"]
        for pool, clients in pools.items():
            statuses.update(virtual_client_statuses(pool, statuses.pop(pool), clients))
        if in_pods:
            statuses.update(clients_seen_by_parents(in_pods, statuses))
        for n in names:  # a service that left the inventory is not there to ask
            statuses.setdefault(n, {"reachable": False, "error": "not in the inventory"})
        return statuses

    def _runner(self, playbook, extravars, limit):
        import ansible_runner  # only needed when something is placed

        (self._dir / "runner").mkdir(exist_ok=True)
        env = {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(C.COLLECTIONS_PATHS),
        }
        if C.CONFIG_FILE:
            env["ANSIBLE_CONFIG"] = C.CONFIG_FILE
        r = ansible_runner.run(
            private_data_dir=str(self._dir / "runner"), playbook=str(PLAYBOOKS / playbook),
            inventory=self._sources, extravars={**self._extra, **extravars}, limit=limit,
            envvars=env, quiet=True, rotate_artifacts=5)
        if r.rc != 0:
            raise RuntimeError(f"{playbook} exited {r.rc} ({r.status}); output in "
                               f"{r.config.artifact_dir}/stdout")

    def _apply(self, assignment, left_out):
        ga = self._topo.ga.name
        clients = {c.name for c in self._topo.clients}
        # Left-out clients stay in the plan's services (never placed: limited away) under the
        # GA, which has no capacity to break.
        full = {**assignment, **{c: ga for c in left_out if c in clients}}
        left_out = plan.hosts_left_out(self._topo, left_out, self._running_plan())
        path = self._dir / "assignment.json"
        fd, tmp = tempfile.mkstemp(dir=self._dir)
        with os.fdopen(fd, "w") as f:
            json.dump({"assignment": full, "left_out": left_out}, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        extravars = {"hfl_assignment_file": str(path), "hfl_state_dir": str(self._dir.parent),
                     **self._place_extra}
        hosts = [h for h in self._hosts_to_place(full) or [] if h not in left_out]
        self._runner("place.yml", extravars, ",".join(hosts) or ":".join(
            [topology.CLUSTER_GROUP, *(f"!{h}" for h in left_out)]))
        gone = sorted(set(left_out) - self._stopped)
        if gone:  # collect what they wrote, then stop them for good
            try:
                self._runner("leave_out.yml", extravars, ",".join(gone))
            except RuntimeError as e:  # a dead host cannot be reached: it is stopped anyway
                display.warning(f"orchestrate: stopping {', '.join(gone)}: {e}")
            self._stopped |= set(gone)
        self._stopped &= set(left_out)

    def _reroute(self, moves, gone):
        """Tell the running services a change before placement makes it last: aggregators
        which children are gone (their open round stops waiting), moved clients their new
        parent (process runtime: a live switch). Best effort: a refusal is a warning, and
        placement still moves them. Services other than the GA are told only where the GA's
        host is this machine (the controller's certificate is here)."""
        told = [(agg, {"gone": children}) for agg, children in gone.items()]
        if self._topo.pipeline.runtime == "process":
            pools = {}  # a pool is told all its moved virtual clients in one message
            for client, parent in moves.items():
                address = plan.parent_address(self._topo.service(parent))
                pool = self._topo.service(client).pool
                if pool:
                    pools.setdefault(pool, {})[client] = address
                else:
                    told.append((client, {"parent": address}))
            told += [(pool, {"parents": parents}) for pool, parents in pools.items()]
        for name, message in told:
            if name != self._topo.ga.name and not self._in_process():
                continue
            failed = self._post_control(message, name)
            if failed is not None:
                display.warning(f"orchestrate: /control {message} to {name}: {failed}")

    def _controller_tls(self):
        """open_url's TLS keywords for the controller's certificate (role fl_pki's files), or
        None for a pipeline with hfl_insecure."""
        if not plan.tls_paths(self._topo, self._topo.ga):
            return None
        pki = Path(os.path.expanduser(self._extra.get("hfl_pki_dir") or self._dir / "pki"))
        return tls_options(ca=str(pki / "ca.crt"), client_cert=str(pki / "controller.crt"),
                           client_key=str(pki / "controller.key"))

    def _post_control(self, message, name=None):
        """POST /control to service `name` (the GA by default); None, or why it failed."""
        name = name or self._topo.ga.name
        url = self._url(name, "/control")
        if not self._in_process():
            out = self._execute_module(
                module_name="ansible.builtin.uri",
                module_args=dict(url=url, method="POST", body_format="json", body=message,
                                 timeout=10, **self._tls(ca_option="ca_path")),
                task_vars=self._vars)
            return out.get("msg") if out.get("failed") else None
        tls = self._local_tls() if name == self._topo.ga.name else self._controller_tls()
        try:
            open_url(url, data=json.dumps(message), method="POST", timeout=10,
                     headers={"Content-Type": "application/json"}, **(tls or {}))
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, TLS: each is a "no"
            return str(getattr(e, "reason", e))
        return None

    def _hosts_to_place(self, assignment):
        """On the process runtime, the hosts whose services the new plan changes (a moved or
        new client): placing only them spares every other host its tasks. None (every host
        but those left out) on podman and k3s, whose pods one host places, or when the running
        plan is unknown."""
        if self._topo.pipeline.runtime != "process":
            return None
        try:
            running = json.loads((self._dir / "plan.json").read_text())
            app = None
            if self._topo.pipeline.flower_app and "app" in running:
                app = flower_app.load(running["app"]["source"], f"host {self._topo.ga.name}")
            planned = plan.make_plan(self._topo, assignment, app)
        except (OSError, ValueError, KeyError, topology.TopologyError):
            return None  # place.yml's own plan says what is wrong, if anything
        return plan.hosts_to_place(running, planned)

    def _set_last_round(self, n):
        failed = self._post_control({"global_rounds": n})
        if failed is None:
            return
        # A GA without the control message: re-place it with the new round count; it restarts
        # from its checkpoint (the round in progress is run again).
        display.warning(f"orchestrate: GA /control global_rounds failed ({failed}); "
                        "re-placing it with the new round count")
        self._place_extra["hfl_global_rounds"] = n
        path = self._dir / "assignment.json"
        extravars = {"hfl_state_dir": str(self._dir.parent), **self._place_extra}
        if path.exists():
            extravars["hfl_assignment_file"] = str(path)
        self._runner("place.yml", extravars, self._topo.ga.host)  # only the GA's spec changed

    def _emit(self, event):
        event = {"ts": time.time(), **event}
        self._events.append(event)
        if self._task.check_mode:
            return
        with open(self._dir / "events.jsonl", "a") as f:
            f.write(json.dumps(event, default=str) + "\n")
        display.v(f"orchestrate: {event['trigger']}: {event['action']}: {event['reason']}")
