"""Random chains (multi-hop layering) and pass-through accounts."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aml.enclave.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, window_buckets

MAX_LINKS_PER_EDGE = 20  # successors examined per incoming payment (bounds hubs' cost)


def forward_links(graph, max_dwell_s: int, min_ratio: float, max_ratio: float,
                  min_amount: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (e, f): payment e into account v, then payment f out of v within max_dwell_s,
    to someone other than e's payer, carrying min_ratio..max_ratio of e's amount.

    Vectorised: one sort of out-edges by (account, time); each incoming payment finds its
    successors' index range with searchsorted, expanded with np.repeat.
    """
    # A payment to oneself (a company reinvesting) moves nothing between accounts: no hop.
    loop = graph.src == graph.dst
    sig = (graph.amount >= min_amount) & ~graph.is_hub[graph.src] & ~loop
    e_in = np.flatnonzero(sig & ~graph.is_hub[graph.dst])
    f_out = np.flatnonzero((graph.amount >= min_amount * min_ratio) & ~loop)
    if len(e_in) == 0 or len(f_out) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    t0 = graph.t.min()
    key = (graph.src[f_out].astype(np.int64) << 34) | (graph.t[f_out] - t0)
    order = np.argsort(key, kind="stable")
    key, f_out = key[order], f_out[order]
    base = (graph.dst[e_in].astype(np.int64) << 34) | (graph.t[e_in] - t0)
    lo = np.searchsorted(key, base + 1, "left")
    hi = np.searchsorted(key, base + max_dwell_s, "right")
    n = np.minimum(hi - lo, MAX_LINKS_PER_EDGE)
    e = np.repeat(e_in, n)
    start = np.repeat(lo, n)
    offset = np.arange(len(e)) - np.repeat(np.cumsum(n) - n, n)
    f = f_out[start + offset]
    ratio = graph.amount[f] / graph.amount[e]
    ok = (ratio >= min_ratio) & (ratio <= max_ratio) & (graph.dst[f] != graph.src[e])
    return e[ok], f[ok]


class RandomChainDetector(TypologyDetector):
    """A -> B -> C -> D ...: each account passes nearly the whole amount on within hours.

    Evidence: per-hop amount conservation (a fee, never more than received), short dwell at
    every account, at least min_hops hops. Ordinary money rarely moves on at the same size
    three times in a row. A chain that returns to its start is left to the cycle detector.
    """

    name = "random_chain"

    def __init__(self, min_hops=3, max_hops=12, max_dwell_hours=24, min_conservation=0.9,
                 max_conservation=1.0, min_amount=1000.0, max_component_edges=200,
                 min_new_counterparty_share=0.5, min_score=0.5, enabled=True):
        self.min_new_counterparty_share = min_new_counterparty_share
        self.min_hops = min_hops
        self.max_hops = max_hops
        self.max_dwell_hours = max_dwell_hours
        self.min_conservation = min_conservation
        self.max_conservation = max_conservation
        self.min_amount = min_amount
        self.max_component_edges = max_component_edges
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        e, f = forward_links(graph, int(self.max_dwell_hours * HOUR), self.min_conservation,
                             self.max_conservation, self.min_amount)
        if len(e) == 0:
            return []
        # Longest chain ending at each payment: relax along the links max_hops times.
        depth = np.zeros(len(graph), dtype=np.int64)
        for _ in range(self.max_hops):
            new = depth.copy()
            np.maximum.at(new, f, depth[e] + 1)
            if np.array_equal(new, depth):
                break
            depth = new
        nodes, codes = np.unique(np.concatenate([e, f]), return_inverse=True)
        m = len(e)
        adj = coo_matrix((np.ones(m), (codes[:m], codes[m:])), shape=(len(nodes),) * 2)
        _, comp = connected_components(adj, directed=False)
        hops = pd.Series(depth[nodes] + 1).groupby(comp).max()
        size = np.bincount(comp)
        out = []
        for c in hops.index[(hops >= self.min_hops).to_numpy()]:
            if size[c] > self.max_component_edges:
                continue
            edges = np.sort(nodes[comp == c])
            first, last = edges[0], edges[-1]
            if graph.src[first] == graph.dst[last]:
                continue  # closes a loop: a cycle
            amounts = graph.amount[edges]
            new_share = float(graph.pair_first[edges].mean())
            if new_share < self.min_new_counterparty_share:
                continue  # regular payees (rent, suppliers): money re-spent, not layered
            conservation = float(graph.amount[last] / graph.amount[first])
            dwell_h = float(np.diff(graph.t[edges]).max() / HOUR) if len(edges) > 1 else 0.0
            n_hops = int(hops[c])
            score = 0.5 + 0.2 * min(1.0, n_hops / (2 * self.min_hops)) \
                + 0.15 * min(1.0, conservation) + 0.15 * (1 - dwell_h / self.max_dwell_hours)
            if score >= self.min_score:
                out.append(self._instance(edges, score, hops=n_hops, conservation=conservation,
                                          max_dwell_hours=dwell_h,
                                          amount=float(amounts.max())))
        return out


class PassThroughDetector(TypologyDetector):
    """An account receives money and forwards most of it within hours to other accounts.

    Evidence: forwarded share (80-100 %), short dwell, onward recipients differ from payers,
    and a quiet account (few payments in the window): a busy business account always has
    money going in and out, a mule moves one sum at a time.
    """

    name = "pass_through"

    def __init__(self, max_dwell_hours=24, min_forward_share=0.75, max_forward_share=1.02,
                 min_amount=1000.0, min_edge_amount=200.0, max_payments=8,
                 max_account_degree=400, min_new_counterparty_share=0.8,
                 require_linked_hop=True, min_link_ratio=0.85, max_link_ratio=1.0,
                 min_score=0.5, enabled=True):
        self.min_link_ratio = min_link_ratio
        self.max_link_ratio = max_link_ratio
        self.require_linked_hop = require_linked_hop
        self.min_new_counterparty_share = min_new_counterparty_share
        self.max_dwell_hours = max_dwell_hours
        self.min_forward_share = min_forward_share
        self.max_forward_share = max_forward_share
        self.min_amount = min_amount
        self.min_edge_amount = min_edge_amount
        self.max_payments = max_payments
        self.max_account_degree = max_account_degree
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        # Buckets twice the dwell, so an episode of up to max_dwell lies wholly in one bucket
        # of one tiling; the dwell itself is checked per candidate.
        w = int(2 * self.max_dwell_hours * HOUR)
        # Sizeable first contacts only: salary, rent and bills between known parties are noise
        # around a mule's one-off transfer.
        sig = np.flatnonzero((graph.amount >= self.min_edge_amount) & graph.pair_first)
        # One row per (account, sizeable payment) with direction: +1 in, -1 out.
        node = np.concatenate([graph.dst[sig], graph.src[sig]])
        e = np.concatenate([sig, sig])
        inbound = np.concatenate([np.ones(len(sig), bool), np.zeros(len(sig), bool)])
        keep = (graph.degree[node] <= self.max_account_degree) & \
            (graph.src[e] != graph.dst[e])
        node, e, inbound = node[keep], e[keep], inbound[keep]
        # Payments whose payer had just received about as much (a hop before) or whose payee
        # passes it on (a hop after): a mule's money comes from and goes to other hops, an
        # ordinary remittance stops with its recipient. Only the joint graph shows both sides.
        dwell = int(self.max_dwell_hours * HOUR)
        # A linked hop passes on nearly all of it (a fee comes off); the mule itself may keep
        # a bigger cut, so its own forwarded share has a wider band.
        before, after = forward_links(graph, dwell, self.min_link_ratio,
                                      self.max_link_ratio, self.min_edge_amount)
        self._fed = np.zeros(len(graph), bool)
        self._fed[after] = True
        self._moved_on = np.zeros(len(graph), bool)
        self._moved_on[before] = True
        # The linked hops themselves join the instance: (hop before, payment into the mule)
        # and (payment out of the mule, hop after), looked up by sorted position.
        by_after = np.argsort(after, kind="stable")
        by_before = np.argsort(before, kind="stable")
        self._links = (after[by_after], before[by_after], before[by_before], after[by_before])
        out = []
        seen = set()
        amount, t = graph.amount[e], graph.t[e]
        for bucket in window_buckets(t, w):
            df = pd.DataFrame({"v": node, "b": bucket, "e": e, "in": inbound, "a": amount, "t": t})
            df["a_in"] = np.where(df["in"], df.a, 0.0)
            df["a_out"] = np.where(df["in"], 0.0, df.a)
            grouped = df.groupby(["v", "b"], sort=False)
            agg = grouped.agg(
                a_in=("a_in", "sum"), a_out=("a_out", "sum"), n_in=("in", "sum"),
                n=("e", "size"))
            agg["n_out"] = agg.n - agg.n_in
            ratio = agg.a_out / agg.a_in.where(agg.a_in > 0)
            is_cand = ((agg.a_in >= self.min_amount) & (agg.n_out > 0)
                       & (ratio >= self.min_forward_share) & (ratio <= self.max_forward_share)
                       & (agg.n <= self.max_payments)).to_numpy()
            if not is_cand.any():
                continue
            # Candidate (account, bucket) groups in order of first appearance, each group's
            # rows in their original order (as a sort=False group-by hands them out).
            rank = np.full(len(agg), -1, dtype=np.int64)
            rank[is_cand] = np.arange(int(is_cand.sum()))
            row_rank = rank[grouped.ngroup().to_numpy()]
            rows = np.flatnonzero(row_rank >= 0)
            rows = rows[np.argsort(row_rank[rows], kind="stable")]
            bounds = np.flatnonzero(np.diff(row_rank[rows])) + 1
            plausible = self._plausible(rows, bounds, inbound, amount, t)
            for r, ok in zip(np.split(rows, bounds), plausible):
                if not ok:
                    continue
                inst = self._judge(graph, int(node[r[0]]), e[r], inbound[r], amount[r], t[r])
                if inst is not None and tuple(inst.edge_idx) not in seen:
                    seen.add(tuple(inst.edge_idx))
                    out.append(inst)
        return out

    def _plausible(self, rows, bounds, inbound, amount, t) -> np.ndarray:
        """Per candidate group (rows split at bounds): could _judge accept it? The forwarded
        share and the dwell, vectorised with a little slack, so that only groups _judge would
        reject anyway are skipped (it decides exactly, group by group)."""
        starts = np.concatenate([[0], bounds])
        group = np.repeat(np.arange(len(starts)), np.diff(np.concatenate([starts, [len(rows)]])))
        t_r, in_r, a_r = t[rows], inbound[rows], amount[rows]
        big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        first_in = np.minimum.reduceat(np.where(in_r, t_r, big), starts)
        later_out = ~in_r & (t_r > first_in[group])
        n = len(starts)
        inflow = np.bincount(group, weights=np.where(in_r, a_r, 0.0), minlength=n)
        outflow = np.bincount(group, weights=np.where(later_out, a_r, 0.0), minlength=n)
        has_out = np.bincount(group, weights=later_out, minlength=n) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            share = outflow / inflow
        dwell = np.minimum.reduceat(np.where(later_out, t_r, big), starts) \
            - np.maximum.reduceat(np.where(in_r, t_r, small), starts)
        return has_out & (share >= self.min_forward_share * (1 - 1e-9)) \
            & (share <= self.max_forward_share * (1 + 1e-9)) \
            & (dwell >= 0) & (dwell <= self.max_dwell_hours * HOUR + 1)

    def _linked_hops(self, ins: np.ndarray, outs: np.ndarray) -> np.ndarray:
        """The payments that fed the mule's payers and that its payees passed on."""
        f_sorted, e_by_f, e_sorted, f_by_e = self._links
        found = []
        for keys, vals, q in ((f_sorted, e_by_f, ins), (e_sorted, f_by_e, outs)):
            lo, hi = np.searchsorted(keys, q, "left"), np.searchsorted(keys, q, "right")
            found += [vals[a:b][:MAX_LINKS_PER_EDGE] for a, b in zip(lo, hi)]
        return np.concatenate(found) if found else np.empty(0, np.int64)

    def _judge(self, graph, v, e, inbound, a, t):
        """One (account, bucket) candidate: its sizeable payments `e` with direction, amount
        and time (tiny arrays, in the order the group-by saw them)."""
        ins, outs = e[inbound], e[~inbound]
        a_in, t_in = a[inbound], t[inbound]
        later = t[~inbound] > t_in.min()  # forwarding follows the arrival
        outs, a_out, t_out = outs[later], a[~inbound][later], t[~inbound][later]
        if len(outs) == 0:
            return None
        inflow = float(a_in.sum())
        share_fwd = float(a_out.sum() / inflow)
        if not self.min_forward_share <= share_fwd <= self.max_forward_share:
            return None
        payers = set(graph.src[ins].tolist())
        if payers & set(graph.dst[outs].tolist()):
            return None  # money going back to a payer is a refund, not a pass-through
        dwell_h = float((t_out.min() - t_in.max()) / HOUR)
        if dwell_h < 0 or dwell_h > self.max_dwell_hours:
            return None  # paying out before the money arrived (ordinary turnover), or too late
        edges = np.concatenate([ins, outs])
        linked = bool(self._fed[ins].any() or self._moved_on[outs].any())
        if self.require_linked_hop and not linked:
            return None
        edges = np.concatenate([edges, self._linked_hops(ins, outs)])
        new_share = float(graph.pair_first[edges].mean())
        if new_share < self.min_new_counterparty_share:
            return None  # regular payers and payees: a business, not a mule
        score = 0.6 + 0.2 * (share_fwd >= 0.85) + 0.2 * (1 - max(dwell_h, 0) / self.max_dwell_hours)
        if score < self.min_score:
            return None
        return self._instance(edges, score, center=v, new_counterparty_share=new_share, hops=2, inflow=inflow, forward_share=share_fwd,
                              dwell_hours=dwell_h, amount=inflow)
