"""What every role shares: config, state, results file, the HTTP port and its service routes."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fl_service.access import ALIVE, Access, forbidden
from fl_service.config import ConfigError
from fl_service.http_server import (
    BODY_LIMIT,
    IDLE_TIMEOUT_S,
    Peer,
    Reply,
    Route,
    ServiceHTTPServer,
    json_reply,
    server_context,
)
from fl_service.metrics import ResultsWriter, ServiceState, prometheus_text
from fl_service.transport import FRAME_TYPE, LinkCounters

log = logging.getLogger("fl_service")
TASK_ROUTE, UPDATE_ROUTE = ("GET", "/fl/task"), ("POST", "/fl/update")


class Service:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.access = Access(cfg)
        # Loaded now, so that a bad certificate stops us before anything is written.
        self.tls = (server_context(cfg["tls_cert"], cfg["tls_key"], cfg["tls_ca"])
                    if self.access.enforced else None)
        self.links = LinkCounters()
        self.state = ServiceState(cfg, self.links)
        self.state_dir = Path(cfg["state_dir"]).expanduser()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.results = ResultsWriter(self.state_dir, self.state)
        torch.set_num_threads(cfg["threads"])
        self.server: ServiceHTTPServer | None = None
        self.task_frame_bytes = 0  # the last task frame handed out (an aggregator's model)

    def routes(self) -> dict[tuple[str, str], Route]:
        # /metrics needs no check here: the port answers 401 to a caller without a certificate.
        return {
            ("GET", "/status"): self._status_route,
            ("GET", "/metrics"): lambda q, b, peer: Reply(
                200, self.metrics_text(), "text/plain; version=0.0.4"
            ),
            ("POST", "/control"): self._control_route,
        }

    def status(self) -> dict[str, Any]:
        """The /status document."""
        return self.state.status()

    def metrics_text(self) -> bytes:
        """The /metrics text."""
        return prometheus_text(self.state)

    def _status_route(self, query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
        return json_reply(self.status() if self.access.sees_status(peer) else ALIVE)

    def _control_route(self, query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
        refusal = self.access.control(peer)
        if refusal is not None:
            return forbidden("POST /control", peer, refusal)
        try:
            message = json.loads(body or b"{}")
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
            return json_reply(self.control(message))
        except (ValueError, ConfigError) as exc:
            return json_reply({"error": str(exc)}, 400)

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"{self.state.role} takes no control messages")

    def update_limit(self) -> int:
        """The body limit of POST /fl/update: twice the model's frame, once a task (which always
        carries the model) has gone out; before that no update can carry a model (it would
        answer no task), so BODY_LIMIT. Plus BODY_LIMIT for the update's header."""
        return 2 * self.task_frame_bytes + BODY_LIMIT

    def _sizing_tasks(self, route: Route) -> Route:
        def task(query: dict[str, str], body: bytes, peer: Peer | None) -> Reply:
            reply = route(query, body, peer)
            if reply.content_type == FRAME_TYPE:
                self.task_frame_bytes = len(reply.body)
            return reply

        return task

    def start_http(self) -> None:
        routes = self.routes()
        limits = {}
        # An aggregator's children hold their connection idle while they train; an update later
        # than the round timeout is stale anyway (http_server.IDLE_TIMEOUT_S).
        idle_timeout_s = IDLE_TIMEOUT_S
        if TASK_ROUTE in routes:  # an aggregator: updates answer the tasks it hands out
            routes[TASK_ROUTE] = self._sizing_tasks(routes[TASK_ROUTE])
            limits[UPDATE_ROUTE] = self.update_limit
            idle_timeout_s += float(self.cfg.get("round_timeout_s") or 0.0)
        self.server = ServiceHTTPServer(
            self.cfg["bind_host"], self.cfg["port"], routes, self.links, self.tls, limits,
            idle_timeout_s,
        )
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
        where = f"{self.cfg['bind_host']}:{self.cfg['port']}"
        if self.tls is None:
            log.warning("TLS IS OFF (no tls_cert, tls_key, tls_ca): plain HTTP on %s, and "
                        "anyone who can reach it can join, send updates, read /status and "
                        "/metrics and /control this service (hfl_insecure)", where)
        log.info("%s (%s) serving %s on %s", self.cfg["name"], self.state.role,
                 "mutual TLS" if self.tls else "plain HTTP", where)

    def run(self) -> None:
        """The role's loop; it never returns (the service stays up until SIGTERM)."""
        raise NotImplementedError


def model_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as numpy arrays by state_dict name, in state_dict order (copies:
    training goes on in place). The wire's `Arrays`."""
    return {k: t.detach().cpu().numpy().copy() for k, t in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy `arrays` (by state_dict name) into the model's tensors (read-only views from a
    frame are fine)."""
    with warnings.catch_warnings():
        # torch warns that a tensor over a read-only array must not be written to; it is only
        # read, by load_state_dict's copy into the model's own tensors.
        warnings.simplefilter("ignore", UserWarning)
        tensors = {k: torch.from_numpy(a) for k, a in arrays.items()}
    model.load_state_dict(tensors)
