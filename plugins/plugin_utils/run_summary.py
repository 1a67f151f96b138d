# Copyright: hfl.orchestration developers; Apache-2.0
"""What one run's results say per link, per client and per service, for the report.

Pure Python over every service's results.jsonl lines (fl_service.metrics.ResultsWriter: one line
per round, each with the bytes its links carried since the line before) and the orchestrator's
events. A service whose file was not collected still shows through its peers' lines: a client
through its parent's participants and link counters.
"""

from __future__ import annotations

from collections import defaultdict

GA, LA, CLIENT = "global_aggregator", "local_aggregator", "client"
ROLE_ORDER = {GA: 0, LA: 1, CLIENT: 2}


def roles(results: dict[str, list[dict]]) -> dict[str, str]:
    """service -> role, as its own lines say."""
    return {service: str(lines[0].get("role")) for service, lines in results.items() if lines}


def _ga_name(role_of: dict[str, str]) -> str | None:
    return next((s for s, r in role_of.items() if r == GA), None)


def is_training_line(line: dict, role: str | None) -> bool:
    """A line of a training round (not an evaluation, not a failed task)."""
    if role == CLIENT:
        return line.get("type", "train") == "train" and "error" not in line
    if role == LA:
        return line.get("phase") != "evaluate" and int(line.get("local_round") or 0) >= 1
    return role == GA


def _child_end(service, role, peer, weights, ga):
    """Whether ``service`` is the child on its link to ``peer``."""
    if peer in weights.get(service, {}):
        return True
    if service in weights.get(peer, {}):
        return False
    return role == CLIENT or (role == LA and peer == ga)


def link_bytes(results: dict[str, list[dict]], weights: dict[str, dict[str, float]]
               ) -> dict[tuple[str, str], dict[str, int]]:
    """(child, parent) -> {"up": bytes child to parent, "down": parent to child}, both ends'
    lines summed and the end that counted more kept (as cost.Ledger does)."""
    role_of = roles(results)
    ga = _ga_name(role_of)
    ends: dict[tuple[str, str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for service, lines in results.items():
        role = role_of.get(service)
        for line in lines:
            for peer, counters in (line.get("links") or {}).items():
                sent = int(counters.get("sent_bytes", 0))
                received = int(counters.get("received_bytes", 0))
                if _child_end(service, role, peer, weights, ga):
                    end = ends[(service, peer, True)]
                    end[0] += sent
                    end[1] += received
                else:
                    end = ends[(peer, service, False)]
                    end[0] += received
                    end[1] += sent
    links: dict[tuple[str, str], dict[str, int]] = {}
    for (child, parent, _at_child), (up, down) in sorted(ends.items()):
        best = links.get((child, parent))
        if best is None or up + down > best["up"] + best["down"]:
            links[(child, parent)] = {"up": up, "down": down}
    return dict(sorted(links.items()))


def clients(results: dict[str, list[dict]], events: list[dict]) -> list[dict]:
    """Every client that took part in a training round, joiners and leavers included, in
    name order: {name, rounds (sorted), parents ([parent, first round under it], in order),
    examples (its last training's, or None), collected (its own results were)}."""
    role_of = roles(results)
    plans = [e.get(k) or {} for e in events for k in ("plan_before", "plan_after")]
    ga = _ga_name(role_of)
    placed_parents = {p for plan in plans for p in plan.values() if p != ga}
    las = {s for s, r in role_of.items() if r == LA} | placed_parents
    under: dict[str, dict[int, str]] = defaultdict(dict)  # client -> {global round: parent}
    examples: dict[str, int] = {}
    for service, lines in results.items():
        role = role_of.get(service)
        for line in lines:
            if not is_training_line(line, role) or line.get("global_round") is None:
                continue
            rnd = int(line["global_round"])
            if role == CLIENT:
                under[service][rnd] = str(line.get("parent") or under[service].get(rnd, ""))
                examples[service] = int(line.get("num_examples") or 0)
            elif role in (LA, GA):
                for name in line.get("participants") or []:
                    if role == LA or (name not in las and role_of.get(name) != LA):
                        under[name].setdefault(rnd, service)
    out = []
    for name in sorted(under):
        rounds = sorted(under[name])
        parents: list[list] = []
        for rnd in rounds:
            parent = under[name][rnd]
            if parent and (not parents or parents[-1][0] != parent):
                parents.append([parent, rnd])
        out.append({"name": name, "rounds": rounds, "parents": parents,
                    "examples": examples.get(name), "collected": name in results})
    return out


def round_timing(results: dict[str, list[dict]]) -> list[dict]:
    """Per service with training rounds, GA first, then LAs, then clients: the mean per round
    of its wall time and of what it was made of, in seconds - training (a client's own; an
    aggregator's slowest child's), aggregation, and waiting (the rest: transfers, stragglers,
    serialization)."""
    role_of = roles(results)
    rows = []
    for service, lines in results.items():
        role = role_of.get(service)
        rounds = [line for line in lines if is_training_line(line, role)
                  and line.get("wall_time_s") is not None]
        if not rounds:
            continue
        n = len(rounds)
        wall = sum(float(line["wall_time_s"]) for line in rounds) / n
        training = sum(float(line.get("train_time_s") or 0) for line in rounds) / n
        aggregation = sum(float(line.get("aggregation_time_s") or 0) for line in rounds) / n
        rows.append({"service": service, "role": role, "rounds": n, "wall": wall,
                     "training": training, "aggregation": aggregation,
                     "waiting": max(0.0, wall - training - aggregation)})
    return sorted(rows, key=lambda r: (ROLE_ORDER.get(r["role"], 3), r["service"]))
