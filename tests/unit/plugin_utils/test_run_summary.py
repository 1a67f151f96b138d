"""run_summary: per-link bytes, every client that took part, and round timing, from the
results.jsonl lines of a run."""

from ansible_collections.hfl.orchestration.plugins.plugin_utils import run_summary

W = {"c1": {"la1": 1, "la2": 4}, "c2": {"la1": 4, "la2": 1}, "la1": {"ga": 10},
     "la2": {"ga": 10}}


def counters(sent, received):
    return {"sent_bytes": sent, "received_bytes": received}


def test_link_bytes_reads_both_ends_the_right_way_round_and_keeps_the_larger():
    results = {
        # c1 restarted: its own lines counted 300 up, 100 down; la1 saw 500 up, 200 down.
        "c1": [{"service": "c1", "role": "client", "links": {"la1": counters(300, 100)}}],
        "la1": [{"service": "la1", "role": "local_aggregator",
                 "links": {"c1": counters(120, 250), "ga": counters(40, 60)}},
                {"service": "la1", "role": "local_aggregator",
                 "links": {"c1": counters(80, 250)}}],
        "ga": [{"service": "ga", "role": "global_aggregator", "links": {"la1": counters(50, 30)}}],
    }
    assert run_summary.link_bytes(results, W) == {
        ("c1", "la1"): {"up": 500, "down": 200},
        ("la1", "ga"): {"up": 40, "down": 60},  # la1's end (100) beats the GA's (80)
    }


def test_link_directions_without_weights_come_from_the_roles():
    results = {"la9": [{"service": "la9", "role": "local_aggregator",
                        "links": {"ga": counters(1, 2), "c9": counters(3, 4)}}],
               "ga": [{"service": "ga", "role": "global_aggregator", "links": {}}]}
    assert run_summary.link_bytes(results, {}) == {("c9", "la9"): {"up": 4, "down": 3},
                                                   ("la9", "ga"): {"up": 1, "down": 2}}


def la_line(la, rnd, participants, **extra):
    return {"service": la, "role": "local_aggregator", "global_round": rnd, "local_round": 1,
            "participants": participants, **extra}


def test_clients_lists_joiners_movers_and_uncollected_clients():
    results = {
        "ga": [{"service": "ga", "role": "global_aggregator", "global_round": r,
                "participants": ["la1", "la2"]} for r in (1, 2, 3)],
        "la1": [la_line("la1", 1, ["c1", "c2"]), la_line("la1", 2, ["c1"]),
                # An evaluation round names participants too: not a training round.
                {**la_line("la1", 2, ["c2"]), "phase": "evaluate", "local_round": 0}],
        "la2": [la_line("la2", 2, ["c2"]), la_line("la2", 3, ["c2", "c3"])],
        "c2": [{"service": "c2", "role": "client", "global_round": r, "type": "train",
                "parent": p, "num_examples": 50} for r, p in ((1, "la1"), (2, "la2"), (3, "la2"))]
              + [{"service": "c2", "role": "client", "global_round": 3, "type": "evaluate",
                  "parent": "la2", "num_examples": 20}],
    }
    got = {c["name"]: c for c in run_summary.clients(results, [])}
    assert set(got) == {"c1", "c2", "c3"}  # the LAs, GA participants, are not clients
    assert got["c2"] == {"name": "c2", "rounds": [1, 2, 3], "parents": [["la1", 1], ["la2", 2]],
                         "examples": 50, "collected": True}
    assert got["c3"] == {"name": "c3", "rounds": [3], "parents": [["la2", 3]],
                         "examples": None, "collected": False}
    assert got["c1"]["rounds"] == [1, 2]


def test_flat_fl_clients_are_the_gas_participants():
    results = {"ga": [{"service": "ga", "role": "global_aggregator", "global_round": 1,
                       "participants": ["c1", "c2"]}]}
    assert [c["name"] for c in run_summary.clients(results, [])] == ["c1", "c2"]


def test_round_timing_means_and_waiting_per_service_in_tier_order():
    results = {
        "c1": [{"service": "c1", "role": "client", "type": "train", "global_round": r,
                "train_time_s": 1.0, "wall_time_s": 1.5} for r in (1, 2)]
              + [{"service": "c1", "role": "client", "type": "evaluate", "global_round": 2,
                  "train_time_s": 0.0, "wall_time_s": 9.0}],
        "la1": [la_line("la1", r, ["c1"], train_time_s=1.0, aggregation_time_s=0.5,
                        wall_time_s=w) for r, w in ((1, 2.0), (2, 4.0))],
        "ga": [{"service": "ga", "role": "global_aggregator", "global_round": 1,
                "train_time_s": 3.0, "aggregation_time_s": 0.25, "wall_time_s": 4.0}],
    }
    rows = run_summary.round_timing(results)
    assert [r["service"] for r in rows] == ["ga", "la1", "c1"]
    assert rows[1] == {"service": "la1", "role": "local_aggregator", "rounds": 2, "wall": 3.0,
                       "training": 1.0, "aggregation": 0.5, "waiting": 1.5}
    assert rows[2]["rounds"] == 2 and rows[2]["waiting"] == 0.5  # the evaluation is not a round
    assert rows[0]["waiting"] == 0.75
