"""plugin_utils/prometheus.py: the plan's scrape targets and the pipeline's constants."""

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import plan, prometheus, topology
from inventory_fixtures import local_hfl


def targets_of(**overrides):
    return prometheus.scrape_targets(plan.make_plan(topology.build(*local_hfl(**overrides))))


def test_every_service_is_a_target_labelled_as_the_plan_places_it():
    groups = targets_of(la2={"hfl_address": "10.0.0.12"})
    by_service = {g["labels"]["service"]: g for g in groups}
    assert set(by_service) == {"ga", "la1", "la2", "c1", "c2", "c3", "c4"}
    assert by_service["la2"] == {"targets": ["10.0.0.12:8082"], "labels": {
        "pipeline": "demo", "service": "la2", "role": "local_aggregator", "tier": "fog",
        "host": "la2"}}
    assert by_service["c3"]["targets"] == ["127.0.0.1:8093"]
    assert by_service["ga"]["labels"]["role"] == "global_aggregator"


def test_an_ipv6_address_is_bracketed():
    groups = targets_of(ga={"hfl_address": "fd00::1"})
    ga = next(g for g in groups if g["labels"]["service"] == "ga")
    assert ga["targets"] == ["[fd00::1]:8080"]


@pytest.mark.parametrize("runtime", ["podman", "k3s"])
def test_container_runtimes_scrape_the_aggregators_only(runtime):
    # A client serves no port outside its pod; its links are counted at its LA.
    overrides = {h: {"hfl_runtime": runtime} for h in ("ga", "la1", "la2", "c1", "c2", "c3",
                                                       "c4")}
    services = {g["labels"]["service"] for g in targets_of(**overrides)}
    assert services == {"ga", "la1", "la2"}


def test_constants_price_every_allowed_link_and_carry_budget_and_stall_factor():
    doc = prometheus.pipeline_rules("demo", {"c1": {"la1": 1, "la2": 4}, "la1": {"ga": 10}},
                                    budget=50, stall_factor=3)
    (group,) = doc["groups"]
    assert group["name"] == "hfl-demo-constants"
    rules = {(r["record"], tuple(sorted(r["labels"].items()))): r["expr"]
             for r in group["rules"]}
    assert rules == {
        ("hfl:link_cost_weight", (("child", "c1"), ("parent", "la1"), ("pipeline", "demo"))):
            "vector(1.0)",
        ("hfl:link_cost_weight", (("child", "c1"), ("parent", "la2"), ("pipeline", "demo"))):
            "vector(4.0)",
        ("hfl:link_cost_weight", (("child", "la1"), ("parent", "ga"), ("pipeline", "demo"))):
            "vector(10.0)",
        ("hfl:budget_units", (("pipeline", "demo"),)): "vector(50.0)",
        ("hfl:round_stall_factor", (("pipeline", "demo"),)): "vector(3.0)",
    }


def test_no_budget_means_no_budget_series():
    doc = prometheus.pipeline_rules("demo", {}, budget=None)
    assert [r["record"] for r in doc["groups"][0]["rules"]] == ["hfl:round_stall_factor"]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "3", True, None])
def test_a_stall_factor_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ValueError, match=r"^hfl_prometheus_stall_factor: expected a number "
                                         r"above 0, got "):
        prometheus.pipeline_rules("demo", {}, stall_factor=bad)
