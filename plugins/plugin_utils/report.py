# Copyright: hfl.orchestration developers; Apache-2.0
"""A self-contained HTML report of one pipeline run: plots as embedded PNGs, no network needed.

Inputs are what the controller holds after role fl_metrics ran: every service's results.jsonl
lines, the orchestrator's events.jsonl (may be empty), the link cost weights and the budget.
Every figure is formatted for a reader (accuracy in %, bytes in MB, seconds); what is unknown
shows as a dash, never as None.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the controller may have no display
import matplotlib.pyplot as plt  # noqa: E402
from ansible_collections.hfl.orchestration.plugins.plugin_utils import (  # noqa: E402
    cost,
    run_summary,
)
from ansible_collections.hfl.orchestration.plugins.plugin_utils.observation import (  # noqa: E402
    histogram_list,
)

CHANGES = ("apply", "revert")
DASH = "\u2014"
MB = cost.MB
TIMING_PARTS = (("training", "tab:green"), ("aggregation", "tab:blue"), ("waiting", "tab:grey"))


def fmt_pct(value) -> str:
    return DASH if not _is_number(value) else f"{100 * value:.1f} %"


def fmt_num(value, digits: int = 4) -> str:
    """An int as is, a float to ``digits`` significant digits (no exponent below 10**6)."""
    if not _is_number(value):
        return DASH if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"


def fmt_mb(nbytes) -> str:
    return DASH if not _is_number(nbytes) else f"{nbytes / MB:,.2f} MB"


def fmt_s(seconds) -> str:
    return DASH if not _is_number(seconds) else f"{seconds:,.2f} s"


def fmt_metric(name: str, value) -> str:
    """A named metric: an accuracy in %, anything else as a number."""
    return fmt_pct(value) if "acc" in name.lower() else fmt_num(value)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and not math.isnan(value))


def load_results(folder: str | Path) -> dict[str, list[dict]]:
    """service -> its results lines, from the ``*.jsonl`` files of ``folder`` (one per placed
    service): a pool's file holds every one of its virtual clients' lines, each under its own
    ``service`` name."""
    out: dict[str, list[dict]] = {}
    for f in sorted(Path(folder).glob("*.jsonl")):
        for line in load_jsonl(f):
            out.setdefault(str(line.get("service") or f.stem), []).append(line)
    return out


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
           ylabel="cost units")
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
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), squeeze=False,
                             gridspec_kw={"hspace": 0.45})
    for ax, (name, h) in zip(axes.flat, hists.items(), strict=False):
        ax.bar(range(len(h)), h, color="tab:green")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Class histogram per client", fontsize=9, y=1.03)
    return _png(fig)


def plot_timing(rows: list[dict]) -> str:
    """Mean round time of each service as stacked bars: training, aggregation, waiting."""
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.32 * len(rows)))
    names = [r["service"] for r in rows][::-1]
    left = [0.0] * len(rows)
    for part, color in TIMING_PARTS:
        values = [r[part] for r in rows][::-1]
        ax.barh(names, values, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set(title="Mean time per round of each service", xlabel="seconds")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _img(b64: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


class _Html(str):
    """Table cell content that is markup already (not escaped)."""


def _cell(value, numeric: bool) -> str:
    text = value if isinstance(value, _Html) else html.escape(
        DASH if value is None else str(value))
    return f"<td class=num>{text}</td>" if numeric else f"<td>{text}</td>"


def _table(head: list[str], rows: list[list], numeric: range | set[int] = range(1, 99)) -> str:
    """An HTML table; the ``numeric`` columns are right-aligned figures."""
    cols = "".join(f"<th{' class=num' if i in numeric else ''}>{html.escape(h)}</th>"
                   for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(_cell(v, i in numeric) for i, v in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{cols}</tr>{body}</table>"


def _bar(share: float) -> _Html:
    return _Html(f'<div class="bar" style="width:{max(0.0, min(1.0, share)) * 100:.1f}%">'
                 "</div>")


def links_table(links: dict, weights: dict[str, dict[str, float]]) -> str:
    """Each link's bytes up and down, total, weight and cost, with a bar of its share."""
    largest = max((v["up"] + v["down"] for v in links.values()), default=0) or 1
    rows = []
    for (child, parent), v in sorted(links.items(), key=lambda kv: -(kv[1]["up"] + kv[1]["down"])):
        total = v["up"] + v["down"]
        weight = weights.get(child, {}).get(parent)
        rows.append([f"{child} \u2192 {parent}", fmt_mb(v["up"]), fmt_mb(v["down"]),
                     fmt_mb(total), fmt_num(weight),
                     DASH if weight is None else f"{total / MB * weight:,.2f}",
                     _bar(total / largest)])
    return _table(["link (child \u2192 parent)", "up", "down", "total", "weight", "cost units",
                   "share"], rows)


def timing_table(rows: list[dict]) -> str:
    return _table(["service", "role", "rounds", "wall", "training", "aggregation", "waiting"],
                  [[r["service"], r["role"].replace("_", " "), r["rounds"], fmt_s(r["wall"]),
                    fmt_s(r["training"]), fmt_s(r["aggregation"]), fmt_s(r["waiting"])]
                   for r in rows], numeric=range(2, 7))


def clients_table(rows: list[dict], first_round: int | None,
                  links: dict, histograms: dict[str, list[int]]) -> str:
    out = []
    for c in rows:
        joined = c["rounds"][0]
        parents = ", ".join(p if i == 0 else f"{p} from round {r}"
                            for i, (p, r) in enumerate(c["parents"])) or DASH
        uplink = sum(v["up"] + v["down"] for (child, _parent), v in links.items()
                     if child == c["name"])
        notes = []
        if first_round is not None and joined > first_round:
            notes.append(f"first in round {joined}")
        if not c["collected"]:
            notes.append("its results were not collected")
        elif c["name"] not in histograms:
            notes.append("no class histogram")
        out.append([c["name"], parents, len(c["rounds"]), f"{joined}\u2013{c['rounds'][-1]}",
                    fmt_num(c["examples"]), fmt_mb(uplink), "; ".join(notes) or DASH])
    return _table(["client", "parent", "rounds", "from\u2013to", "examples", "link bytes",
                   "note"], out, numeric={2, 4, 5})


FEDERATED_ROWS = 12  # a long run's table shows evenly spaced evaluations, the last included


def federated_table(series: dict[str, dict[int, float]]) -> str:
    rounds = sorted({r for points in series.values() for r in points})
    step = -(-len(rounds) // FEDERATED_ROWS)
    shown = sorted(set(rounds[::-1][::step]))
    note = "" if step == 1 else (f"<p>One in {step} of the {len(rounds)} evaluations, the "
                                 "last included.</p>")
    return note + _table(["global round", *series],
                         [[r, *(fmt_metric(name, points.get(r))
                                for name, points in series.items())] for r in shown])


def render(pipeline: str, results: dict[str, list[dict]], events: list[dict],
           weights: dict[str, dict[str, float]], budget: float | None = None) -> str:
    """The report as one HTML string."""
    ga = _ga_series(results)
    ga_name = next((line.get("service") for line in _ga_lines(results)), "ga")
    changes = [e for e in events if e.get("action") in CHANGES]
    cum = cumulative_cost(results, weights, events)
    last = ga[-1] if ga else {}
    stop = next((e.get("reason") for e in reversed(events) if e.get("action") == "stop"), None)
    federated = federated_series(ga)
    links = run_summary.link_bytes(results, weights)
    timing = run_summary.round_timing(results)
    who = run_summary.clients(results, events)
    hists = client_histograms(results)
    first_round = int(ga[0]["global_round"]) if ga else None
    # A client that joined, or was late for the first rounds.
    later = [f"{c['name']} first in round {c['rounds'][0]}" for c in who
             if first_round is not None and c["rounds"][0] > first_round]
    facts = [
        ("pipeline", pipeline),
        ("global rounds", fmt_num(last.get("global_round", 0))),
        ("final accuracy", fmt_pct(last.get("accuracy"))),
        ("final loss", fmt_num(last.get("loss"))),
    ]
    if federated:
        last_round = max(r for points in federated.values() for r in points)
        facts.append(("last federated evaluation", ", ".join(
            f"{name} {fmt_metric(name, points[max(points)])}"
            for name, points in federated.items()) + f" (round {last_round})"))
    facts += [
        ("clients", f"{len(who)}" + (f" ({', '.join(later)})" if later else "")),
        ("bytes on all links", fmt_mb(sum(v["up"] + v["down"] for v in links.values()))),
        ("total cost", f"{max(cum.values()) if cum else 0:,.2f} units (1 unit = 1 MB over a "
                       f"link of weight 1)"),
        ("budget", f"{budget:,.2f} units" if budget is not None else "none (hfl_budget unset)"),
        ("reconfigurations", str(len(changes))),
        ("orchestrator", "not run" if not events else (f"stopped: {stop}" if stop else DASH)),
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>HFL report: {html.escape(pipeline)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1000px}"
        "img.plot{max-width:100%;display:block;margin:.5em 0}"
        "table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:left;vertical-align:top}.num{text-align:right}"
        ".bar{background:#4c78a8;height:10px;min-width:1px}td:last-child{min-width:120px}"
        "</style></head><body>",
        f"<h1>HFL report: {html.escape(pipeline)}</h1><table>",
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts),
        "</table>",
    ]
    if ga:
        parts += ["<h2>Learning</h2>", _img(plot_learning(ga, changes), "accuracy and loss")]
    if federated:
        parts += ["<h2>Federated evaluation</h2>",
                  _img(plot_federated(federated), "federated evaluation metrics"),
                  federated_table(federated)]
    if cum:
        parts += ["<h2>Cost</h2>", _img(plot_cost(cum, budget, changes), "cumulative cost")]
    if links:
        parts += ["<h2>Links</h2><p>Bytes each link carried, as the end that counted more "
                  "saw them.</p>", links_table(links, weights)]
    if timing:
        parts += ["<h2>Round timing</h2><p>Mean per round. Training: a client's own, an "
                  "aggregator's slowest child's; waiting: the rest of the round (transfers, "
                  "stragglers).</p>", _img(plot_timing(timing), "round timing per service"),
                  timing_table(timing)]
    if changes:
        parts.append("<h2>Reconfigurations</h2>")
        for ev in changes:
            parts.append(f"<h3>global round {fmt_num(ev.get('global_round'))}: "
                         f"{html.escape(ev['action'])} \u2014 "
                         f"{html.escape(str(ev.get('trigger') or DASH))}</h3>"
                         f"<p>{html.escape(str(ev.get('reason') or DASH))}</p>")
            parts.append(_img(plot_change(ev, ga_name), "topology before and after"))
    if who:
        parts += ["<h2>Clients</h2><p>Every client that took part in a training round.</p>",
                  clients_table(who, first_round, links, hists)]
    if hists:
        parts += ["<h2>Data</h2>", _img(plot_histograms(hists), "client class histograms")]
    if events:
        parts.append("<h2>Orchestrator events</h2>")
        parts.append(_table(["iteration", "round", "trigger", "action", "reason", "cost units"],
                            [[fmt_num(e.get("iteration")), fmt_num(e.get("global_round")),
                              e.get("trigger") or DASH, e.get("action") or DASH,
                              e.get("reason") or DASH,
                              fmt_num((e.get("cost") or {}).get("total"))] for e in events],
                            numeric={0, 1, 5}))
    parts.append("</body></html>")
    return "\n".join(parts)
