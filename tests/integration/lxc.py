"""LXC system containers with systemd as PID 1, reached over SSH (recipe:
shared/notes/this-machine.md, LXC; scripts/fresh-check.sh builds its container the same way).

    with system_container(workdir, mounts=[...]) as ct:
        ct.address                 # on a bridge of its own; the host holds .1
        ct.attach(["systemctl", "is-active", "x"])
        ct.reboot()                # systemctl reboot inside; returns once systemd is up again

The root file system (debootstrap minbase of Debian bookworm with systemd, sshd and python3) is
built once into ``<repo>/.tmp/lxc-supervision/`` and copied into each container; a second run
skips the 2-minute debootstrap. ``mounts`` are host folders bind-mounted read-only at the same
path (the checkout and its venv's base Python: services run the venv the host runs). Names carry a
per-run token; the container, its bridge and its folder are removed on exit, after a failure too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from hfl_helpers import ROOT

SUITE = "bookworm"
# The Debian mirror this machine's apt uses (the one reachable registry debootstrap needs).
MIRROR = os.environ.get("HFL_LXC_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "procps")
CACHE = ROOT / ".tmp" / "lxc-supervision"


def _sh(*argv, check=True, timeout=120):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: status {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def base_rootfs():
    """The cached root file system (built on first use, under a lock)."""
    key = hashlib.sha256(f"v1 {SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:16]
    base = CACHE / f"rootfs-{SUITE}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (base / ".complete").exists():
            return base
        tmp = base.with_name(base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _sh("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
            str(tmp), MIRROR, timeout=900)
        _sh("chroot", str(tmp), "apt-get", "clean")
        (tmp / ".complete").touch()
        tmp.rename(base)
    return base


@contextlib.contextmanager
def system_container(workdir, mounts=()):
    """A booted SystemContainer, removed on exit whatever happens (a failed creation too)."""
    ct = SystemContainer(workdir, mounts)
    try:
        ct.create()
        yield ct
    finally:
        ct.remove()


class SystemContainer:
    def __init__(self, workdir, mounts=()):
        self.token = secrets.token_hex(3)
        self.name = f"hfls{self.token}"
        self.workdir = Path(workdir)
        self.lxcpath = self.workdir / "lxc"
        self.bridge = f"hfls{self.token}br"
        self.subnet = f"10.249.{100 + os.getpid() % 150}"
        self.address = f"{self.subnet}.11"
        self.key = self.workdir / "id_ed25519"
        self.mounts = [str(m) for m in mounts]
        self._created = False

    # -- lifecycle -------------------------------------------------------------------------
    def create(self):
        base = base_rootfs()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ct = self.lxcpath / self.name
        ct.mkdir(parents=True)
        self._created = True
        rootfs = ct / "rootfs"
        _sh("cp", "-a", str(base), str(rootfs), timeout=300)
        (rootfs / ".complete").unlink()
        (rootfs / "etc" / "hostname").write_text(f"{self.name}\n")
        (rootfs / "etc" / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        ssh = rootfs / "root" / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(f"{self.key}.pub", ssh / "authorized_keys")
        (ssh / "authorized_keys").chmod(0o600)

        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        lines = [
            f"lxc.uts.name = {self.name}",
            f"lxc.rootfs.path = dir:{rootfs}",
            "lxc.arch = amd64",
            "lxc.tty.dir = lxc",
            "lxc.pty.max = 64",
            "lxc.tty.max = 1",
            "lxc.autodev = 1",
            # A privileged container, as the machine allows (see this-machine.md): no AppArmor
            # profile to load, the host's cgroup hierarchies mounted by LXC itself.
            "lxc.apparmor.profile = unconfined",
            "lxc.cap.drop = sys_module sys_time mac_admin mac_override",
            "lxc.mount.auto = proc:rw sys:rw cgroup:rw:force",
            # cgroup v1 weighs the container as one task against each task outside it: on a busy
            # machine its services, each importing torch, would crawl (measured: 0.8 % CPU each
            # at a load of 48). Eight tasks' shares: as much as its processes would get outside.
            f"lxc.cgroup.cpu.shares = {8 * 1024}",
            "lxc.net.0.type = veth",
            f"lxc.net.0.link = {self.bridge}",
            "lxc.net.0.flags = up",
            "lxc.net.0.name = eth0",
            f"lxc.net.0.ipv4.address = {self.address}/24",
            f"lxc.net.0.ipv4.gateway = {self.subnet}.1",
        ]
        lines += [f"lxc.mount.entry = {m} {m.lstrip('/')} none bind,ro,create=dir 0 0"
                  for m in self.mounts]
        (ct / "config").write_text("\n".join(lines) + "\n")
        _sh("lxc-start", "-P", str(self.lxcpath), "-n", self.name, "-d",
            "-o", str(self.workdir / "lxc.log"), "-l", "INFO")
        self.wait_booted()

    def remove(self):
        if self._created:
            _sh("lxc-stop", "-P", str(self.lxcpath), "-n", self.name, "-k", check=False)
        _sh("ip", "link", "del", self.bridge, check=False)
        if self._created:
            # LXC mounts in the container's own mount namespace, gone once it stopped; were a
            # bind mount of the checkout still seen here, removing the folder would reach it.
            folder = str(self.lxcpath / self.name) + "/"
            with open("/proc/self/mountinfo") as f:
                held = [line.split()[4] for line in f if line.split()[4].startswith(folder)]
            if held:
                raise RuntimeError(f"{self.name}: still mounted, not removed: {held}")
            shutil.rmtree(folder, ignore_errors=True)
            self._created = False

    # -- use -------------------------------------------------------------------------------
    def attach(self, argv, check=True, timeout=60):
        """Run ``argv`` in the container (its namespaces, a clean environment)."""
        return _sh("lxc-attach", "-P", str(self.lxcpath), "-n", self.name, "--clear-env", "--",
                   *argv, check=check, timeout=timeout)

    def init_pid(self):
        """The container's PID 1 as the host sees it: a new one after each boot."""
        out = _sh("lxc-info", "-P", str(self.lxcpath), "-n", self.name, "-p", "-H",
                  check=False).stdout.strip()
        return int(out) if out.isdigit() else None

    def wait_booted(self, timeout=120):
        """Until systemd has finished booting (running or degraded) and sshd answers."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            done = self.attach(["systemctl", "is-system-running", "--wait"], check=False,
                               timeout=max(1, deadline - time.monotonic()))
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{self.name}: systemd did not finish booting ({state!r}); "
                               f"log {self.workdir / 'lxc.log'}")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.address, 22), 1):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: sshd does not answer on {self.address}:22")

    def reboot(self, timeout=120):
        """``systemctl reboot`` inside; returns once the container booted again."""
        before = self.init_pid()
        self.attach(["systemctl", "reboot"], check=False)
        deadline = time.monotonic() + timeout
        while self.init_pid() in (before, None):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: did not come back after a reboot")
            time.sleep(0.2)
        self.wait_booted(max(1, deadline - time.monotonic()))

    def connection_vars(self):
        return {
            "ansible_host": self.address,
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                       "-o UserKnownHostsFile=/dev/null",
        }
