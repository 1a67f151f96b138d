"""bootstrap.yml (k3s_server, k3s_agent) in check mode over SSH against eight hosts in the
tutorial's shape. No k3s can run here (shared/notes/this-machine.md §4), so this shows what a
real run would change, host by host, and that check mode changes nothing.

In check mode get_url still asks the script's URL (HEAD); the fleet cannot reach the internet,
so the controller serves a stand-in script at hfl_k3s_install_script_url. It is never run."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hfl_helpers import PLAYBOOKS, ROOT, ansible_env, write_inventory

pytestmark = [pytest.mark.integration, pytest.mark.fleet]

SERVER_CHANGES = {"Download the official install script", "Create the k3s config folder",
                  "Write the server config", "Create the controller's state folder"}
AGENT_CHANGES = {"Download the official install script", "Create the k3s config folder",
                 "Write the agent config"}
# What a real run would create; the fleet's hosts share this machine's filesystem.
K3S_FILES = ("/usr/local/bin/k3s-install.sh", "/usr/local/bin/k3s", "/etc/rancher/k3s")


def task_results(output):
    """{host: {task name: result}} from the json stdout callback."""
    results = {}
    for play in json.loads(output)["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                name = task["task"]["name"].split(" : ", 1)[-1]  # without "<role> : "
                results.setdefault(host, {})[name] = result
    return results


def test_hfl_k3s_bootstrap_check_mode_reports_each_hosts_changes(fleet_factory, tmp_path):
    if any(Path(p).exists() for p in K3S_FILES):
        pytest.skip("k3s is installed on this machine: check mode would compare against it")
    src = ROOT / "inventories" / "tutorial"
    tiers = {t: dict(v["hosts"]) for t, v in
             yaml.safe_load((src / "hosts.yml").read_text())["hfl_cluster"]["children"].items()}
    cluster_vars = yaml.safe_load((src / "group_vars" / "hfl_cluster.yml").read_text())
    names = [h for hosts in tiers.values() for h in hosts]
    fleet = fleet_factory(names)
    for h in fleet.hosts:
        tier = next(t for t in tiers if h.name in tiers[t])
        # The fleet logs in as root and has no sudo: no become.
        tiers[tier][h.name].update(fleet.connection_vars(h), ansible_become=False)
    cluster_vars.pop("ansible_user")
    www = tmp_path / "www"
    www.mkdir()
    script = b"#!/bin/sh\necho 'stand-in, never run' >&2; exit 1\n"
    (www / "k3s-install.sh").write_bytes(script)
    cluster_vars.update(hfl_state_dir=str(tmp_path / "controller"),
                        hfl_k3s_install_script_url=f"http://{fleet.controller.address}:8000/"
                                                   "k3s-install.sh",
                        hfl_k3s_install_script_sha256=hashlib.sha256(script).hexdigest())
    inventory = write_inventory(tmp_path / "inventory", tiers, cluster_vars)
    wrapper = tmp_path / "bootstrap-check.yml"
    wrapper.write_text(yaml.safe_dump([
        {"name": "Plan", "ansible.builtin.import_playbook": str(PLAYBOOKS / "plan.yml")},
        {"name": "Bootstrap", "ansible.builtin.import_playbook": str(PLAYBOOKS / "bootstrap.yml")},
    ]))

    server = subprocess.Popen(["ip", "netns", "exec", fleet.controller.netns, sys.executable,
                               "-m", "http.server", "--bind", fleet.controller.address,
                               "--directory", str(www), "8000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = fleet.run([str(ROOT / ".venv/bin/ansible-playbook"), "-i", str(inventory),
                          str(wrapper), "--check"], cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600,
                         env={**ansible_env(), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"})
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = task_results(proc.stdout)

    for name in names:
        tasks = results[name]
        changed = {t for t, r in tasks.items() if r.get("changed")}
        wanted = SERVER_CHANGES if name in tiers["cloud"] else AGENT_CHANGES
        assert wanted <= changed, f"{name}: would change {sorted(changed)}"
        # The install itself and the service steps are skipped in check mode, not faked.
        assert tasks["Run the install script (installs the service, does not start it)"].get(
            "skipped"), name
        assert not any(r.get("failed") for r in tasks.values()), name
        if name not in tiers["cloud"]:
            # The agent's config holds the token: it never shows, not even in check mode.
            assert "censored" in json.dumps(tasks["Write the agent config"]), name
    assert not any(Path(p).exists() for p in K3S_FILES), "check mode changed the hosts"
    assert not (tmp_path / "controller" / "kubeconfig").exists()
