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

from fl_service.config import ConfigError
from fl_service.http_server import Reply, Route, ServiceHTTPServer, json_reply
from fl_service.metrics import ResultsWriter, ServiceState, prometheus_text
from fl_service.transport import LinkCounters

log = logging.getLogger("fl_service")


class Service:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.links = LinkCounters()
        self.state = ServiceState(cfg, self.links)
        self.state_dir = Path(cfg["state_dir"]).expanduser()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.results = ResultsWriter(self.state_dir, self.state)
        torch.set_num_threads(cfg["threads"])
        self.server: ServiceHTTPServer | None = None

    def routes(self) -> dict[tuple[str, str], Route]:
        return {
            ("GET", "/status"): lambda q, b: json_reply(self.state.status()),
            ("GET", "/metrics"): lambda q, b: Reply(
                200, prometheus_text(self.state), "text/plain; version=0.0.4"
            ),
            ("POST", "/control"): self._control_route,
        }

    def _control_route(self, query: dict[str, str], body: bytes) -> Reply:
        try:
            message = json.loads(body or b"{}")
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
            return json_reply(self.control(message))
        except (ValueError, ConfigError) as exc:
            return json_reply({"error": str(exc)}, 400)

    def control(self, message: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"{self.state.role} takes no control messages")

    def start_http(self) -> None:
        self.server = ServiceHTTPServer(
            self.cfg["bind_host"], self.cfg["port"], self.routes(), self.links,
            self.cfg["tls_cert"], self.cfg["tls_key"],
        )
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
        log.info("%s (%s) serving on %s:%s", self.cfg["name"], self.state.role,
                 self.cfg["bind_host"], self.cfg["port"])

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
