# Copyright: hfl.orchestration developers; Apache-2.0
"""Communication cost: measured bytes on each link x that link's cost weight, plus change costs.

Unit: one cost unit = 1 MB (10**6 bytes) carried over a link of weight 1. A link is counted once,
at its child (a client's or an LA's uplink), from the byte counters the transport keeps, so the
figure is what really crossed the wire, retries and headers included. `hfl_budget` is in the same
unit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ansible_collections.hfl.orchestration.plugins.plugin_utils.topology import (
    DEFAULT_LINK_COST,
)

MB = 1_000_000


def weight(weights: dict[str, dict[str, float]], child: str, parent: str) -> float:
    """The cost weight of the link child -> parent. A link the inventory prices not (a client
    sent straight to the GA outside its cost map, when no LA is left) costs what the child's
    dearest known link does, so such a move never looks free."""
    row = weights.get(child) or {}
    if parent in row:
        return row[parent]
    return max(row.values(), default=DEFAULT_LINK_COST)


def link_bytes(counters: dict) -> int:
    """Bytes both ways on one link, from a {sent_bytes, received_bytes} mapping."""
    return int(counters.get("sent_bytes", 0)) + int(counters.get("received_bytes", 0))


@dataclass
class Ledger:
    """Cumulative cost of a pipeline: measured traffic plus booked change costs.

    Both ends of a link count its bytes. Each end's counter is stitched across restarts (a
    counter that went backwards started again at 0: what it had counted is kept), the link's
    bytes are the larger of its two ends' stitched totals, and only their growth is booked. So a
    client restarted between two observations loses nothing its LA counted, a service that
    answers again after a gap adds only new bytes, a dead service's last figure stays booked,
    and the total never goes down or counts a byte twice.
    """

    measured: float = 0.0
    booked: float = 0.0
    _ends: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    _links: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.measured + self.booked

    def _stitched(self, key: tuple[str, str, str], counters: dict | None) -> int:
        """Bytes this end has counted over all its restarts (0 if it never answered)."""
        last, lost = self._ends.get(key, (0, 0))
        if counters is not None:
            now = link_bytes(counters)
            if now < last:  # restarted since last seen
                lost += last
            last = now
            self._ends[key] = (last, lost)
        return last + lost

    def observe(self, statuses: dict[str, dict], weights: dict[str, dict[str, float]]) -> float:
        """Book link growth seen in `statuses`; return the cost added."""
        added = 0.0
        for child, parents in weights.items():
            at_child = (statuses.get(child) or {}).get("links") or {}
            for parent, w in parents.items():
                at_parent = (statuses.get(parent) or {}).get("links") or {}
                if parent not in at_child and child not in at_parent:
                    continue
                total = max(self._stitched(("child", child, parent), at_child.get(parent)),
                            self._stitched(("parent", child, parent), at_parent.get(child)))
                grown = total - self._links.get((child, parent), 0)
                if grown > 0:
                    self._links[(child, parent)] = total
                    added += grown / MB * w
        self.measured += added
        return added

    def book(self, amount: float) -> None:
        self.booked += amount


def round_cost(
    assignment: dict[str, str],
    weights: dict[str, dict[str, float]],
    ga: str,
    local_rounds: int,
    exchange_mb: float,
) -> float:
    """Expected cost of one global round under `assignment`.

    A client under an LA exchanges the model `local_rounds` times per global round, a client
    under the GA once, and every LA with at least one client once with the GA. `exchange_mb` is
    one model down plus one update up, in MB (calibrated from measurement by the orchestrator).
    """
    total = 0.0
    used: set[str] = set()
    for client, parent in assignment.items():
        times = 1 if parent == ga else local_rounds
        total += times * exchange_mb * weight(weights, client, parent)
        if parent != ga:
            used.add(parent)
    for la in used:
        total += exchange_mb * weight(weights, la, ga)
    return total


def change_cost(
    before: dict[str, str],
    after: dict[str, str],
    weights: dict[str, dict[str, float]],
    exchange_mb: float,
    ga: str | None = None,
) -> float:
    """Booked price of moving from `before` to `after`.

    Every client that moves or joins receives the current model over its new link once (half an
    exchange); an LA that starts being used does the same over its link to the GA. Booked when
    the change is made, because the check must be able to price a revert before making it. The
    GA never moves (client moves reload, never restart it), so it costs nothing here.
    """
    total = 0.0
    for client, parent in after.items():
        if before.get(client) != parent:
            total += exchange_mb / 2 * weight(weights, client, parent)
    if ga is not None:
        old_las = {p for p in before.values() if p != ga}
        for la in {p for p in after.values() if p != ga} - old_las:
            total += exchange_mb / 2 * weight(weights, la, ga)
    return total


def round_costs_from_results(
    lines: list[dict], weights: dict[str, dict[str, float]]
) -> dict[int, float]:
    """Measured cost per global round from results.jsonl lines (clients' and LAs' uplinks)."""
    per_round: dict[int, float] = defaultdict(float)
    for line in lines:
        child = line.get("service")
        for peer, counters in (line.get("links") or {}).items():
            w = weights.get(child, {}).get(peer)
            if w is not None and line.get("global_round") is not None:
                per_round[int(line["global_round"])] += link_bytes(counters) / MB * w
    return dict(sorted(per_round.items()))
