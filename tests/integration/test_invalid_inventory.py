"""Each inventory mistake stops site.yml before anything is placed, with one line that names
the host and the variable."""

import pytest
from hfl_helpers import local_inventory, playbook, processes_mentioning

pytestmark = pytest.mark.integration


def host(name, **vars_):
    def edit(tiers, cluster_vars):
        tier = next(t for t in tiers if name in tiers[t])
        tiers[tier][name].update(vars_)
    return edit


def pipeline(**vars_):
    return lambda tiers, cluster_vars: cluster_vars.update(vars_)


def second_ga(tiers, cluster_vars):
    tiers["cloud"]["ga2"] = {"hfl_role": "global_aggregator", "hfl_port": 1}


def no_ga(tiers, cluster_vars):
    tiers["cloud"]["ga"]["hfl_role"] = "local_aggregator"
    tiers["cloud"]["ga"]["hfl_allow_any_tier"] = True


def two_tiers(tiers, cluster_vars):
    tiers["fog"]["c1"] = {}  # same host, also in fog


def same_port(tiers, cluster_vars):
    tiers["edge"]["c2"]["hfl_port"] = tiers["edge"]["c1"]["hfl_port"]


CASES = {
    "no GA": (no_ga, "pipeline demo: hfl_role: needs exactly one global_aggregator, found none"),
    "two GAs": (second_ga, "needs exactly one global_aggregator, found ga, ga2"),
    "unknown role": (host("c3", hfl_role="worker"), "host c3: hfl_role: 'worker' is not one of"),
    "parent not an LA": (host("c1", hfl_parent="c2"), "host c1: hfl_parent: 'c2' is a client"),
    "host in two tiers": (two_tiers, "host c1: tier: in tiers fog and edge"),
    "role on wrong tier": (host("la1", hfl_role="client"),
                           "host la1: hfl_role: a client belongs on tier edge, not fog"),
    "same port": (same_port, "host c2: hfl_port:"),
    "rounds": (pipeline(hfl_global_rounds=0), "host ga: hfl_global_rounds: must be an integer"),
    "local rounds": (pipeline(hfl_local_rounds=0), "host ga: hfl_local_rounds: must be"),
    "epochs": (pipeline(hfl_local_epochs=-1), "host ga: hfl_local_epochs: must be"),
    "batch size": (pipeline(hfl_batch_size=0), "host ga: hfl_batch_size: must be"),
    "dataset": (pipeline(hfl_dataset="imagenet"), "host ga: hfl_dataset: must be one of"),
    "partitioner": (pipeline(hfl_partitioner="random"), "host ga: hfl_partitioner: must be one"),
    "link cost": (host("c4", hfl_link_cost=-1), "host c4: hfl_link_cost: must be a number >= 0"),
    "runtime": (pipeline(hfl_runtime="docker"), "host ga: hfl_runtime: must be one of"),
}


@pytest.mark.parametrize("edit, expected", CASES.values(), ids=CASES.keys())
def test_mistake_fails_before_placing(tmp_path, edit, expected):
    inventory = local_inventory(tmp_path, edit)
    run = playbook("site.yml", inventory)
    assert run.rc != 0
    assert expected in run.output, run.output[-2000:]
    assert "PLAY [Place the services]" not in run.output
    assert not (tmp_path / "hosts").exists()
    assert processes_mentioning(str(tmp_path)) == []
