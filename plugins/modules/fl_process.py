#!/usr/bin/python
# Copyright: hfl.orchestration developers
# Apache License 2.0

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fl_process
short_description: Run one fl_service as a managed background process
version_added: 0.1.0
description:
  - Manages one C(python -m fl_service) process on the target host (the C(process) runtime),
    as a systemd unit or as a detached process (O(supervisor)).
  - The service lives in its own folder O(dir) holding C(config.yaml), C(digest), C(pid),
    C(service.log) and the service's C(state/) folder, and with O(credentials) the files its
    config's C(tls_cert), C(tls_key) and C(tls_ca) name (the plan puts them in C(tls/)).
  - With O(state=present) the process is started when it is not running, restarted when
    O(digest), O(revision) or O(credentials) differ from those it runs with, and sent C(SIGHUP)
    (re-read the config) when only the config changed but not its digest, which is how a client
    moves to another parent without a restart. Otherwise nothing happens.
  - With O(state=absent) the process is stopped (SIGTERM, then SIGKILL), its systemd unit (if
    any) disabled and deleted, and O(dir) is removed.
author:
  - hfl.orchestration developers (@hfl)
requirements:
  - Linux on the target (a pid counts as the service's only while C(/proc/<pid>/cmdline) names its
    config and C(/proc/<pid>/stat) shows it alive).
  - An interpreter O(python) with fl_service installed, Python 3.11 or later (role
    hfl.orchestration.fl_runtime's venv, C(hfl_venv)).
  - For O(supervisor=systemd), systemd as the target's init and the remote user root.
extends_documentation_fragment:
  - hfl.orchestration.attributes
  - hfl.orchestration.attributes.action_group
options:
  name:
    description: Service name, used in messages.
    type: str
    required: true
  dir:
    description:
      - The service's folder on the target. A leading C(~) is the remote user's home.
      - With O(state=absent) it is removed, and its parent folder too when that is left empty.
    type: path
    required: true
  role:
    description: Which fl_service role to run. Required with O(state=present).
    type: str
    choices: [global_aggregator, local_aggregator, client]
  config:
    description:
      - The fl_service configuration (keys as in docs/architecture.md). Required with
        O(state=present).
      - A leading C(~) in C(state_dir), C(data_dir) and C(app_dir) is expanded on the target.
    type: dict
  digest:
    description:
      - Identity of the configuration; a change restarts the process. Plans compute it as the
        sha256 of the config without C(parent) (and with the Flower app folder's digest when
        the service runs one). Required with O(state=present).
    type: str
  revision:
    description:
      - Identity of the code the service runs; a change restarts the process, as a new
        O(digest) does, and a parent switch alone still only reloads it. Role fl_placement passes
        the sha256 of the fl_service source the collection ships (what role fl_runtime installs
        into the venv of O(python)), so a service restarts after an upgrade of fl_service and
        not otherwise.
      - Recorded with O(digest) in the service's folder. Without it the code is not followed.
    type: str
    version_added: 0.2.0
  python:
    description: Python interpreter that has fl_service installed.
    type: path
    default: python3
  environment:
    description: Extra environment variables for the process.
    type: dict
    default: {}
  wait_timeout:
    description:
      - Seconds to wait after a start until the service answers C(GET /status); C(0) does not
        wait. The service counts as started only once its C(/status) names it (its config's
        C(name)) and reports the pid started; anything else answering on its port (another
        process holding the port, which the service then fails to bind) does not count.
      - A process that exits first fails the task with a one-line reason naming the port and
        its log's last line (the end of the log is in RV(log_tail)).
      - A service whose config has C(tls_cert), C(tls_key) and C(tls_ca) is read over mutual
        TLS with its own certificate (the one it serves with); its certificate must be signed
        by C(tls_ca) and name the service (its C(name)).
    type: int
    default: 120
  credentials:
    description:
      - The service's credentials, PEM texts written (mode 0600, in a 0700 folder) to the paths
        its config's C(tls_cert), C(tls_key) and C(tls_ca) name before the service starts.
      - Part of its identity as O(digest) is, so a new certificate, key or CA restarts it.
      - The key is never logged.
    type: dict
    suboptions:
      cert:
        description: The service's certificate (its config's C(tls_cert)).
        type: str
        required: true
      key:
        description: The certificate's private key (its config's C(tls_key)).
        type: str
        required: true
      ca:
        description: The pipeline's CA certificate (its config's C(tls_ca)).
        type: str
        required: true
  supervisor:
    description:
      - What runs the process.
      - C(systemd) runs it as the system unit C(hfl-<pipeline>-<name>.service) (from the last two
        components of O(dir)) in C(/etc/systemd/system), enabled (started at boot), restarted by
        systemd when it exits with an error or a signal (C(Restart=on-failure), after 2 s),
        its output in the journal (C(journalctl -u <unit>)) instead of C(service.log). The
        environment is in the unit's C(EnvironmentFile) C(<dir>/environment) (mode 0600). A
        reload is C(systemctl reload) (C(SIGHUP) to the unit's main process). A new unit file
        (another O(python), O(dir)) restarts it.
      - C(none) runs it as a detached process that nothing restarts after a crash or a reboot
        (until the next placement).
      - C(auto) is C(systemd) where systemd runs the host (C(/run/systemd/system) exists) and the
        remote user is root, else C(none).
      - Switching supervisor restarts the service under the new one (the unit is removed when
        switching to C(none)). C(systemd) on a host that lacks it fails with the reason.
    type: str
    choices: [auto, systemd, none]
    default: auto
    version_added: 0.2.0
  state:
    description: Whether the service should run.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Under O(supervisor=none) the process is detached (own session, output in C(service.log)) so
    it outlives the connection; its pid is checked against its command line, so a recycled pid
    is not mistaken for the service. Under O(supervisor=systemd) its pid is the unit's
    C(MainPID).
seealso:
  - module: hfl.orchestration.fl_status_info
"""

EXAMPLES = r"""
- name: Run the global aggregator of pipeline demo
  hfl.orchestration.fl_process:
    name: ga
    role: global_aggregator
    dir: ~/.local/state/hfl/demo/ga
    python: ~/.local/share/hfl/venv/bin/python
    config:
      name: ga
      pipeline: demo
      port: 8080
      global_rounds: 5
      state_dir: ~/.local/state/hfl/demo/ga/state
    digest: "{{ service.digest }}"

- name: Place every service of a plan on its host, with its credentials (role fl_pki's)
  hfl.orchestration.fl_process:
    name: "{{ item.name }}"
    role: "{{ item.role }}"
    dir: "{{ item.dir }}"
    config: "{{ item.config }}"
    digest: "{{ item.digest }}"
    credentials:
      cert: "{{ lookup('ansible.builtin.file', hfl_pki.service_certs[item.name]) }}"
      key: "{{ lookup('ansible.builtin.file', hfl_pki.service_keys[item.name]) }}"
      ca: "{{ lookup('ansible.builtin.file', hfl_pki.ca_cert) }}"
  loop: "{{ hfl_plan.services | selectattr('host', 'equalto', inventory_hostname) }}"

- name: Stop and remove a service
  hfl.orchestration.fl_process:
    name: c1
    dir: ~/.local/state/hfl/demo/c1
    state: absent
"""

RETURN = r"""
action:
  description: What was done (or would be, in check mode).
  returned: always
  type: str
  sample: restart
  choices: [unchanged, start, restart, reload, stop, absent]
pid:
  description:
    - Pid of the running service (under systemd the unit's C(MainPID)); for O(state=absent) the
      pid that was stopped.
  returned: always
  type: int
  sample: 12345
config_path:
  description: The config file the service reads.
  returned: always
  type: str
  sample: /root/.local/state/hfl/demo/ga/config.yaml
supervisor:
  description: What runs the service (O(supervisor) as resolved on the target).
  returned: O(state=present)
  type: str
  sample: systemd
  choices: [systemd, none]
  version_added: 0.2.0
unit:
  description: The service's systemd unit, under O(supervisor=systemd).
  returned: O(state=present) and RV(supervisor=systemd)
  type: str
  sample: hfl-demo-ga.service
  version_added: 0.2.0
log_path:
  description:
    - The service's log (stdout, stderr and its logging), rotated at 10 MiB with three old files
      (C(service.log.1) to C(service.log.3)). Under systemd the journal holds it instead
      (C(journalctl -u <unit>)).
  returned: always
  type: str
  sample: /root/.local/state/hfl/demo/ga/service.log
log_tail:
  description: The end of the service's log, when a start failed.
  returned: failure
  type: str
  sample: "fl_service: cannot serve on 127.0.0.1:8080: [Errno 98] Address already in use"
"""

# Ansible's layout puts the documentation strings above the imports.
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.module_utils import (  # noqa: E402
    fl_process as svc,
)

# fl_service spells its roles as the inventory does.
ROLES = ("global_aggregator", "local_aggregator", "client")


# The config keys naming the files of O(credentials), by suboption.
CREDENTIAL_KEYS = {"cert": "tls_cert", "key": "tls_key", "ca": "tls_ca"}


def _ready_url(config):
    scheme = "https" if all(config.get(k) for k in CREDENTIAL_KEYS.values()) else "http"
    host = config.get("bind_host") or "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{config['port']}/status"


def _tls_paths(config):
    """The expanded paths of the service's CA, certificate and key, or None (plain HTTP)."""
    paths = [config.get(CREDENTIAL_KEYS[k]) for k in ("ca", "cert", "key")]
    return tuple(os.path.expanduser(p) for p in paths) if all(paths) else None


def run_module():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            dir=dict(type="path", required=True),
            role=dict(type="str", choices=list(ROLES)),
            config=dict(type="dict"),
            digest=dict(type="str"),
            revision=dict(type="str"),
            python=dict(type="path", default="python3"),
            environment=dict(type="dict", default={}),
            wait_timeout=dict(type="int", default=120),
            credentials=dict(type="dict", options=dict(
                cert=dict(type="str", required=True),
                key=dict(type="str", required=True, no_log=True),
                ca=dict(type="str", required=True),
            )),
            supervisor=dict(type="str", choices=list(svc.SUPERVISORS), default="auto"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[("state", "present", ("role", "config", "digest"))],
        supports_check_mode=True,
    )
    p = module.params
    folder = p["dir"]
    result = dict(
        config_path=os.path.join(folder, svc.CONFIG), log_path=os.path.join(folder, svc.LOG)
    )
    if p["state"] == "absent":
        changed, pid = svc.ensure_absent(folder, check=module.check_mode)
        module.exit_json(changed=changed, action="stop" if changed else "absent", pid=pid,
                         **result)

    if "port" not in p["config"]:
        module.fail_json(msg=f"{p['name']}: config has no port", **result)
    credentials = p["credentials"] or {}
    missing = [CREDENTIAL_KEYS[o] for o in credentials if not p["config"].get(CREDENTIAL_KEYS[o])]
    if missing:
        module.fail_json(msg=f"{p['name']}: credentials given but the config has no "
                         f"{', '.join(missing)} to write them to", **result)
    files = {os.path.expanduser(p["config"][CREDENTIAL_KEYS[option]]): text
             for option, text in credentials.items()}
    config_text = svc.config_text(p["config"])
    config_path = result["config_path"]
    try:
        supervisor = svc.resolve_supervisor(p["supervisor"])
    except svc.ServiceError as e:
        module.fail_json(msg=f"{p['name']}: {e}", **result)
    result["supervisor"] = supervisor
    argv = [p["python"], "-m", "fl_service", p["role"], "--config", config_path]
    if supervisor == "systemd":
        result["unit"] = svc.unit_name(folder)
    else:
        argv += ["--log-file", result["log_path"]]
    env = {str(k): str(v) for k, v in p["environment"].items()}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if supervisor == "systemd" and "HOME" in os.environ:
        # A system unit's environment has no HOME; the service's user's is where ~ leads.
        env.setdefault("HOME", os.environ["HOME"])
    url = _ready_url(p["config"]) if p["wait_timeout"] > 0 else None
    try:
        action, pid = svc.ensure_running(
            folder, config_text, svc.service_digest(p["digest"], p["credentials"], p["revision"]),
            argv,
            env, url, p["wait_timeout"], check=module.check_mode,
            name=p["config"].get("name", p["name"]), files=files,
            tls=_tls_paths(p["config"]), supervisor=supervisor)
    except svc.ServiceError as e:
        module.fail_json(msg=f"{p['name']}: {e}", log_tail=e.log_tail, **result)
    except OSError as e:
        module.fail_json(msg=f"{p['name']}: {e}", **result)
    module.exit_json(changed=action != "unchanged", action=action, pid=pid, **result)


def main():
    run_module()


if __name__ == "__main__":
    main()
