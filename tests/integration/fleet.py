"""A fleet of SSH hosts made of network namespaces (recipe: shared/notes/this-machine.md §2).

    with Fleet(8, workdir) as fleet:
        fleet.hosts            # [Host(name, netns, address)], one sshd each
        fleet.run([...])       # a command in the controller namespace (where Ansible runs)

Layout: a bridge with no address in the root namespace; one namespace per host plus one for the
controller, each joined to the bridge by a veth pair, all in 10.250.<n>.0/24. Nothing routes out
of that subnet, so no traffic leaves the sandbox. Each host runs its own sshd (started by hand:
the image's policy-rc.d lets apt start no daemon) with a throwaway host key and a throwaway client
key. Hosts share the filesystem and process table with the root namespace.

Names carry a per-run prefix so concurrent fleets never collide; everything is removed on exit,
also after a failure, and Ansible's SSH control sockets live in the run's own folder (an address
of another run's fleet may be the same).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hfl_helpers import run_group

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str


def _sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Fleet:
    def __init__(self, n, workdir, names=None):
        self.prefix = f"hf{secrets.token_hex(3)}"
        self.subnet = f"10.250.{100 + os.getpid() % 150}"
        self.workdir = Path(workdir)
        self.bridge = f"{self.prefix}br"
        self.controller = Host("controller", f"{self.prefix}c", f"{self.subnet}.1")
        names = names or [f"host{i + 1}" for i in range(n)]
        self.hosts = [Host(name, f"{self.prefix}h{i}", f"{self.subnet}.{11 + i}")
                      for i, name in enumerate(names)]
        self.key = self.workdir / "id_ed25519"
        self._namespaces = []

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()

    def _create(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cp").mkdir(exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.workdir / "hostkey"))
        shutil.copy(f"{self.key}.pub", self.workdir / "authorized_keys")
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "up")
        for i, h in enumerate([self.controller, *self.hosts]):
            self._namespaces.append(h.netns)
            veth = f"{self.prefix}v{i}"
            _sh("ip", "netns", "add", h.netns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", h.netns)
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
            _sh("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            _sh("ip", "-n", h.netns, "link", "set", "eth0", "up")
            _sh("ip", "-n", h.netns, "link", "set", "lo", "up")
        for h in self.hosts:
            self._start_sshd(h)
        for h in self.hosts:
            self._wait_listening(h)

    def _start_sshd(self, h):
        cfg = self.workdir / f"sshd-{h.name}.conf"
        cfg.write_text("\n".join([
            f"ListenAddress {h.address}",
            f"HostKey {self.workdir / 'hostkey'}",
            f"PidFile {self.workdir / f'sshd-{h.name}.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "MaxSessions 50",
            "MaxStartups 50",
            "",
        ]))
        _sh("ip", "netns", "exec", h.netns, SSHD, "-f", str(cfg),
            "-E", str(self.workdir / f"sshd-{h.name}.log"))

    def _wait_listening(self, h, timeout=20):
        deadline = time.monotonic() + timeout
        while f"{h.address}:22" not in _sh("ip", "netns", "exec", h.netns, "ss", "-ltn").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {h.name} ({h.address}) is not listening")
            time.sleep(0.05)

    def remove(self):
        """Stop every process inside the fleet's namespaces (sshd and whatever the tests
        started through it), then delete the namespaces and the bridge."""
        pids = []
        for ns in self._namespaces:
            out = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
            pids += [int(p) for p in out]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for ns in self._namespaces:
            _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)
        self._namespaces = []

    # -- use -------------------------------------------------------------------------------
    def run(self, argv, env=None, **kwargs):
        """Run argv in the controller namespace (subprocess.run's arguments), as in_controller
        says."""
        # `ip netns exec` execs the command: its process group is the command's (run_group).
        argv, env = self.in_controller(argv, env)
        return run_group(argv, env=env, **kwargs)

    def in_controller(self, argv, env=None):
        """(argv, env) that run argv in the controller namespace with Ansible's SSH control
        sockets in this fleet's folder: for a Popen of a command left running."""
        env = dict(env or os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=str(self.workdir / "cp"))
        return ["ip", "netns", "exec", self.controller.netns, *argv], env

    def connection_vars(self, host):
        return {
            "ansible_host": host.address,
            "ansible_user": "root",
            # Debian's python3: interpreter discovery over SSH may find shims of other tools.
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null",
        }


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
