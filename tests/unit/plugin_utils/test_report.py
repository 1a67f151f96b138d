"""The HTML report: self-contained, and its plots really render in headless Chromium."""

import base64
import html
import json
import re
import shutil
import subprocess

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import report

CHROMIUM = "/usr/bin/chromium"
MB = 1_000_000
W = {"c1": {"la1": 20, "la2": 60}, "c2": {"la1": 60, "la2": 20}, "c3": {"la1": 20, "la2": 60},
     "c4": {"la1": 60, "la2": 20}, "la1": {"ga": 100}, "la2": {"ga": 100}}
CLIENTS = (("c1", "la1", {"0": 30, "1": 30}), ("c2", "la2", {"1": 10, "2": 50}),
           ("c3", "la1", [5, 5, 5]))
BOTH_WAYS = {"sent_bytes": MB, "received_bytes": MB}


def run_results(rounds=8):
    """A run as results.jsonl lines say it: c1, c3 under la1, c2 under la2; c4 joins la2 in
    round 5 and its own file was not collected (la2's lines still show it)."""
    ga = [{"service": "ga", "role": "global_aggregator", "global_round": r,
           "accuracy": 0.5 + 0.05 * r, "loss": 1.5 - 0.1 * r, "participants": ["la1", "la2"],
           "train_time_s": 2.0, "aggregation_time_s": 0.1, "wall_time_s": 3.0,
           "links": {"la1": BOTH_WAYS, "la2": BOTH_WAYS}} for r in range(1, rounds + 1)]
    clients = {
        c: [{"service": c, "role": "client", "global_round": r, "local_round": 1,
             "type": "train", "parent": parent, "num_examples": 60, "train_time_s": 1.0,
             "aggregation_time_s": 0.0, "wall_time_s": 1.2, "histogram": hist,
             "links": {parent: BOTH_WAYS}}
            for r in range(1, rounds + 1)]
        for c, parent, hist in CLIENTS
    }
    members = {"la1": lambda r: ["c1", "c3"], "la2": lambda r: ["c2"] + (["c4"] if r >= 5 else [])}
    las = {la: [{"service": la, "role": "local_aggregator", "global_round": r, "local_round": 1,
                 "participants": members[la](r), "train_time_s": 1.0,
                 "aggregation_time_s": 0.05, "wall_time_s": 1.5 if la == "la1" else 2.5,
                 "links": {"ga": BOTH_WAYS, **dict.fromkeys(members[la](r), BOTH_WAYS)}}
                for r in range(1, rounds + 1)] for la in ("la1", "la2")}
    return {"ga": ga, **clients, **las}


EVENTS = [
    {"iteration": 1, "global_round": 0, "trigger": "attach", "action": "none", "reason": "keep",
     "cost": {"total": 0.0}},
    {"iteration": 9, "global_round": 4, "trigger": "join: c3", "action": "apply",
     "reason": "min_comm_cost: c3: - -> la1", "plan_before": {"c1": "la1", "c2": "la2"},
     "plan_after": {"c1": "la1", "c2": "la2", "c3": "la1"}, "change_cost": 20.0,
     "cost": {"total": 1500.0}},
    {"iteration": 20, "global_round": 8, "trigger": "stop condition", "action": "stop",
     "reason": "budget spent", "cost": {"total": 3000.0}},
]


def test_cumulative_cost_adds_measured_rounds_and_booked_changes():
    cum = report.cumulative_cost(run_results(2), W, [])
    per_round = 2 * (20 + 20 + 20) + 2 * 2 * 100  # three client uplinks, two LA uplinks
    assert cum == {1: per_round, 2: 2 * per_round}
    cum = report.cumulative_cost(run_results(4), W, EVENTS)
    assert cum[4] == pytest.approx(4 * per_round + 20)


def test_report_is_self_contained_with_every_section():
    page = report.render("demo", run_results(), EVENTS, W, budget=5000)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 5  # learning, cost, round timing, one change's topology, histograms
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in imgs)
    for text in ("final accuracy</th><td>90.0 %", "budget spent", "join: c3",
                 "budget</th><td>5,000.00 units"):
        assert text in page


def text_of(page):
    """What a reader sees: the page's words, without style, tags and embedded images."""
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_figures_are_formatted_and_nothing_shows_as_none():
    results = run_results()
    results["ga"][-1]["loss"] = None  # e.g. an evaluation that gave no loss
    text = text_of(report.render("demo", results, [*EVENTS, {"iteration": 21}], W))
    assert "None" not in text and "nan" not in text.lower()
    assert "final accuracy 90.0 %" in text and "final loss \u2014" in text
    assert "budget none (hfl_budget unset)" in text
    # Eight rounds of 1 MB each way on every link, at the end that counted it.
    assert "c1 \u2192 la1 8.00 MB 8.00 MB 16.00 MB 20 320.00" in text
    assert "la2 \u2192 ga 8.00 MB 8.00 MB 16.00 MB 100 1,600.00" in text
    assert "c4 \u2192 la2 4.00 MB 4.00 MB 8.00 MB 20 160.00" in text
    assert "bytes on all links 88.00 MB" in text
    assert not re.search(r"\d\.\d{5}", text)  # no raw floats (0.9500000000000001)


def test_every_client_that_took_part_is_listed_joiners_included():
    text = text_of(report.render("demo", run_results(), [], W))
    assert "clients 4 (c4 first in round 5)" in text
    assert "c4 la2 4 5\u20138 \u2014 8.00 MB first in round 5; its results were not collected" \
        in text
    assert "c1 la1 8 1\u20138 60 16.00 MB \u2014" in text


def test_round_timing_shows_the_slow_tier():
    text = text_of(report.render("demo", run_results(), [], W))
    # la2 waits a second longer per round than la1: its new client is the straggler.
    assert "la1 local aggregator 8 1.50 s 1.00 s 0.05 s 0.45 s" in text
    assert "la2 local aggregator 8 2.50 s 1.00 s 0.05 s 1.45 s" in text
    assert "ga global aggregator 8 3.00 s 2.00 s 0.10 s 0.90 s" in text


def test_federated_evaluation_is_a_plot_and_a_fact():
    results = run_results(4)
    for line in results["ga"]:
        if line["global_round"] % 2 == 0:  # hfl_evaluate_every: 2
            line["federated"] = {"eval_acc": 0.2 * line["global_round"], "eval_loss": 1.0,
                                 "num-examples": 1347}
    assert report.federated_series(results["ga"]) == {
        "eval_acc": {2: 0.4, 4: 0.8}, "eval_loss": {2: 1.0, 4: 1.0}}
    page = report.render("demo", results, [], W)
    assert "<h2>Federated evaluation</h2>" in page
    assert "last federated evaluation eval_acc 80.0 %, eval_loss 1 (round 4)" in text_of(page)
    assert "2 40.0 % 1" in text_of(page)  # the table: round, eval_acc, eval_loss
    # learning, federated, cost, timing, data
    assert page.count('src="data:image/png;base64,') == 5
    plain = report.render("demo", run_results(4), [], W)
    assert "Federated evaluation" not in plain and "federated" not in plain


def test_a_long_federated_evaluation_shows_evenly_spaced_rows_with_the_last():
    table = text_of(report.federated_table({"accuracy": {r: 0.5 for r in range(1, 41)}}))
    assert table.startswith("One in 4 of the 40 evaluations, the last included.")
    rows = re.findall(r"(\d+) 50\.0 %", table)
    assert rows == ["4", "8", "12", "16", "20", "24", "28", "32", "36", "40"]


def test_report_of_a_run_without_orchestrator_or_results_still_renders():
    page = report.render("empty", {}, [], {}, budget=None)
    assert "<h1>HFL report: empty</h1>" in page and "<img" not in page


def test_load_jsonl_skips_a_torn_last_line(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text('{"global_round": 1}\n{"global_ro')
    assert report.load_jsonl(p) == [{"global_round": 1}]
    assert report.load_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="chromium is not installed")
def test_report_plots_load_in_headless_chromium(tmp_path):
    page = report.render("demo", run_results(), EVENTS, W, budget=5000)
    # A copy of the report with a probe that counts the images the browser decoded.
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-loaded',i.filter(x=>x.complete&&x.naturalWidth>0)"
             ".length+'/'+i.length)})</script>")
    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", probe + "</body>"))
    shot = tmp_path / "shot.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert 'data-loaded="5/5"' in dom
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,1400", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_a_pools_file_gives_each_virtual_client_its_own_lines(tmp_path):
    lines = [{"service": "c1-0", "global_round": 1}, {"service": "c1-1", "global_round": 1},
             {"service": "c1-0", "global_round": 2}]
    (tmp_path / "c1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "ga.jsonl").write_text(json.dumps({"global_round": 1}) + "\n")
    results = report.load_results(tmp_path)
    assert sorted(results) == ["c1-0", "c1-1", "ga"]
    assert [x["global_round"] for x in results["c1-0"]] == [1, 2]
