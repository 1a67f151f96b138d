# Copyright: hfl.orchestration developers
# Apache License 2.0
"""Fetch fl_service /status documents and wait on them (target side).

Used by the fl_status module on the host it runs on; the orchestrator runs that module once per
loop iteration for every service, so the fetches run in parallel and a dead service costs one
timeout, not one per service. Placement and site.yml run it as a wait (``Watch``) that ends as
soon as its outcome is known: every service answers, the global aggregator finished, or a
failure that waiting cannot cure (see ``Watch``).
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from ansible.module_utils.urls import ConnectionError as UrlConnectionError
from ansible.module_utils.urls import open_url

# A service whose /status times out this many polls in a row counts as gone (a refused or
# unresolvable address counts at once): a busy machine may answer one poll late.
TIMEOUTS_GONE = 3
LOG_LINES = 15


def fetch(url, timeout=3.0, tls=None):
    """The /status document at ``url`` with ``reachable: true``, or ``reachable: false``, why,
    and whether it timed out (``timed_out``). ``tls`` ({ca_path, client_cert, client_key}, paths
    on this host) verifies an https service with the pipeline's CA and presents the client
    certificate, without which a service says no more than that it is alive."""
    try:
        resp = open_url(url, timeout=timeout, **(tls or {}))
        doc = json.loads(resp.read().decode("utf-8"))
        if not isinstance(doc, dict):
            return {"reachable": False, "error": "not a JSON object", "timed_out": False}
        doc["reachable"] = True
        return doc
    except (OSError, ValueError, UrlConnectionError) as e:  # URLError, HTTPError: OSErrors
        reason = getattr(e, "reason", e)
        return {"reachable": False, "error": str(reason),
                "timed_out": isinstance(reason, socket.timeout) or isinstance(e, socket.timeout)}


def fetch_all(services, timeout=3.0, tls=None):
    """{name: status} for a list of {name, url}, fetched concurrently (``tls`` as in fetch)."""
    if not services:
        return {}
    with ThreadPoolExecutor(max_workers=min(32, len(services))) as pool:
        docs = pool.map(lambda s: fetch(s["url"], timeout, tls), services)
        return dict(zip([s["name"] for s in services], docs))  # noqa: B905 - same length


def tls_options(ca=None, client_cert=None, client_key=None):
    """open_url's keywords for the pipeline's CA and a client certificate (None: plain)."""
    given = {"ca_path": ca, "client_cert": client_cert, "client_key": client_key}
    return {key: value for key, value in given.items() if value} or None


def virtual_client_statuses(pool, doc, clients):
    """{client: status} of a pool's virtual ``clients``, from the pool's /status ``doc``: each
    as the pool lists it (reachable), or not reachable with why."""
    if not doc.get("reachable"):
        return {c: {"reachable": False, "error": f"its pool {pool}: {doc.get('error')}",
                    "timed_out": bool(doc.get("timed_out"))} for c in clients}
    listed = doc.get("virtual_clients") or {}
    return {c: ({**listed[c], "reachable": True} if isinstance(listed.get(c), dict) else
                {"reachable": False, "error": f"not among the virtual clients its pool {pool} "
                                              f"runs", "timed_out": False})
            for c in clients}


class WaitFailed(Exception):
    """The wait cannot succeed; the message names the service and gives the cause."""

    def __init__(self, message, statuses):
        super().__init__(message)
        self.statuses = statuses


class Watch:
    """Polls the /status of ``services`` ({name, url, parent, started, log, wait}; ``parent`` is
    the parent's service name, None for the global aggregator; ``wait`` false lists a service only
    so that its children can be judged: the wait neither waits for it nor fails on it, its own
    host's check does) and fails as soon as waiting cannot help:

    - a child cannot reach its parent: the parent answers /status here, yet the child reports
      ``parent_error`` from a join attempt that began after the parent was first seen answering
      (``parent_error_age_s``). A parent still starting is no failure: attempts made before it
      answered are ignored, and the child retries within a few seconds (its backoff is 5 s at
      most), so the verdict comes at the first check after that retry;
    - ``probe(names)`` (optional) says which of the services not answering are gone, e.g. their
      container exited, as {name: message};
    - a ``started`` service answered before (placement started it and waited for it), so when it
      does not answer it is gone (refused or unresolvable at once, timeouts after
      ``TIMEOUTS_GONE`` polls in a row); its ``log`` (a file on this host), if given, adds the
      end of its log;
    - waiting for ``finished``: the global aggregator stops answering (refused or unresolvable at
      once, timeouts after ``TIMEOUTS_GONE`` polls in a row);
    - a service's URL is answered by another service: its /status must name the service, the
      ``pipeline`` (if given) and the pid placement started (``pids``: name -> pid, if given),
      else another process holds its port (the service itself then cannot bind it).

    A pool (a service with ``virtual_clients``: {client: {parent}}, the plan's entry) is waited
    for as itself and as each of its virtual clients, read from its /status: every one is a
    child judged against its own parent.
    """

    def __init__(self, services, fetch_timeout=3.0, probe=None, fetch=fetch_all,
                 clock=time.monotonic, pipeline=None, pids=None):
        self.services = services
        self.pipeline = pipeline
        self.pids = dict(pids or {})
        self.started = {s["name"] for s in services if s.get("started")}
        self.waited = [s["name"] for s in services if s.get("wait", True) is not False]
        self.logs = {s["name"]: s.get("log") for s in services}
        self.url = {s["name"]: s["url"] for s in services}
        self.names = [s["name"] for s in services]
        self.parent = {s["name"]: s.get("parent") for s in services}
        self.pools = {s["name"]: sorted(s["virtual_clients"]) for s in services
                      if s.get("virtual_clients")}
        self.parent_pool = {}  # virtual client -> its pool
        for s in services:
            for client, where in (s.get("virtual_clients") or {}).items():
                self.parent_pool[client] = s["name"]
                self.parent[client] = where["parent"]
                self.url[client] = s["url"]
                self.logs[client] = s.get("log")
                self.names.append(client)
                if s.get("wait", True) is not False:
                    self.waited.append(client)
        self.fetch_timeout = fetch_timeout
        self.probe = probe
        self._fetch = fetch
        self.clock = clock
        self.up_since = {}  # name -> when its /status first answered (end of that poll)
        self.timeouts = dict.fromkeys(self.names, 0)
        self.statuses = {}

    def poll(self):
        began = self.clock()
        statuses = self._fetch(self.services, self.fetch_timeout)
        ended = self.clock()
        for pool, clients in self.pools.items():
            statuses.update(virtual_client_statuses(pool, statuses[pool], clients))
        for name, doc in statuses.items():
            impostor = doc.get("reachable") and self.impostor(name, doc)
            if impostor:
                statuses[name] = {"reachable": False, "error": impostor, "timed_out": False,
                                  "impostor": True}
            elif doc.get("reachable"):
                self.up_since.setdefault(name, ended)
                self.timeouts[name] = 0
            elif doc.get("timed_out"):
                self.timeouts[name] += 1
        self.statuses = statuses
        return began

    def impostor(self, name, doc):
        """Why the /status ``doc`` read for ``name`` is not that service's, or None."""
        want = {"name": name}
        if self.pipeline:
            want["pipeline"] = self.pipeline
        if self.pids.get(name):
            want["pid"] = self.pids[name]
        got = {key: doc.get(key) for key in want}
        if got == want:
            return None
        port = urlsplit(self.url[name]).port
        return (f"{name}: port {port} ({self.url[name]}) answers as {_identity(got)}, not as "
                f"{_identity(want)}: another process holds the port")

    def parent_failures(self, began):
        """(failures, undecided): children that cannot reach an answering parent, and children
        whose last failed attempt may have met their parent still starting."""
        failures, undecided = [], []
        for name in self.waited:
            doc, parent = self.statuses[name], self.parent[name]
            error, age = doc.get("parent_error"), doc.get("parent_error_age_s")
            if not (doc.get("reachable") and error and parent in self.statuses):
                continue
            if not (self.statuses[parent].get("reachable") and isinstance(age, (int, float))):
                continue
            # The child answered after `began`, so its attempt began at or after began - age.
            # A child still on another parent (a move not yet taken up) is judged once it is.
            if not self.on_parent(doc, parent):
                undecided.append(name)
            elif began - age > self.up_since[parent]:
                failures.append(f"{name}: cannot reach its parent {parent} at "
                                f"{doc.get('parent')}, which answers /status: {error}")
            else:
                undecided.append(name)
        return failures, undecided

    def on_parent(self, doc, parent):
        """Whether the child's parent address has the listed parent's port (the address itself
        differs by runtime: a podman alias, a Service name, the plan's address)."""
        port = urlsplit(self.url[parent]).port
        return port is None or str(doc.get("parent") or "").endswith(f":{port}")

    def check(self, began, until):
        """Raise WaitFailed for a failure; True when ``until`` holds."""
        failures, undecided = self.parent_failures(began)
        failures += [self.statuses[n]["error"] for n in self.waited
                     if self.statuses[n].get("impostor")]
        down = [n for n in self.waited if not self.statuses[n].get("reachable")]
        probed = [n for n in down if n not in self.parent_pool]
        if self.probe and probed:
            failures += [msg for name, msg in sorted(self.probe(probed).items())]
        if until == "finished":
            for root in self.roots():
                if self.gone(root):
                    failures.append(f"{root}: the global aggregator stopped answering "
                                    f"/status: {self.statuses[root].get('error')}")
        for name in down:
            if name in self.started and self.gone(name) and not self.statuses[name].get(
                    "impostor"):
                failures.append(f"{name}: stopped answering {self.url[name]} after it started: "
                                f"{self.statuses[name].get('error')}{self.log_tail(name)}")
        if failures:
            raise WaitFailed("\n".join(failures), self.statuses)
        if until == "finished":
            return all(self.statuses[r].get("state") == "finished" for r in self.roots())
        return not down and not undecided

    def gone(self, name):
        doc = self.statuses[name]
        return not doc.get("reachable") and (not doc.get("timed_out")
                                             or self.timeouts[name] >= TIMEOUTS_GONE)

    def log_tail(self, name, lines=LOG_LINES):
        path = self.logs.get(name)
        try:
            with open(path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except (OSError, TypeError):
            return ""
        return f"; the end of its log {path}:\n" + "\n".join(tail)

    def roots(self):
        return [n for n in self.waited if not self.parent[n] and n not in self.pools]

    def pending(self, until):
        """One line per service that keeps the wait going (for the timeout message)."""
        lines = []
        for name in self.waited:
            doc = self.statuses.get(name, {})
            if not doc.get("reachable"):
                lines.append(f"{name}: not answering /status: {doc.get('error')}")
            elif until == "finished" and name in self.roots():
                lines.append(f"{name}: state {doc.get('state')}, global round "
                             f"{doc.get('global_round')}/{doc.get('global_rounds')}")
            elif doc.get("parent_error"):
                lines.append(f"{name}: cannot reach its parent at {doc.get('parent')}: "
                             f"{doc['parent_error']}")
        return lines

    def wait(self, until, timeout, poll_s, sleep=time.sleep):
        """Poll until ``until`` ('reachable': every service answers and no child is left with a
        parent error; 'finished': every root reports state finished) holds; WaitFailed at the
        first failure or after ``timeout`` seconds. Returns the last statuses."""
        deadline = self.clock() + timeout
        while True:
            began = self.poll()
            if self.check(began, until):
                return self.statuses
            if self.clock() + poll_s > deadline:
                what = ("the global aggregator did not finish" if until == "finished"
                        else "not every service answers /status and reaches its parent")
                raise WaitFailed(f"{what} within {timeout:g} s:\n" + "\n".join(self.pending(until)),
                                 self.statuses)
            sleep(poll_s)


def _identity(fields):
    return ", ".join(f"{key} {value!r}" for key, value in fields.items())


def podman_probe(run_command, pipeline, lines=LOG_LINES):
    """A ``Watch`` probe for pods of ``pipeline`` on this host (label hfl.io/pipeline, service
    name in app.kubernetes.io/instance): a service without a pod, or whose container exited or
    was restarted, is gone; the message carries podman's state and the end of its log."""

    def podman(*args):
        rc, out, err = run_command(["podman", *args])
        return rc, out, (err or out).strip()

    def probe(names):
        rc, out, err = podman("pod", "ps", "--format", "json", "--filter",
                              f"label=hfl.io/pipeline={pipeline}")
        if rc != 0:
            return {n: f"{n}: podman pod ps failed: {err}" for n in names}
        pods = {}
        for pod in json.loads(out or "[]"):
            pods[(pod.get("Labels") or {}).get("app.kubernetes.io/instance")] = pod
        gone, containers = {}, {}
        for name in names:
            pod = pods.get(name)
            if pod is None:
                gone[name] = f"{name}: no pod of pipeline {pipeline} on this host"
                continue
            for c in pod.get("Containers") or []:
                if c.get("Id") != pod.get("InfraId"):
                    containers[c["Id"]] = name
        if not containers:
            return gone
        rc, out, err = podman("container", "inspect", *containers)
        if rc != 0:
            return gone
        for info in json.loads(out or "[]"):
            state, restarts = info.get("State") or {}, info.get("RestartCount") or 0
            if state.get("Status") in ("running", "created", "configured") and not restarts:
                continue
            name = containers.get(info.get("Id"))
            if name is None:
                continue
            how = f"its container {info.get('Name')} is {state.get('Status')}"
            if restarts:
                how += f" (restarted {restarts} times after exiting)"
            if state.get("Status") == "exited":
                how += f", exit status {state.get('ExitCode')}"
            if state.get("Error"):
                how += f": {state['Error']}"
            log = run_command(["podman", "logs", "--tail", str(lines), info["Id"]])
            gone[name] = f"{name}: {how}; the end of its log:\n{(log[1] + log[2]).rstrip()}"
        return gone

    return probe
