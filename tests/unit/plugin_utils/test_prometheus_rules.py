"""The collection's Prometheus rules under `promtool test rules`, with the constants that
plugin_utils/prometheus.py makes; every recording rule and alert has a case."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.hfl.orchestration.plugins.plugin_utils import prometheus

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "roles" / "fl_prometheus" / "files" / "hfl.rules.yml"
TESTS = Path(__file__).with_name("prometheus_rules_test.yml")
PROMTOOL = shutil.which("promtool")


def rules_of(path):
    return [rule for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


@pytest.mark.skipif(not PROMTOOL, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_passes_the_rules_unit_tests(tmp_path):
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(TESTS, tmp_path / TESTS.name)
    constants = prometheus.pipeline_rules(
        "p", {"la1": {"ga": 10}, "c1": {"la1": 2, "ga": 5}}, budget=1.0, stall_factor=3)
    (tmp_path / "p.constants.yml").write_text(yaml.safe_dump(constants))
    run = subprocess.run([PROMTOOL, "test", "rules", TESTS.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_rule_has_a_promtool_case():
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    exprs = {case["expr"] for t in tests for case in t.get("promql_expr_test", [])}
    alerts = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    rules = rules_of(RULES)
    assert {r["record"] for r in rules if "record" in r} <= exprs
    assert {r["alert"] for r in rules if "alert" in r} <= alerts
    # An alert tested only where it stays quiet would prove nothing.
    firing = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])
              if case["exp_alerts"]}
    assert firing == alerts


@pytest.mark.skipif(not PROMTOOL, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_the_rule_files(tmp_path):
    constants = tmp_path / "demo.constants.yml"
    constants.write_text(yaml.safe_dump(prometheus.pipeline_rules(
        "demo", {"c1": {"la1": 1.5}}, budget=None, stall_factor=2.5)))
    run = subprocess.run([PROMTOOL, "check", "rules", str(RULES), str(constants)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
