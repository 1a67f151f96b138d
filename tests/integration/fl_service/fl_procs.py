"""Start and stop real fl_service processes on free loopback ports, and watch their /status.

A Pipeline made with `tls=True` gives every service a certificate of a throwaway CA of its own
(bench/throwaway_pki.py: CN the name, OU the role, as role fl_pki makes them), so every link is
mutual TLS; the test then asks its services as the controller (its certificate) by default.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from throwaway_pki import CONTROLLER_ROLE, ThrowawayCA  # noqa: E402

from fl_service.transport import client_context  # noqa: E402

ROLE_NAMES = {"ga": "global_aggregator", "la": "local_aggregator", "client": "client"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    def __init__(self, name: str, role: str, port: int, config_path: Path, log_path: Path,
                 tls: ssl.SSLContext | None = None) -> None:
        """`tls`: how the test calls this service (None: plain HTTP)."""
        self.name, self.role, self.port = name, role, port
        self.config_path, self.log_path = config_path, log_path
        self.tls = tls
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text())

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fl_service", ROLE_NAMES[self.role],
                 "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def request(self, method: str, path: str, payload: dict | None = None,
                tls: ssl.SSLContext | None = None) -> Any:
        """Call the service (over TLS as `tls`, default the test's own identity); the JSON
        document, or the text of /metrics; urllib.error.HTTPError for an error status."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=5, context=tls or self.tls) as response:
            body = response.read()
        return json.loads(body) if path != "/metrics" else body.decode()

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status")

    def results(self) -> list[dict[str, Any]]:
        path = Path(self.config["state_dir"]) / "results.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Pipeline:
    """The processes of one test; `close()` kills every one of them. With `tls`, every service
    gets a certificate of `self.ca` and the test calls them as the controller."""

    def __init__(self, root: Path, tls: bool = False) -> None:
        self.root = root
        self.services: dict[str, Service] = {}
        self.ca = ThrowawayCA(root / "pki") if tls else None
        self.controller = self.identity("hfl-controller", CONTROLLER_ROLE) if tls else None

    def identity(self, name: str, role: str) -> ssl.SSLContext:
        """A TLS client holding a certificate of the pipeline's CA for `name` in `role`."""
        assert self.ca is not None, "a plain-HTTP pipeline has no certificates"
        files = self.ca.issue(name, role)
        return client_context(files["tls_cert"], files["tls_key"], files["tls_ca"])

    def anonymous(self) -> ssl.SSLContext:
        """A TLS client that trusts the pipeline's CA and holds no certificate (as a probe)."""
        assert self.ca is not None, "a plain-HTTP pipeline has no CA"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(self.ca.ca_path)
        return context

    def add(self, role: str, name: str, start: bool = True, **config: Any) -> Service:
        port = free_port()
        cfg = {"name": name, "port": port, "state_dir": str(self.root / name), "threads": 1,
               **(self.ca.issue(name, ROLE_NAMES[role]) if self.ca else {}), **config}
        config_path = self.root / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        service = Service(name, role, port, config_path, self.root / f"{name}.log",
                          self.controller)
        self.services[name] = service
        if start:
            service.start()
        return service

    def add_hierarchy(self, clients_per_la: list[int], ga: dict[str, Any],
                      la: dict[str, Any], **common: Any) -> Service:
        """A GA ("ga"), LAs la0, la1, ... under it and clients c0, c1, ... under them in order
        (`clients_per_la[i]` under la<i>, one partition each); `ga` and `la` are their own
        config, `common` everyone's. Returns the GA."""
        root = self.add("ga", "ga", **ga, **common)
        total = sum(clients_per_la)
        c = 0
        for i, n in enumerate(clients_per_la):
            parent = self.add("la", f"la{i}", parent=root.address, **la, **common)
            for _ in range(n):
                self.add("client", f"c{c}", parent=parent.address, partition_id=c,
                         num_partitions=total, **common)
                c += 1
        return root

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def wait_for(
        self, name: str, condition: Callable[[dict[str, Any]], bool], what: str,
        timeout: float = 180.0,
    ) -> dict[str, Any]:
        """Poll `name`'s /status until `condition` holds; fail with its log past the deadline."""
        service = self.services[name]
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "no answer yet"
        while time.monotonic() < deadline:
            if not service.alive():
                raise AssertionError(f"{name} exited while waiting for {what}:\n"
                                     f"{service.log_tail()}")
            try:
                last = service.status()
                if condition(last):
                    return last
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise AssertionError(f"{name}: no {what} within {timeout}s; last status {last}\n"
                             f"{service.log_tail()}")

    def close(self) -> None:
        for service in self.services.values():
            service.stop()
        for service in self.services.values():
            service.kill()


def send_signal(service: Service, sig: signal.Signals) -> None:
    assert service.process is not None
    service.process.send_signal(sig)
