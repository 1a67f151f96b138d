# Copyright: hfl.orchestration developers; Apache-2.0
"""Configuration models (who trains under whom) and reconfiguration triggers.

Pure Python (numpy only), no Ansible imports: the orchestrator loop and bench/decide.py call
these with a `Fleet`, the orchestrator's view of the live topology.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import numpy as np

# The configuration models by the names the inventory's hfl_config_model takes (topology
# validates them).
from ansible_collections.hfl.orchestration.plugins.plugin_utils.topology import CONFIG_MODELS

TIE = 1e-12  # per unit of link cost: breaks min_kld ties towards cheap links, nothing else


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
    `budget` is the inventory's `hfl_budget` as it is now: the loop's stop step reads it (an edit
    takes effect at the next iteration); no configuration model does.
    """

    ga: str
    las: list[str]
    clients: list[str]
    cost: dict[str, dict[str, float]]
    capacity: dict[str, int | None] = field(default_factory=dict)
    histograms: dict[str, list[int]] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)
    budget: float | None = None

    def pinned(self) -> dict[str, str]:
        """Pins that hold: the client is present and its LA is alive."""
        return {c: la for c, la in self.pins.items() if c in self.clients and la in self.las}


def assign(config_model: str, fleet: Fleet) -> dict[str, str]:
    """Return {client: parent} under configuration model `config_model`."""
    if config_model == "flat" or not fleet.las:
        return {c: fleet.ga for c in sorted(fleet.clients)}
    if config_model == "min_comm_cost":
        return min_comm_cost(fleet)
    if config_model == "min_kld":
        return min_kld(fleet)
    raise PolicyError(f"unknown configuration model {config_model!r}; expected one of "
                      f"{', '.join(CONFIG_MODELS)}")


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


def _cost_matrix(fleet: Fleet, clients: list[str]) -> np.ndarray:
    """cost[i, j] of client i under LA j; inf where the inventory gives no such link."""
    las = fleet.las
    pick = operator.itemgetter(*las) if len(las) > 1 else (lambda row: (row[las[0]],))
    rows = []
    for c in clients:
        row = fleet.cost.get(c, {})
        try:  # the usual case, every LA priced: one C-level lookup per client
            rows.append(pick(row))
        except KeyError:
            rows.append([row.get(la, math.inf) for la in las])
    return np.array(rows, dtype=float).reshape(len(clients), len(las))


def min_comm_cost(fleet: Fleet) -> dict[str, str]:
    """Each client under the cheapest LA with room.

    Clients are served in order of regret (second-cheapest minus cheapest LA): the client that
    would lose most by missing its best LA picks first, which beats plain input order when
    capacities bind. O(C * L log L), the sorting in numpy.
    """
    out = fleet.pinned()
    room = _rooms(fleet)
    for la in out.values():
        room[la] -= 1
    room_left = [room[la] for la in fleet.las]
    free = sorted(c for c in fleet.clients if c not in out)
    cost = _cost_matrix(fleet, free)
    ranked = np.argsort(cost, axis=1, kind="stable")
    best = np.take_along_axis(cost, ranked[:, :2], axis=1)
    regret = best[:, 1] - best[:, 0] if cost.shape[1] > 1 else np.full(len(free), math.inf)
    regret = np.nan_to_num(regret, nan=math.inf)  # inf - inf: no usable LA at all
    for i in sorted(range(len(free)), key=lambda i: (-regret[i], free[i])):
        j = next((j for j in ranked[i] if room_left[j] > 0 and math.isfinite(cost[i, j])), None)
        if j is None:
            out[free[i]] = _overflow(fleet, free[i])
            continue
        room_left[j] -= 1
        out[free[i]] = fleet.las[j]
    return dict(sorted(out.items()))


def _xlogx(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.maximum(x, 1e-300))  # 0 log 0 = 0


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

    KL per LA is kept incrementally: with n_k its class counts, N their sum,
    KL = S/N - ln N - T/N, S = sum n_k ln n_k, T = sum n_k ln p_k; a client changes S only in its
    own classes and T by a constant, so scoring it against every LA touches L x (its classes).
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
    sizes = mat.sum(axis=1)
    for i, c in enumerate(clients):
        if not hist[c]:
            mat[i] = p * max(1.0, sizes.mean())
    sizes = mat.sum(axis=1)
    log_p = np.log(np.maximum(p, 1e-300))
    t_client = mat @ log_p

    las = list(fleet.las)
    cap = _rooms(fleet)
    if all(math.isinf(v) for v in cap.values()):
        cap = dict.fromkeys(las, math.ceil(1.5 * len(clients) / len(las)))
    room = np.array([cap[la] for la in las], dtype=float)
    cost = _cost_matrix(fleet, clients)
    finite = np.isfinite(cost)
    counts = np.zeros((len(las), width))
    xlx = np.zeros((len(las), width))  # n ln n per LA and class
    n_tot, s_tot, t_tot, kl = np.zeros((4, len(las)))
    seeded = np.zeros(len(las), dtype=bool)

    def add(i: int, j: int) -> None:
        counts[j] += mat[i]
        xlx[j] = _xlogx(counts[j])
        n_tot[j] += sizes[i]
        s_tot[j] = xlx[j].sum()
        t_tot[j] += t_client[i]
        kl[j] = s_tot[j] / n_tot[j] - math.log(n_tot[j]) - t_tot[j] / n_tot[j]
        room[j] -= 1
        seeded[j] = True

    out = fleet.pinned()
    index = {c: i for i, c in enumerate(clients)}
    for c, la in out.items():
        add(index[c], las.index(la))
    order = sorted((i for i, c in enumerate(clients) if c not in out),
                   key=lambda i: (-sizes[i], clients[i]))
    for i in order:
        usable = (room > 0) & finite[i]
        if not usable.any():
            out[clients[i]] = _overflow(fleet, clients[i])
            continue
        if not seeded.all() and (usable & ~seeded).any():
            # Seed phase: one client per empty LA, on its cheapest link.
            j = int(np.argmin(np.where(usable & ~seeded, cost[i], math.inf)))
        else:
            sup = np.flatnonzero(mat[i])
            s_new = s_tot + (_xlogx(counts[:, sup] + mat[i, sup]) - xlx[:, sup]).sum(axis=1)
            n_new = n_tot + sizes[i]
            kl_new = (s_new - t_tot - t_client[i]) / n_new - np.log(n_new)
            # Ties (equal KL change, to float noise) go to the cheaper link.
            j = int(np.argmin(np.where(usable, kl_new - kl + TIE * cost[i], math.inf)))
        add(i, j)
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


# A read that timed out counts this part of a miss: the service took the connection and is
# busy (an LA with a thousand children mid-round answered /status after more than 3 s), while a
# dead one refuses it at once; a hung one is still found, after this many times the reads.
TIMEOUT_MISS = 1 / 3


def failed(statuses: dict[str, dict], misses: dict[str, float], threshold: int = 2
           ) -> list[str]:
    """Services whose /status was unreachable `threshold` observations in a row (a timed-out
    read counting TIMEOUT_MISS of one).

    `misses` is updated in place (the caller keeps it between iterations); one miss is not a
    failure because a service that is (re)starting does not answer yet.
    """
    for name, st in statuses.items():
        if st.get("reachable", True):
            misses[name] = 0
        else:
            misses[name] = misses.get(name, 0) + (TIMEOUT_MISS if st.get("timed_out") else 1)
    # Compared with a margin: three thirds add up to a hair under one.
    return sorted(n for n, k in misses.items() if k >= threshold - 1e-9 and n in statuses)


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


def stall_alternative(config_model: str) -> str:
    """The configuration model to try when learning stalls under `config_model`.

    A stall under cost-driven grouping is typically label skew inside the groups, which min_kld
    addresses; a stall under min_kld gets the cheaper grouping back (the check reverts it if that
    loses). Flat has no groups to change.
    """
    return {"min_comm_cost": "min_kld", "min_kld": "min_comm_cost"}.get(config_model, config_model)
