"""A pipeline supervised by systemd in an LXC system container, for the supervision test and
bench/supervision.py: its inventory (GA, two LAs, a client, all in one container) and the
probes that read it (each service's /status, its unit, its journal)."""

import time

from hfl_helpers import ROOT, call, pki_context, write_inventory

PIPELINE = "sup"
PORTS = {"ga": 8080, "la1": 8081, "la2": 8082, "c1": 8090}


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

    def back_after_kill(self, name, deadline_s):
        """SIGKILL ``name``'s process; (seconds until a new process answers /status, the /status
        before the kill, the one after)."""
        before = self.status(name)
        self.ct.attach(["kill", "-9", str(before["pid"])])
        began = time.monotonic()
        after = self.wait(f"{name} back after kill -9",
                          lambda: self.status_unless_pid(name, before["pid"]), deadline_s,
                          unit=name)
        return time.monotonic() - began, before, after
