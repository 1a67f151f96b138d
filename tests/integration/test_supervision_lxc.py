"""Supervision on real systemd: in an LXC system container (systemd as PID 1, reached over SSH)
the process runtime runs each service as a systemd unit. Killed with SIGKILL, a client, an LA and
the GA each come back by themselves, without Ansible (how long each took is recorded and printed:
the issue asks for 15 s, which a machine shared with other test runs cannot promise, so the wait's
bound is a backstop); after a reboot of the container the pipeline comes back and the GA resumes
at its round; a client's parent switch reloads it (same process); a re-placement restarts nothing
else; reset.yml leaves no unit behind.

One container hosts all four services (GA, two LAs, a client: four inventory hosts on one
address, ports apart): a second container would double the setup time and test nothing more of
supervision. The services run the host's venv, bind-mounted read-only with this checkout."""

import os
import re
import shutil
import sys
import time

import pytest
from hfl_helpers import ROOT, call, pki_context, playbook, write_inventory
from lxc import system_container

pytestmark = [pytest.mark.integration, pytest.mark.lxc]

PIPELINE = "sup"
PORTS = {"ga": 8080, "la1": 8081, "la2": 8082, "c1": 8090}
BACKSTOP_S = 180  # for a killed service to answer again (a torch import on a loaded machine)


@pytest.fixture
def container(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("LXC system containers need root")
    missing = [t for t in ("lxc-start", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs lxc and debootstrap)")
    with system_container(tmp_path / "ct", mounts=[ROOT, sys.base_prefix]) as ct:
        yield ct


def inventory(tmp_path, ct, client_parent):
    where = dict(ct.connection_vars(), hfl_address=ct.address, hfl_bind_host=ct.address)
    tiers = {
        "cloud": {"ga": {"hfl_role": "global_aggregator"}},
        "fog": {"la1": {"hfl_role": "local_aggregator"}, "la2": {"hfl_role": "local_aggregator"}},
        "edge": {"c1": {"hfl_role": "client", "hfl_parent": client_parent}},
    }
    for hosts in tiers.values():
        for name, host_vars in hosts.items():
            host_vars.update(where, hfl_port=PORTS[name])
    cluster_vars = dict(
        hfl_pipeline=PIPELINE, hfl_runtime="process", hfl_dataset="digits", hfl_download=False,
        hfl_partitioner="iid", hfl_global_rounds=100000, hfl_local_rounds=1,
        hfl_local_epochs=1, hfl_batch_size=32, hfl_learning_rate=0.05, hfl_min_participants=1,
        hfl_round_timeout_s=60, hfl_state_dir=str(tmp_path / "controller"),
        hfl_venv=str(ROOT / ".venv"))
    return write_inventory(tmp_path / "inventory", tiers, cluster_vars)


class Pipeline:
    def __init__(self, tmp_path, ct):
        self.ct = ct
        self.tls = pki_context(tmp_path / "controller" / PIPELINE / "pki")

    def status(self, name):
        """The service's /status, or None while nothing answers."""
        try:
            return call(f"https://{self.ct.address}:{PORTS[name]}/status", self.tls,
                        timeout=3)[1]
        except OSError:
            return None

    def status_unless_pid(self, name, pid):
        """The /status of ``name`` once a process other than ``pid`` answers, else None."""
        doc = self.status(name)
        return doc if doc and doc.get("pid") != pid else None

    def journal(self, name):
        return self.ct.attach(["journalctl", "-u", f"hfl-{PIPELINE}-{name}.service", "-o",
                               "cat", "--no-pager"]).stdout

    def unit(self, name, *props):
        out = self.ct.attach(["systemctl", "show", *[f"-p{p}" for p in props],
                              f"hfl-{PIPELINE}-{name}.service"]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, what, check, deadline_s, unit=None):
        """Poll ``check()`` until it returns something true, at most ``deadline_s``; a failure
        shows ``unit``'s state and journal."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            found = check()
            if found:
                return found
            time.sleep(0.2)
        why = ""
        if unit:
            why = (f"\n{self.unit(unit, 'ActiveState', 'SubState', 'NRestarts', 'MainPID')}\n"
                   f"{self.journal(unit)[-3000:]}")
        raise AssertionError(f"{what}: not within {deadline_s} s{why}")

    def global_round(self):
        doc = self.status("ga")
        return doc and doc.get("global_round")


def test_units_restart_killed_services_and_come_back_after_a_reboot(container, tmp_path,
                                                                     record_property):
    ct = container
    hosts = inventory(tmp_path, ct, client_parent="la1")
    placed = playbook("place.yml", hosts)
    assert placed.rc == 0, placed.why()
    p = Pipeline(tmp_path, ct)

    # Each service is an enabled, active unit whose main process is the one answering /status.
    pids = {}
    for name in PORTS:
        unit = p.unit(name, "MainPID", "ActiveState", "UnitFileState", "Restart")
        assert (unit["ActiveState"], unit["UnitFileState"], unit["Restart"]) == (
            "active", "enabled", "on-failure"), (name, unit)
        assert p.status(name)["pid"] == int(unit["MainPID"])
        pids[name] = int(unit["MainPID"])

    # The client moves to la2: a reload of the same process; nothing else restarts.
    moved = playbook("place.yml", inventory(tmp_path, ct, client_parent="la2"))
    assert moved.rc == 0, moved.why()
    assert {n: int(p.unit(n, "MainPID")["MainPID"]) for n in PORTS} == pids
    p.wait("c1 on la2", lambda: (p.status("c1") or {}).get("parent_name") == "la2", 60)

    # The service's log is the unit's journal.
    p.wait("three global rounds", lambda: (p.global_round() or 0) >= 3, 300)
    assert "ga: global round 1 accuracy" in p.journal("ga")

    # SIGKILL: systemd starts each again, its /status answers with a new pid.
    back_s = {}
    for name in ("c1", "la2", "ga"):
        before = p.status(name)
        ct.attach(["kill", "-9", str(before["pid"])])
        t0 = time.monotonic()
        after = p.wait(f"{name} back after kill -9",
                       lambda n=name, b=before: p.status_unless_pid(n, b["pid"]), BACKSTOP_S,
                       unit=name)
        back_s[name] = round(time.monotonic() - t0, 1)
        record_property(f"{name}_back_s", back_s[name])
        assert p.unit(name, "NRestarts")["NRestarts"] == "1"  # systemd's doing, not Ansible's
        if name == "ga":  # resumed from its checkpoint, not from round 0
            assert after["global_round"] >= before["global_round"] - 1, (before, after)

    # A reboot: every unit starts at boot, the GA goes on from its checkpoint.
    last = p.wait("a round after the kills", p.global_round, 120)
    t0 = time.monotonic()
    ct.reboot()
    resumed = p.wait("GA after the reboot", p.global_round, BACKSTOP_S, unit="ga")
    assert resumed >= last - 1, (last, resumed)
    said = re.findall(r"ga: resuming after global round (\d+)", p.journal("ga"))
    assert said and int(said[-1]) >= last - 1, (last, said)
    p.wait("a new round after the reboot", lambda: (p.global_round() or 0) > resumed, 300,
           unit="ga")
    record_property("reboot_to_new_round_s", round(time.monotonic() - t0, 1))
    print(f"back after kill -9 (s): {back_s}; reboot to a new GA round: "
          f"{time.monotonic() - t0:.1f} s")
    for name in PORTS:
        assert p.status(name) is not None, name

    # reset.yml: no unit, no unit file, no service folder left.
    reset = playbook("reset.yml", hosts)
    assert reset.rc == 0, reset.why()
    assert ct.attach(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                      "hfl-*"]).stdout.strip() == ""
    assert ct.attach(["sh", "-c", "ls /etc/systemd/system | grep ^hfl- || true"]).stdout == ""
    assert ct.attach(["ls", "-A", "/root/.local/state/hfl"], check=False).stdout.strip() == ""
