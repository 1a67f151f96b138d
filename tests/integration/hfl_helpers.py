"""Integration helpers: inventories written to a tmp folder, ansible-playbook runs, processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
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


def local_inventory_same_ports(tmp, edit):
    """The deployed inventory with ``edit`` applied (ports kept)."""
    doc = yaml.safe_load((tmp / "inventory" / "hosts.yml").read_text())["hfl_cluster"]
    tiers = {t: dict(v["hosts"]) for t, v in doc["children"].items()}
    cluster_vars = dict(doc["vars"])
    edit(tiers, cluster_vars)
    return write_inventory(tmp / "inventory", tiers, cluster_vars)


def edit_reference(rounds, **extra):
    """Link costs of the reference experiment: client-LA 20 or 60, LA-GA 100."""

    def edit(tiers, cv):
        for la in tiers["fog"].values():
            la["hfl_link_cost"] = {"ga": 100}
        for name, c in tiers["edge"].items():
            near = "la1" if name in ("c1", "c2") else "la2"
            c["hfl_link_cost"] = {near: 20, ("la2" if near == "la1" else "la1"): 60}
            c.pop("hfl_parent", None)
        # Room for a joining client without changing every client's partitioning (digest).
        cv.update(hfl_global_rounds=rounds, hfl_num_partitions=6, **extra)

    return edit


_TASK = re.compile(r"^TASK \[(?P<task>.*)\] \*+$")
_FAILED = re.compile(r"^(?:fatal|failed): \[(?P<host>[^\]]+)\](?P<item>.*?):?(?: FAILED!)? => ?"
                     r"(?P<inline>.*)$")


def triggered(event, trigger):
    """Whether an orchestrator event was (also) caused by `trigger`: one iteration's triggers
    are joined with "; " (e.g. "join: c5; stall: ...")."""
    return trigger in event["trigger"].split("; ")


def virtual_fleet(per_pool):
    """An edit of the reference inventory (after edit_reference): c1 and c3 each a pool of
    ``per_pool`` virtual clients, near la1 and la2; c2 and c4 gone."""

    def edit(tiers, cv):
        for gone in ("c2", "c4"):
            tiers["edge"].pop(gone)
        for pool in ("c1", "c3"):
            tiers["edge"][pool]["hfl_virtual_clients"] = per_pool
        cv["hfl_num_partitions"] = 2 * per_pool

    return edit


def _failure_doc(inline, block):
    """The result after ``=>``: JSON on the same line or the YAML callback's indented block."""
    text = inline if inline.strip() else textwrap.dedent("\n".join(block))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return {"msg": text}
    return doc if isinstance(doc, dict) else {"msg": text}


def first_failure(output):
    """'TASK NAME on HOST: message' of the first failed task in ansible-playbook's output (the
    default callback, YAML or JSON results), with a module's stderr when the message is only
    MODULE FAILURE; or the first [ERROR] paragraph; None when nothing failed."""
    lines = output.splitlines()
    task = "?"
    for i, line in enumerate(lines):
        m = _TASK.match(line)
        if m:
            task = m["task"]
            continue
        m = _FAILED.match(line)
        if not m:
            continue
        block = []
        for follow in lines[i + 1:]:
            if follow and not follow.startswith(" "):
                break
            block.append(follow)
        doc = _failure_doc(m["inline"], block)
        msg = str(doc.get("msg", "")).strip()
        for extra in ("module_stderr", "stderr"):
            if doc.get(extra) and (not msg or "MODULE FAILURE" in msg or "non-zero" in msg):
                msg = f"{msg}\n{str(doc[extra]).strip()}".strip()
        if not msg and doc.get("results"):  # a loop: the first failed item's message
            failed = [r for r in doc["results"] if isinstance(r, dict) and r.get("failed")]
            msg = str((failed or [{}])[0].get("msg", "")).strip()
        return f"{task} on {m['host']}{m['item'].rstrip(':')}: {msg or '(no message)'}"
    for i, line in enumerate(lines):
        if line.startswith("[ERROR]"):
            para = [line]
            for follow in lines[i + 1:]:
                if not follow.strip():
                    break
                para.append(follow)
            return "\n".join(para)
    return None


class PlaybookRun:
    def __init__(self, proc):
        self.rc, self.output = proc.returncode, proc.stdout

    @property
    def changed(self):
        """Sum of changed= over the PLAY RECAP."""
        return sum(int(n) for n in re.findall(r"\bchanged=(\d+)", self.output))

    @property
    def failure(self):
        """The first failed task and its message (first_failure), or None."""
        return first_failure(self.output)

    def why(self, tail=3000):
        """For an assertion message: the first failed task's message, then the output's end."""
        return (f"first failed task: {self.failure or '(none)'}\n"
                f"--- last {tail} characters of the output ---\n{self.output[-tail:]}")


class PlaybookTimeout(AssertionError):
    """ansible-playbook ran past its timeout; its whole process group was killed."""


def run_group(argv, timeout=None, check=False, capture_output=False, **popen):
    """subprocess.run for a command that starts others (ansible-playbook forks a worker per
    host, chromium its renderers): it runs in a session of its own, and when it runs past
    ``timeout`` (or the test is interrupted) the whole process group is killed, then
    TimeoutExpired carries the output so far. Services placed on the process runtime start
    sessions of their own and are left alone."""
    if capture_output:
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with subprocess.Popen(argv, start_new_session=True, **popen) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
        except BaseException:
            _kill_group(proc.pid)
            raise
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def stop_group(proc, grace_s=30):
    """Stop a command left running in a session of its own (Popen with start_new_session):
    SIGTERM to its process group; once its leader has ended, or after ``grace_s`` seconds,
    SIGKILL to what is left of the group (ansible-playbook's workers outlive a SIGTERM that
    ends their parent); then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        # WNOWAIT: the ended leader is not reaped yet, so the group id is still ours.
        while (time.monotonic() < deadline
               and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None):
            time.sleep(0.1)
        _kill_group(proc.pid)
    proc.wait()


def _kill_group(pgid):
    """SIGKILL to the group of a child not yet reaped (so the group id is still ours)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def ansible_env():
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                ANSIBLE_NOCOLOR="1", PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")


def playbook(name, inventory, *extra, runner=run_group, env=None, timeout=900):
    """Run playbooks/<name> against ``inventory`` the way a user does. Past ``timeout`` its
    process group is killed and PlaybookTimeout names the first failed task so far.
    ``runner``: run_group or one that wraps it (Fleet.run)."""
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory),
            str(PLAYBOOKS / name), *extra]
    try:
        proc = runner(argv, cwd=ROOT, env={**ansible_env(), **(env or {})}, text=True,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.output or ""
        run = PlaybookRun(subprocess.CompletedProcess(argv, None, out if isinstance(out, str)
                                                      else out.decode(errors="replace")))
        raise PlaybookTimeout(f"{name} ran past {timeout} s; its process group was killed.\n"
                              + run.why()) from None
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


def pki_context(pki, name="controller"):
    """A client context that trusts only the pipeline's CA (role fl_pki's folder ``pki``) and
    presents ``name``'s certificate: "controller", a service's name, or None for none."""
    pki = Path(pki)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if name is not None:
        base = pki / ("controller" if name == "controller" else f"services/{name}")
        context.load_cert_chain(f"{base}.crt", f"{base}.key")
    return context


def call(url, context=None, body=None, timeout=10, method=None,
         content_type="application/json"):
    """(HTTP status, JSON reply) of a request to a service: a GET, or a POST of ``body`` (a
    JSON-able value, or bytes sent as they are); ``method`` overrides the choice."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     method=method or ("GET" if body is None else "POST"),
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
