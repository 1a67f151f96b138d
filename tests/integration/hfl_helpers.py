"""Integration helpers: inventories written to a tmp folder, ansible-playbook runs, processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
TIERS = ("cloud", "fog", "edge")


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_inventory(folder, tiers, cluster_vars):
    """tiers: {tier: {host: vars}} -> <folder>/hosts.yml in the hfl_cluster > tier layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    children = {t: {"hosts": hosts} for t, hosts in tiers.items() if hosts}
    doc = {"hfl_cluster": {"vars": cluster_vars, "children": children}}
    (folder / "hosts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def local_inventory(tmp_path, edit=None, source=None):
    """inventories/local (or ``source``) with free ports, state folders under tmp_path and the
    project venv. ``edit(tiers, cluster_vars)`` may change it before it is written."""
    src = source or ROOT / "inventories" / "local"
    tiers = {t: dict(h["hosts"]) for t, h in
             yaml.safe_load((src / "hosts.yml").read_text())["hfl_cluster"]["children"].items()}
    cluster_vars = yaml.safe_load((src / "group_vars" / "hfl_cluster.yml").read_text())
    hosts = [h for t in TIERS for h in tiers.get(t, {})]
    for host, port in zip(hosts, free_ports(len(hosts)), strict=True):
        tiers[next(t for t in tiers if host in tiers[t])][host]["hfl_port"] = port
    cluster_vars.update(hfl_state_dir=str(tmp_path / "controller"),
                        hfl_host_state_dir=str(tmp_path / "hosts"),
                        hfl_venv=str(ROOT / ".venv"))
    if edit:
        edit(tiers, cluster_vars)
    return write_inventory(tmp_path / "inventory", tiers, cluster_vars)


class PlaybookRun:
    def __init__(self, proc):
        self.rc, self.output = proc.returncode, proc.stdout

    @property
    def changed(self):
        """Sum of changed= over the PLAY RECAP."""
        return sum(int(n) for n in re.findall(r"\bchanged=(\d+)", self.output))


def ansible_env():
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                ANSIBLE_NOCOLOR="1", PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")


def playbook(name, inventory, *extra, runner=subprocess.run, env=None, timeout=900):
    """Run playbooks/<name> against ``inventory`` the way a user does."""
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
            str(PLAYBOOKS / name), *extra]
    proc = runner(argv, cwd=ROOT, env={**ansible_env(), **(env or {})}, text=True,
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return PlaybookRun(proc)


def service_pids(host_state_dir):
    """{service: pid} of every service folder with a live process under host_state_dir."""
    pids = {}
    for pidfile in Path(host_state_dir).glob("**/pid"):
        pid = int(pidfile.read_text())
        if Path(f"/proc/{pid}").exists():
            pids[pidfile.parent.name] = pid
    return pids


def processes_mentioning(text):
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def stop_processes_under(folder):
    """Kill what a test started from its own tmp folder (their command lines name it)."""
    for pid in processes_mentioning(str(folder)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
