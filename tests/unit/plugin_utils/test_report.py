"""The HTML report: self-contained, and its plots really render in headless Chromium."""

import base64
import re
import shutil
import subprocess

import pytest
from ansible_collections.hfl.orchestration.plugins.plugin_utils import report

CHROMIUM = "/usr/bin/chromium"
MB = 1_000_000
W = {"c1": {"la1": 20, "la2": 60}, "c2": {"la1": 60, "la2": 20}, "c3": {"la1": 20, "la2": 60},
     "la1": {"ga": 100}, "la2": {"ga": 100}}


def run_results(rounds=8):
    ga = [{"service": "ga", "role": "global_aggregator", "global_round": r,
           "accuracy": 0.5 + 0.05 * r, "loss": 1.5 - 0.1 * r} for r in range(1, rounds + 1)]
    clients = {
        c: [{"service": c, "role": "client", "global_round": r, "local_round": 1,
             "histogram": hist, "links": {parent: {"sent_bytes": MB, "received_bytes": MB}}}
            for r in range(1, rounds + 1)]
        for c, parent, hist in (("c1", "la1", {"0": 30, "1": 30}),
                                ("c2", "la2", {"1": 10, "2": 50}), ("c3", "la1", [5, 5, 5]))
    }
    las = {la: [{"service": la, "role": "local_aggregator", "global_round": r,
                 "links": {"ga": {"sent_bytes": MB, "received_bytes": MB}}}
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
    assert len(imgs) == 4  # learning, cost, one change's topology, histograms
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in imgs)
    for text in ("final accuracy", "0.9", "budget spent", "join: c3", "5000"):
        assert text in page


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
    assert "last federated evaluation</th><td>{&#x27;eval_acc&#x27;: 0.8" in page
    assert page.count('src="data:image/png;base64,') == 4  # learning, federated, cost, data
    plain = report.render("demo", run_results(4), [], W)
    assert "Federated evaluation" not in plain and "federated" not in plain


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
    assert 'data-loaded="4/4"' in dom
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,1400", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
