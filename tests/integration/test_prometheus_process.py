"""A real Prometheus scrapes a running pipeline: site.yml with hfl_prometheus: true on the
embedded default (process runtime, mutual TLS) installs and runs it with role fl_prometheus;
its HTTP API then returns every service's global round, its rules record the links and the
cost; a re-run changes nothing; reset.yml stops it and removes its folder."""

from __future__ import annotations

import pytest
from hfl_helpers import (
    free_ports,
    local_inventory,
    playbook,
    processes_mentioning,
    stop_processes_under,
)
from prometheus_api import by_label, poll, query

pytestmark = pytest.mark.integration
SERVICES = {"ga", "la1", "la2", "c1", "c2", "c3", "c4"}
LINKS = {("c1", "la1"), ("c2", "la1"), ("c3", "la2"), ("c4", "la2"), ("la1", "ga"), ("la2", "ga")}


def test_prometheus_scrapes_every_service_of_a_running_pipeline(tmp_path, prometheus_dir):
    port, = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    inventory = local_inventory(tmp_path, lambda tiers, cv: cv.update(
        hfl_prometheus=True, hfl_prometheus_dir=str(prometheus_dir),
        hfl_prometheus_port=port, hfl_prometheus_scrape_interval="1s"))
    home = prometheus_dir / "demo"
    try:
        run = playbook("site.yml", inventory)
        assert run.rc == 0, run.why()
        assert (home / "tls" / "controller.key").stat().st_mode & 0o777 == 0o600

        # Every service's global round, as Prometheus scraped it over mutual TLS.
        poll("global round 10 from every service",
             lambda: by_label(query(base, "hfl_global_round"), "service"),
             lambda got: got == dict.fromkeys(SERVICES, "10"))
        (la2,) = query(base, 'hfl_global_round{service="la2"}')
        assert la2["metric"] | {"instance": "-"} == {
            "__name__": "hfl_global_round", "job": "hfl-demo", "instance": "-",
            "pipeline": "demo", "service": "la2", "role": "local_aggregator", "tier": "fog",
            "host": "la2"}
        assert by_label(query(base, "up"), "service") == dict.fromkeys(SERVICES, "1")
        # The rules loaded and record what the pipeline carried: ten rounds of a model on each
        # link (a rule is evaluated on its own clock, so it may first show an earlier scrape).
        links = poll("ten rounds' bytes on every link", lambda: query(base, "hfl:link_bytes"),
                     lambda got: len(got) == len(LINKS)
                     and all(float(r["value"][1]) > 1e6 for r in got))
        assert {(r["metric"]["child"], r["metric"]["parent"]) for r in links} == LINKS
        (cost,) = query(base, "hfl:cost_units")
        assert float(cost["value"][1]) > 0

        again = playbook("prometheus.yml", inventory)
        assert again.rc == 0, again.why()
        assert again.changed == 0, again.why()

        reset = playbook("reset.yml", inventory)
        assert reset.rc == 0, reset.why()
        assert processes_mentioning(str(home)) == []
        assert not home.exists()
    finally:
        stop_processes_under(tmp_path)  # the services; the fixture stops Prometheus
