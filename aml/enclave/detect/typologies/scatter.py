"""Scatter-gather (one source -> many intermediaries -> one sink) and gather-scatter
(many sources -> one account -> many destinations)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aml.enclave.detect.typologies.base import (
    HOUR, PatternInstance, TypologyDetector, neighbours_within, share, star_groups,
    window_buckets,
)
from aml.enclave.detect.typologies.fan import HopLinks


class ScatterGatherDetector(TypologyDetector):
    """Money leaves one account to several intermediaries, each of which pays the same sink.

    Evidence: the sink receives roughly what the source sent (minus fees), each intermediary
    forwards after it received, and the whole thing fits in a short window. Ordinary traffic
    rarely has several distinct two-hop paths between the same two accounts within days.
    """

    name = "scatter_gather"

    def __init__(self, window_hours=96, min_intermediaries=3, min_edge_amount=500.0,
                 min_conservation=0.5, max_conservation=1.05, min_new_counterparty_share=0.5,
                 min_score=0.5, enabled=True):
        self.min_new_counterparty_share = min_new_counterparty_share
        self.window_hours = window_hours
        self.min_intermediaries = min_intermediaries
        self.min_edge_amount = min_edge_amount
        self.min_conservation = min_conservation
        self.max_conservation = max_conservation
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        w = int(self.window_hours * HOUR)
        k = self.min_intermediaries
        sig = graph.amount >= self.min_edge_amount
        # First hops leave a would-be source with >= k sizeable payments in the window, second
        # hops reach a would-be sink with >= k; intermediaries are never hubs. This keeps the
        # two-hop join small however busy the graph is.
        first = sig & ~graph.is_hub[graph.dst] & ~graph.is_hub[graph.src] & (
            neighbours_within(graph, graph.src, sig, w) >= k)
        second = sig & ~graph.is_hub[graph.src] & ~graph.is_hub[graph.dst] & (
            neighbours_within(graph, graph.dst, sig, w) >= k)
        e1 = np.flatnonzero(first)
        e2 = np.flatnonzero(second)
        if len(e1) == 0 or len(e2) == 0:
            return []
        # The two-hop join, only of hops that follow within the window: each first hop s -> m
        # at t1 finds the second hops out of m at t2 in (t1, t1 + w] by searchsorted over the
        # second hops sorted by (payer, time). Rows come in the order a join on m gives
        # (first hops in edge order, each's second hops in edge order).
        t_min = int(graph.t.min())
        e2 = e2[np.argsort(graph.src[e2], kind="stable")]
        key = (graph.src[e2].astype(np.int64) << 34) | (graph.t[e2] - t_min)
        base = (graph.dst[e1].astype(np.int64) << 34) | (graph.t[e1] - t_min)
        lo = np.searchsorted(key, base + 1, "left")
        n = np.searchsorted(key, base + w, "right") - lo
        first = np.repeat(e1, n)
        second = e2[np.repeat(lo, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)]
        j = pd.DataFrame({"e1": first, "s": graph.src[first], "m": graph.dst[first],
                          "t1": graph.t[first], "e2": second, "d": graph.dst[second],
                          "t2": graph.t[second]})
        j = j[(j.s != j.d).to_numpy()]
        if j.empty:
            return []
        out = []
        for bucket in window_buckets(j.t1.to_numpy(), w):
            j = j.assign(b=bucket)
            nm = j.groupby(["s", "d", "b"], sort=False)["m"].transform("nunique")
            for (s, d, _), g in j[nm.to_numpy() >= k].groupby(["s", "d", "b"], sort=False):
                inst = self._judge(graph, int(s), int(d), g)
                if inst is not None and inst.score >= self.min_score:
                    out.append(inst)
        return out

    def _judge(self, graph, s, d, g):
        e1 = np.unique(g.e1.to_numpy())
        e2 = np.unique(g.e2.to_numpy())
        sent, gathered = graph.amount[e1].sum(), graph.amount[e2].sum()
        ratio = float(gathered / sent) if sent > 0 else 0.0
        if not self.min_conservation <= ratio <= self.max_conservation:
            return None
        mids = int(g.m.nunique())
        new_share = share(graph.pair_first[np.concatenate([e1, e2])])
        if new_share < self.min_new_counterparty_share:
            return None  # suppliers paying their own suppliers: known relationships
        score = 0.5 + 0.2 * new_share + 0.2 * min(1.0, mids / (2 * self.min_intermediaries)) \
            + 0.1 * (ratio >= 0.8)
        return self._instance(np.concatenate([e1, e2]), score, center=s, sink=d, hops=2,
                              intermediaries=mids, conservation=ratio,
                              new_counterparty_share=new_share, amount=float(sent))


class GatherScatterDetector(TypologyDetector):
    """Several accounts pay one account, which soon pays most of it on to several others.

    Evidence: the outflow follows the inflow and roughly matches it (a merchant or utility
    collects without forwarding; a payroll payer pays out without a matching collection).
    """

    name = "gather_scatter"

    def __init__(self, window_hours=72, min_sources=3, min_destinations=3, max_degree=60,
                 min_edge_amount=500.0, min_conservation=0.5, max_conservation=1.1,
                 min_new_counterparty_share=0.5, min_linked_share=0.6, link_dwell_hours=24,
                 min_link_ratio=0.85, max_link_ratio=1.0, min_score=0.5, enabled=True):
        self.min_linked_share = min_linked_share
        self.link_dwell_hours = link_dwell_hours
        self.min_link_ratio = min_link_ratio
        self.max_link_ratio = max_link_ratio
        self.min_new_counterparty_share = min_new_counterparty_share
        self.window_hours = window_hours
        self.min_sources = min_sources
        self.min_destinations = min_destinations
        self.max_degree = max_degree
        self.min_edge_amount = min_edge_amount
        self.min_conservation = min_conservation
        self.max_conservation = max_conservation
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        w = int(self.window_hours * HOUR)
        # First payments between two accounts only: a business's regular customers and
        # suppliers repeat, a laundering hub's counterparties are new.
        sig = (graph.amount >= self.min_edge_amount) & ~graph.is_hub[graph.dst] \
            & graph.pair_first
        links = HopLinks(graph, int(self.link_dwell_hours * HOUR), self.min_link_ratio,
                         self.max_link_ratio, self.min_edge_amount)
        out = []
        groups = self._may_scatter(graph, star_groups(graph, graph.dst, graph.src, sig, w,
                                                      self.min_sources, self.max_degree), w)
        for e_in in groups:
            hub = int(graph.dst[e_in[0]])
            t0 = int(graph.t[e_in].min())
            e_out = graph.out_edges_between(hub, t0 + 1, t0 + w)
            e_out = e_out[(graph.amount[e_out] >= self.min_edge_amount)
                          & graph.pair_first[e_out]]
            # Outflow must be onward: after the first inflow, to accounts that did not pay in.
            e_out = e_out[~np.isin(graph.dst[e_out], graph.src[e_in])]
            # The gathered money leaves in the next payments out: take them in time order up
            # to max_conservation of the inflow (a busy hub's later payments are other business).
            inflow = graph.amount[e_in].sum()
            e_out = e_out[np.cumsum(graph.amount[e_out]) <= self.max_conservation * inflow]
            if len(np.unique(graph.dst[e_out])) < self.min_destinations:
                continue
            outflow = graph.amount[e_out].sum()
            ratio = float(outflow / inflow) if inflow > 0 else 0.0
            if not self.min_conservation <= ratio <= self.max_conservation:
                continue
            after = share(graph.t[e_out] >= np.median(graph.t[e_in]))
            if after < 0.8:
                continue
            edges = np.concatenate([e_in, e_out])
            new_share = share(graph.pair_first[edges])
            if new_share < self.min_new_counterparty_share:
                continue  # a business trading with its regular customers and suppliers
            # Cross-bank evidence: the receivers pass the money on, or the payers were handed
            # it just before (an escrow agent's or event organiser's counterparties do not).
            has_on, onward = links.onward(e_out)
            has_in, funding = links.funding(e_in)
            linked_share = max(HopLinks.linked_share(has_on, graph.dst[e_out]),
                               HopLinks.linked_share(has_in, graph.src[e_in]))
            if linked_share < self.min_linked_share:
                continue
            edges = np.concatenate([edges, onward, funding])
            score = 0.4 + 0.2 * after + 0.3 * (0.8 <= ratio <= 1.02) + 0.1 * linked_share
            if score >= self.min_score:
                out.append(self._instance(
                    edges, score, center=hub, hops=2, sources=int(len(np.unique(graph.src[e_in]))),
                    destinations=int(len(np.unique(graph.dst[e_out]))), conservation=ratio,
                    amount=float(inflow), new_counterparty_share=new_share,
                    linked_share=linked_share))
        return out

    def _may_scatter(self, graph, groups: list[np.ndarray], w: int) -> list[np.ndarray]:
        """The gathering groups whose hub makes at least min_destinations sizeable first
        payments within (t0, t0 + w] of the group's first inflow: what `detect` requires of
        any group (it keeps a subset of those payments), checked for all groups at once, so
        the per-group work runs only where a scatter can follow (a small share at scale)."""
        if not groups:
            return groups
        pay = np.flatnonzero((graph.amount >= self.min_edge_amount) & graph.pair_first)
        t_min = int(graph.t.min())
        # (payer, time) keys in sorted order: edges are in time order, so a stable sort by
        # payer gives it.
        pay = pay[np.argsort(graph.src[pay], kind="stable")]
        key = (graph.src[pay].astype(np.int64) << 34) | (graph.t[pay] - t_min)
        size = np.array([len(g) for g in groups])
        first = np.concatenate([[0], np.cumsum(size)[:-1]])
        every = np.concatenate(groups)
        hub = graph.dst[every[first]].astype(np.int64) << 34
        t0 = np.minimum.reduceat(graph.t[every], first) - t_min
        count = np.searchsorted(key, hub | (t0 + w), "right") \
            - np.searchsorted(key, hub | (t0 + 1), "left")
        return [g for g, ok in zip(groups, count >= self.min_destinations) if ok]
