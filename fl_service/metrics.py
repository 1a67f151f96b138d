"""What a service reports: /status JSON, Prometheus /metrics, and results.jsonl lines.

`ServiceState` is the one place a role writes its progress to; /status, /metrics and the results
file all read from it, so they cannot disagree.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fl_service.config import GA
from fl_service.transport import LinkCounters

STATES = ("starting", "waiting", "training", "aggregating", "finished")


class ServiceState:
    def __init__(self, cfg: dict[str, Any], links: LinkCounters) -> None:
        self.name = cfg["name"]
        self.role = cfg["role"]
        self.pipeline = cfg["pipeline"]
        self.parent = cfg["parent"] or None
        self.parent_name: str | None = None
        # A child's last failed attempt to join its parent: the error, and when it began
        # (time.monotonic()); both None once joined. /status shows the begin as an age.
        self.parent_error: str | None = None
        self.parent_error_at: float | None = None
        self.state = "starting"
        self.global_round = 0
        self.local_round = 0
        self.global_rounds = cfg["global_rounds"] if self.role == GA else None
        self.last_metrics: dict[str, float | None] = {"accuracy": None, "loss": None}
        # GA: [global_round, accuracy, loss] of its last rounds (global_aggregator.RECENT_ROUNDS),
        # so a reader that polls less often than rounds complete (the orchestrator) misses none.
        self.recent_metrics: list[list[Any]] = []
        self.rejected_updates = 0
        self.failed_aggregations = 0  # rounds whose strategy gave no usable aggregate
        self.last_federated_metrics: dict[str, Any] | None = None  # last federated evaluation
        self.num_examples = 0
        self.histogram: dict[str, int] = {}
        self.final_model: str | None = None
        self.children: Callable[[], list[str]] = list
        self.links = links
        # Last round's timings, for /metrics.
        self.round_wall_s = 0.0
        self.train_time_s = 0.0
        self.aggregation_time_s = 0.0
        self._lock = threading.Lock()

    def set(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                if not hasattr(self, key):
                    raise AttributeError(key)
                setattr(self, key, value)

    def count_rejected(self) -> None:
        with self._lock:
            self.rejected_updates += 1

    def count_failed_aggregation(self) -> None:
        with self._lock:
            self.failed_aggregations += 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "role": self.role,
                "pipeline": self.pipeline,
                "parent": self.parent,
                "parent_name": self.parent_name,
                "parent_error": self.parent_error,
                "parent_error_age_s": (None if self.parent_error_at is None else
                                       round(time.monotonic() - self.parent_error_at, 3)),
                "state": self.state,
                "global_round": self.global_round,
                "local_round": self.local_round,
                "global_rounds": self.global_rounds,
                "last_metrics": dict(self.last_metrics),
                "recent_metrics": list(self.recent_metrics),
                "links": self.links.snapshot(),
                "children": sorted(self.children()),
                "rejected_updates": self.rejected_updates,
                "failed_aggregations": self.failed_aggregations,
                "last_federated_metrics": (dict(self.last_federated_metrics)
                                           if self.last_federated_metrics is not None else None),
                "num_examples": self.num_examples,
                "histogram": dict(self.histogram),
                "final_model": self.final_model,
                "pid": os.getpid(),
            }


class _StateCollector:
    """Prometheus view of ServiceStates (one service's, or a pool's virtual clients'), read at
    scrape time: every family holds one series per state, labelled with its service name."""

    def __init__(self, states: list[ServiceState]) -> None:
        self.states = states

    def collect(self) -> Iterator[Any]:
        snapshots = [(state, state.status()) for state in self.states]
        labels = ["service", "role"]

        def own(s: dict[str, Any]) -> list[str]:
            return [s["name"], s["role"]]

        def gauge(name: str, doc: str, value: Callable[[ServiceState, dict[str, Any]],
                                                       float | None]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for state, s in snapshots:
                sample = value(state, s)
                if sample is not None:
                    family.add_metric(own(s), sample)
            return family

        yield gauge("hfl_global_round", "current global round", lambda _, s: s["global_round"])
        yield gauge("hfl_local_round", "current local round (LA)", lambda _, s: s["local_round"])
        yield gauge("hfl_accuracy", "last accuracy",
                    lambda _, s: s["last_metrics"]["accuracy"])
        yield gauge("hfl_loss", "last loss", lambda _, s: s["last_metrics"]["loss"])
        yield gauge("hfl_children", "connected children", lambda _, s: len(s["children"]))
        yield gauge("hfl_round_wall_seconds", "last round's wall time",
                    lambda state, _: state.round_wall_s)
        yield gauge("hfl_train_seconds", "last round's training time",
                    lambda state, _: state.train_time_s)
        yield gauge("hfl_aggregation_seconds", "last round's aggregation time",
                    lambda state, _: state.aggregation_time_s)
        state_family = GaugeMetricFamily("hfl_state", "1 for the current state",
                                         labels=[*labels, "state"])
        for _, s in snapshots:
            for name in STATES:
                state_family.add_metric([*own(s), name], 1.0 if s["state"] == name else 0.0)
        yield state_family
        rejected = CounterMetricFamily("hfl_rejected_updates", "updates rejected", labels=labels)
        failed = CounterMetricFamily("hfl_failed_aggregations",
                                     "rounds whose strategy gave no usable aggregate",
                                     labels=labels)
        for _, s in snapshots:
            rejected.add_metric(own(s), s["rejected_updates"])
            failed.add_metric(own(s), s["failed_aggregations"])
        yield rejected
        yield failed
        federated = GaugeMetricFamily("hfl_federated_metric",
                                      "last federated evaluation, one sample per metric",
                                      labels=[*labels, "name"])
        for _, s in snapshots:
            for name, value in (s["last_federated_metrics"] or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    federated.add_metric([*own(s), name], float(value))
        yield federated
        for direction in ("sent", "received"):
            family = CounterMetricFamily(
                f"hfl_link_{direction}_bytes", f"bytes {direction} on each link",
                labels=[*labels, "peer"],
            )
            for _, s in snapshots:
                for peer, link in s["links"].items():
                    family.add_metric([*own(s), peer], link[f"{direction}_bytes"])
            yield family


def prometheus_text(*states: ServiceState) -> bytes:
    """The /metrics text of one service's state, or of several (a pool's virtual clients)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StateCollector(list(states)))  # type: ignore[arg-type]
    return generate_latest(registry)


# One lock for every results file of the process: a pool's virtual clients append to one file
# from their own threads, and a line must never be split by another's.
_APPEND = threading.Lock()


class ResultsWriter:
    """Appends one JSON line per round to <state_dir>/results.jsonl, with this round's bytes."""

    def __init__(self, state_dir: Path, state: ServiceState) -> None:
        self.path = state_dir / "results.jsonl"
        self.state = state
        self._last_links = state.links.snapshot()

    def write(self, **fields: Any) -> dict[str, Any]:
        links = self.state.links.snapshot()
        delta = {}
        for peer, now in links.items():
            before = self._last_links.get(peer, {"sent_bytes": 0, "received_bytes": 0})
            delta[peer] = {k: now[k] - before[k] for k in now}
        self._last_links = links
        line = {"ts": time.time(), "service": self.state.name, "role": self.state.role,
                **fields, "links": delta}
        text = json.dumps(line) + "\n"
        with _APPEND, self.path.open("a") as out:
            out.write(text)
        return line
