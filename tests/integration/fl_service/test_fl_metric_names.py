"""The Grafana dashboard and the Prometheus rules ask only for metrics a running pipeline's
/metrics really exports (read over mutual TLS from a GA, an LA and a client that trained two
rounds with a federated evaluation), for Prometheus's own (up, ALERTS), or for the rules'
recordings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from ansible_collections.hfl.orchestration.plugins.plugin_utils import prometheus
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration
FILES = Path(__file__).resolve().parents[3] / "roles" / "fl_prometheus" / "files"
PROMETHEUS_OWN = {"up", "ALERTS"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # strings (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  expr)
    expr = re.sub(r"\boffset\s+\S+", " ", expr)
    expr = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", expr)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", expr):
        if not expr[m.end():].lstrip().startswith("(") and m.group() not in _KEYWORDS:
            names.add(m.group())
    return names


def test_metric_names_reads_what_promql_reads():
    assert metric_names('sum by (pipeline) (rate(a_total{x="b c"}[5m]) * on (p) group_left () '
                        "b:rec) / 1e6 > bool 0.5 and c offset 5m") == {"a_total", "b:rec", "c"}


def dashboard_queries() -> list[str]:
    doc = json.loads((FILES / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in doc["panels"] for t in panel["targets"]]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            # label_values(<metric>, <label>): only its first argument is a metric.
            queries.append(re.match(r"label_values\((\w+),", var["definition"]).group(1))
    return queries


def exported(pipeline) -> set[str]:
    """Sample names on the /metrics pages of every service of a pipeline that has trained."""
    ga = pipeline.add("ga", "ga", pipeline="m", dataset="digits", global_rounds=2,
                      min_participants=1, evaluate_every=1)
    la = pipeline.add("la", "la1", pipeline="m", dataset="digits", parent=ga.address,
                      local_rounds=1, min_participants=1)
    pipeline.add("client", "c1", pipeline="m", dataset="digits", parent=la.address,
                 partition_id=0, num_partitions=2)
    pipeline.wait_for("ga", lambda s: s["state"] == "finished", "the last round")
    names = set()
    for service in pipeline.services.values():
        for family in text_string_to_metric_families(service.request("GET", "/metrics")):
            names |= {sample.name for sample in family.samples}
    return names


def test_dashboard_and_rules_ask_only_for_exported_metrics(tls_pipeline):
    real = exported(tls_pipeline)
    # The run exported what the dashboard's panels show.
    assert {"hfl_accuracy", "hfl_link_sent_bytes_total", "hfl_federated_metric",
            "hfl_rejected_updates_total"} <= real
    rules = [r for g in yaml.safe_load((FILES / "hfl.rules.yml").read_text())["groups"]
             for r in g["rules"]]
    constants = prometheus.pipeline_rules("m", {"c1": {"la1": 1}}, budget=1)["groups"][0]
    recorded = {r["record"] for r in [*rules, *constants["rules"]] if "record" in r}
    known = real | PROMETHEUS_OWN | recorded
    unknown = {q: metric_names(q) - known for q in dashboard_queries()}
    assert not {q: n for q, n in unknown.items() if n}
    # A recording is only as real as what it reads.
    unknown = {r.get("record") or r["alert"]: metric_names(r["expr"]) - known for r in rules}
    assert not {q: n for q, n in unknown.items() if n}
    # Every recording the dashboard shows is one the rules make.
    shown = set().union(*(metric_names(q) for q in dashboard_queries()))
    assert {n for n in shown if ":" in n} <= recorded
