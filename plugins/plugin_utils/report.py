# Copyright: hfl.orchestration developers; Apache-2.0
"""A self-contained HTML report of one pipeline run: plots as embedded PNGs, no network needed.

Inputs are what the controller holds after role fl_metrics ran: every service's results.jsonl
lines, the orchestrator's events.jsonl (may be empty), the link cost weights and the budget.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the controller may have no display
import matplotlib.pyplot as plt  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.plugin_utils import cost  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import (  # noqa: E402
    histogram_list,
)

CHANGES = ("apply", "revert")


def load_jsonl(path: str | Path) -> list[dict]:
    """JSON lines of a file; a missing file or a torn last line (still being written) is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _mark_changes(ax, changes: list[dict]) -> None:
    for ev in changes:
        color = "tab:red" if ev["action"] == "revert" else "tab:purple"
        ax.axvline(ev["global_round"], color=color, ls="--", lw=1)
        ax.annotate(ev["action"], (ev["global_round"], 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=7, color=color)


def _ga_lines(results: dict[str, list[dict]]) -> list[dict]:
    return [line for lines in results.values() for line in lines
            if line.get("role") == "global_aggregator"]


def _ga_series(results: dict[str, list[dict]]) -> list[dict]:
    ga = _ga_lines(results)
    by_round = {int(line["global_round"]): line for line in ga if line.get("global_round")}
    return [by_round[r] for r in sorted(by_round)]


def plot_learning(ga: list[dict], changes: list[dict]) -> str:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    rounds = [line["global_round"] for line in ga]
    a1.plot(rounds, [line.get("accuracy") for line in ga], marker="o", ms=3)
    a1.set(title="Test accuracy per global round", xlabel="global round", ylabel="accuracy")
    a2.plot(rounds, [line.get("loss") for line in ga], marker="o", ms=3, color="tab:orange")
    a2.set(title="Test loss per global round", xlabel="global round", ylabel="loss")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        _mark_changes(ax, changes)
    return _png(fig)


def federated_series(ga: list[dict]) -> dict[str, dict[int, float]]:
    """The GA's federated evaluation (its lines' ``federated`` metrics, aggregated over the
    clients' own data): metric -> {global round: value}; ``num-examples`` is a weight, not a
    figure, and is left out."""
    out: dict[str, dict[int, float]] = {}
    for line in ga:
        for name, value in sorted((line.get("federated") or {}).items()):
            if name != "num-examples" and isinstance(value, int | float) \
                    and not isinstance(value, bool):
                out.setdefault(name, {})[int(line["global_round"])] = float(value)
    return out


def plot_federated(series: dict[str, dict[int, float]]) -> str:
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for name, points in series.items():
        ax.plot(list(points), list(points.values()), marker="o", ms=3, label=name)
    ax.set(title="Federated evaluation (clients' own data) per global round",
           xlabel="global round", ylabel="value")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def cumulative_cost(results: dict[str, list[dict]], weights: dict, events: list[dict]
                    ) -> dict[int, float]:
    """Measured cost per global round, accumulated, with booked change costs at their round."""
    lines = [line for lines in results.values() for line in lines]
    per_round = cost.round_costs_from_results(lines, weights)
    for ev in events:
        if ev.get("change_cost"):
            r = int(ev.get("global_round") or 0)
            per_round[r] = per_round.get(r, 0.0) + float(ev["change_cost"])
    total, out = 0.0, {}
    for r in sorted(per_round):
        total += per_round[r]
        out[r] = total
    return out


def plot_cost(cum: dict[int, float], budget: float | None, changes: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(list(cum), list(cum.values()), marker="o", ms=3, label="cumulative cost")
    if budget is not None:
        ax.axhline(budget, color="tab:red", lw=1.5, label=f"budget {budget:g}")
    ax.set(title="Cumulative communication cost (MB x link weight)", xlabel="global round",
           ylabel="cost")
    ax.grid(alpha=0.3)
    _mark_changes(ax, changes)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _draw_tree(ax, assignment: dict[str, str], ga: str, title: str) -> None:
    """GA on top, LAs in the middle, clients at the bottom (a flat client hangs off the GA)."""
    las = sorted({p for p in assignment.values() if p != ga})
    clients = sorted(assignment, key=lambda c: (assignment[c] == ga, assignment[c], c))
    pos = {ga: (0.5, 1.0)}
    for depth, names in ((1, las), (2, clients)):
        for i, n in enumerate(names):
            pos[n] = ((i + 1) / (len(names) + 1), 1 - depth / 2)
    for la in las:
        ax.plot(*zip(pos[la], pos[ga], strict=True), color="black", lw=1.5)
    for child, parent in assignment.items():
        ax.plot(*zip(pos[child], pos[parent], strict=True), color="grey", lw=1)
    for n, (x, y) in pos.items():
        ax.annotate(n, (x, y), ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "tab:blue"})
    ax.set(xlim=(0, 1), ylim=(-0.2, 1.2), title=title)
    ax.axis("off")


def plot_change(ev: dict, ga: str) -> str:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 2.8))
    _draw_tree(a1, ev.get("plan_before") or {}, ga, "before")
    _draw_tree(a2, ev.get("plan_after") or {}, ga, "after")
    return _png(fig)


def client_histograms(results: dict[str, list[dict]]) -> dict[str, list[int]]:
    out = {}
    for name, lines in sorted(results.items()):
        for line in reversed(lines):
            h = line.get("histogram")
            if h and str(line.get("role")) == "client":
                out[name] = histogram_list(h)
                break
    return out


def plot_histograms(hists: dict[str, list[int]]) -> str:
    n = len(hists)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False)
    for ax, (name, h) in zip(axes.flat, hists.items(), strict=False):
        ax.bar(range(len(h)), h, color="tab:green")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Class histogram per client", fontsize=9, y=1.03)
    return _png(fig)


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render(pipeline: str, results: dict[str, list[dict]], events: list[dict],
           weights: dict[str, dict[str, float]], budget: float | None = None) -> str:
    """The report as one HTML string."""
    ga = _ga_series(results)
    ga_name = next((line.get("service") for line in _ga_lines(results)), "ga")
    changes = [e for e in events if e.get("action") in CHANGES]
    cum = cumulative_cost(results, weights, events)
    last = ga[-1] if ga else {}
    stop = next((e["reason"] for e in reversed(events) if e.get("action") == "stop"), None)
    federated = federated_series(ga)
    last_federated = {name: _round(points[max(points)]) for name, points in federated.items()}
    facts = [("pipeline", pipeline), ("global rounds", last.get("global_round", 0)),
             ("final accuracy", last.get("accuracy")), ("final loss", last.get("loss")),
             *([("last federated evaluation", last_federated)] if federated else []),
             ("total cost", round(max(cum.values()), 3) if cum else 0), ("budget", budget),
             ("reconfigurations", len(changes)), ("orchestrator stop", stop)]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>HFL report: {html.escape(pipeline)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1000px}"
        "img.plot{max-width:100%;display:block;margin:.5em 0}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:left;vertical-align:top}</style></head><body>",
        f"<h1>HFL report: {html.escape(pipeline)}</h1><table>",
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts),
        "</table>",
    ]
    if ga:
        parts += ["<h2>Learning</h2>", _img(plot_learning(ga, changes), "accuracy and loss")]
    if federated:
        parts += ["<h2>Federated evaluation</h2>",
                  _img(plot_federated(federated), "federated evaluation metrics")]
    if cum:
        parts += ["<h2>Cost</h2>", _img(plot_cost(cum, budget, changes), "cumulative cost")]
    if changes:
        parts.append("<h2>Reconfigurations</h2>")
        for ev in changes:
            parts.append(f"<h3>global round {ev.get('global_round')}: {html.escape(ev['action'])}"
                         f" — {html.escape(str(ev.get('trigger')))}</h3>"
                         f"<p>{html.escape(str(ev.get('reason')))}</p>")
            parts.append(_img(plot_change(ev, ga_name), "topology before and after"))
    hists = client_histograms(results)
    if hists:
        parts += ["<h2>Data</h2>", _img(plot_histograms(hists), "client class histograms")]
    if events:
        parts.append("<h2>Orchestrator events</h2><table><tr><th>iteration</th><th>round</th>"
                     "<th>trigger</th><th>action</th><th>reason</th><th>cost</th></tr>")
        for e in events:
            c = e.get("cost") or {}
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                e.get("iteration"), e.get("global_round"), e.get("trigger"), e.get("action"),
                e.get("reason"), _round(c.get("total")))) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _round(v):
    return round(v, 3) if isinstance(v, float) else v
