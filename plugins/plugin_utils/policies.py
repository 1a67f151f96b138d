# Copyright: hfl.orchestration developers; Apache-2.0
"""Configuration models (who trains under whom) and reconfiguration triggers.

Pure Python (numpy only), no Ansible imports: the orchestrator loop and bench/decide.py call
these with a `Fleet`, the orchestrator's view of the live topology.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MODELS = ("min_comm_cost", "min_kld", "flat")
OBJECTIVES = ("max_accuracy", "min_cost")


class PolicyError(ValueError):
    """No valid assignment exists (e.g. no aggregator can reach a client)."""


@dataclass
class Fleet:
    """What a configuration model needs to know, and nothing more.

    `cost[child][parent]` is the link cost weight (inventory `hfl_link_cost`); a missing pair means
    the child cannot use that parent. `capacity[la]` is the LA's `hfl_capacity` (None: unbounded).
    `histograms[client]` is the class histogram the client reports in /status (may be missing
    for a client that has not reported yet). `pins[client]` is the LA an inventory `hfl_parent`
    pins it to: the hierarchical models keep pinned clients there while that LA is in `las`.
    """

    ga: str
    las: list[str]
    clients: list[str]
    cost: dict[str, dict[str, float]]
    capacity: dict[str, int | None] = field(default_factory=dict)
    histograms: dict[str, list[int]] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)

    def pinned(self) -> dict[str, str]:
        """Pins that hold: the client is present and its LA is alive."""
        return {c: la for c, la in self.pins.items() if c in self.clients and la in self.las}


def assign(model: str, fleet: Fleet) -> dict[str, str]:
    """Return {client: parent} under configuration model `model`."""
    if model == "flat" or not fleet.las:
        return {c: fleet.ga for c in sorted(fleet.clients)}
    if model == "min_comm_cost":
        return min_comm_cost(fleet)
    if model == "min_kld":
        return min_kld(fleet)
    raise PolicyError(f"unknown configuration model {model!r}; expected one of {', '.join(MODELS)}")


def _rooms(fleet: Fleet) -> dict[str, float]:
    return {
        la: math.inf if fleet.capacity.get(la) is None else int(fleet.capacity[la])
        for la in fleet.las
    }


def _overflow(fleet: Fleet, client: str) -> str:
    """Where a client goes when every LA it can reach is full: straight to the GA, if it may."""
    if fleet.ga in fleet.cost.get(client, {}):
        return fleet.ga
    raise PolicyError(f"{client}: no local aggregator with room and no link cost to {fleet.ga}")


def min_comm_cost(fleet: Fleet) -> dict[str, str]:
    """Each client under the cheapest LA with room.

    Clients are served in order of regret (second-cheapest minus cheapest LA): the client that
    would lose most by missing its best LA picks first, which beats plain input order when
    capacities bind. O(C * L log L).
    """
    room = _rooms(fleet)
    out = fleet.pinned()
    for la in out.values():
        room[la] -= 1
    ranked: dict[str, list[tuple[float, str]]] = {}
    regret: dict[str, float] = {}
    free = [c for c in fleet.clients if c not in out]
    for c in free:
        opts = sorted((w, la) for la, w in fleet.cost.get(c, {}).items() if la in room)
        ranked[c] = opts
        regret[c] = (opts[1][0] - opts[0][0]) if len(opts) > 1 else math.inf
    for c in sorted(free, key=lambda c: (-regret[c], c)):
        la = next((la for _, la in ranked[c] if room[la] > 0), None)
        if la is None:
            out[c] = _overflow(fleet, c)
            continue
        room[la] -= 1
        out[c] = la
    return dict(sorted(out.items()))


def _kl_rows(counts: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """KL(q_row || p) for each row of class counts (0 for an empty row; 0*log 0 = 0)."""
    tot = counts.sum(axis=1, keepdims=True)
    q = np.divide(counts, tot, out=np.zeros_like(counts), where=tot > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - log_p), 0.0)
    return terms.sum(axis=1)


def min_kld(fleet: Fleet) -> dict[str, str]:
    """Group clients so each LA's label distribution is close to the global one.

    Greedy, O(C * L * K) for C clients, L LAs, K classes (never the exhaustive search the
    reference runs): clients go largest first; the first L seed one LA each (cheapest link first),
    so every LA trains; each later client joins the LA with room whose KL(LA || global) it lowers
    most (or raises least), ties to the cheaper link. Group sizes follow from that, bounded only by
    `hfl_capacity`; without capacities at most ceil(1.5 * C / L) per LA, so one LA cannot absorb
    everybody (the KL of one all-client group is trivially 0, and its round would be the slowest).
    A client with no histogram yet counts as globally distributed (it neither helps nor hurts).
    """
    clients = sorted(fleet.clients)
    if not clients:
        return {}
    hist = {c: fleet.histograms.get(c) for c in clients}
    width = max((len(h) for h in hist.values() if h), default=1)
    mat = np.zeros((len(clients), width))
    for i, c in enumerate(clients):
        if hist[c]:
            mat[i, : len(hist[c])] = hist[c]
    glob = mat.sum(axis=0)
    if glob.sum() == 0:
        glob = np.ones(width)
    p = glob / glob.sum()
    for i, c in enumerate(clients):
        if not hist[c]:
            mat[i] = p * max(1.0, mat.sum(axis=1).mean())
    with np.errstate(divide="ignore"):
        log_p = np.where(p > 0, np.log(p), 0.0)

    las = list(fleet.las)
    cap = _rooms(fleet)
    if all(math.isinf(v) for v in cap.values()):
        cap = dict.fromkeys(las, math.ceil(1.5 * len(clients) / len(las)))
    room = np.array([cap[la] for la in las], dtype=float)
    cost = np.array([[fleet.cost.get(c, {}).get(la, math.inf) for la in las] for c in clients])
    counts = np.zeros((len(las), width))
    seeded = np.zeros(len(las), dtype=bool)
    out = fleet.pinned()
    index = {c: i for i, c in enumerate(clients)}
    for c, la in out.items():
        j = las.index(la)
        counts[j] += mat[index[c]]
        room[j] -= 1
        seeded[j] = True
    kl = _kl_rows(counts, log_p)
    order = sorted((i for i, c in enumerate(clients) if c not in out),
                   key=lambda i: (-mat[i].sum(), clients[i]))
    for i in order:
        usable = (room > 0) & np.isfinite(cost[i])
        if not usable.any():
            out[clients[i]] = _overflow(fleet, clients[i])
            continue
        if not seeded.all() and (usable & ~seeded).any():
            # Seed phase: one client per empty LA, on its cheapest link.
            cand = np.where(usable & ~seeded, cost[i], math.inf)
            j = int(np.argmin(cand))
        else:
            new = _kl_rows(counts[usable] + mat[i], log_p)
            delta = np.full(len(las), math.inf)
            delta[usable] = np.round(new - kl[usable], 12)
            j = int(np.lexsort((cost[i], delta))[0])
        counts[j] += mat[i]
        kl[j] = _kl_rows(counts[j : j + 1], log_p)[0]
        room[j] -= 1
        seeded[j] = True
        out[clients[i]] = las[j]
    return dict(sorted(out.items()))


def mean_kld(fleet: Fleet, assignment: dict[str, str]) -> float:
    """Mean KL(group || global) over the aggregators used: how skewed the groups are."""
    hists = {c: np.asarray(h, float) for c, h in fleet.histograms.items() if h}
    if not hists:
        return 0.0
    width = max(len(h) for h in hists.values())
    pad = {c: np.pad(h, (0, width - len(h))) for c, h in hists.items()}
    glob = sum(pad.values())
    with np.errstate(divide="ignore"):
        log_p = np.where(glob > 0, np.log(glob / glob.sum()), 0.0)
    groups: dict[str, np.ndarray] = {}
    for c, parent in assignment.items():
        if c in pad:
            groups[parent] = groups.get(parent, np.zeros(width)) + pad[c]
    rows = np.array(list(groups.values()))
    return float(_kl_rows(rows, log_p).mean())


# --- triggers ------------------------------------------------------------------------------


def membership(before: set[str], after: set[str]) -> tuple[list[str], list[str]]:
    """Clients (or aggregators) that joined and left between two inventory reads."""
    return sorted(after - before), sorted(before - after)


def failed(statuses: dict[str, dict], misses: dict[str, int], threshold: int = 2) -> list[str]:
    """Services whose /status was unreachable `threshold` observations in a row.

    `misses` is updated in place (the caller keeps it between iterations); one miss is not a
    failure because a service that is (re)starting does not answer yet.
    """
    for name, st in statuses.items():
        misses[name] = misses.get(name, 0) + 1 if not st.get("reachable", True) else 0
    return sorted(n for n, k in misses.items() if k >= threshold and n in statuses)


def stall(
    accuracy: list[float], loss: list[float], window: int = 5, min_gain: float = 0.002
) -> str | None:
    """Learning stall over the last `window` global rounds, or None.

    Loss rising: every step in the window went up. Accuracy flat: the best accuracy of the window
    is not `min_gain` above the best before it. Both need a full window so an early noisy round
    does not fire.
    """
    steps = zip(loss[-window - 1 : -1], loss[-window:], strict=True)
    if len(loss) > window and all(b > a for a, b in steps):
        return f"loss rose for {window} global rounds ({loss[-window - 1]:.4g} -> {loss[-1]:.4g})"
    if len(accuracy) > window:
        before, recent = max(accuracy[:-window]), max(accuracy[-window:])
        if recent - before < min_gain:
            return (
                f"accuracy flat for {window} global rounds (best {recent:.4f}, "
                f"before {before:.4f})"
            )
    return None


def stall_alternative(model: str) -> str:
    """The configuration model to try when learning stalls under `model`.

    A stall under cost-driven grouping is typically label skew inside the groups, which min_kld
    addresses; a stall under min_kld gets the cheaper grouping back (the check reverts it if that
    loses). Flat has no groups to change.
    """
    return {"min_comm_cost": "min_kld", "min_kld": "min_comm_cost"}.get(model, model)
