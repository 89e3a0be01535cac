"""Fan-out (one payer, many new payees in a burst) and fan-in (many new payers, one payee)."""

from __future__ import annotations

import numpy as np

from aml.enclave.detect.typologies.base import (
    HOUR, PatternInstance, TypologyDetector, neighbours_within, share, star_groups,
)
from aml.enclave.detect.typologies.chain import forward_links


class HopLinks:
    """For any payment: is it passed on (a payment out of its payee within `dwell_s`,
    carrying min_ratio..max_ratio of it, to someone else) or funded (its payer received
    about as much within `dwell_s` before)? One vectorised `forward_links` join per graph.

    This is the cross-bank evidence of the star shapes: an ordinary star (a renovation paid
    to several firms, rent from several tenants) ends with its leaves; a laundering star's
    leaves are mules who pass the money on, or were handed it just before. The leaves
    usually bank elsewhere, so only the joint graph shows both the star and these hops."""

    def __init__(self, graph, dwell_s: int, min_ratio: float, max_ratio: float,
                 min_amount: float):
        e, f = forward_links(graph, dwell_s, min_ratio, max_ratio, min_amount)
        o = np.argsort(e, kind="stable")
        self._onward = (e[o], f[o])
        o = np.argsort(f, kind="stable")
        self._funding = (f[o], e[o])

    def onward(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per edge: is it passed on?, the onward payments)."""
        return self._lookup(self._onward, edges)

    def funding(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per edge: was its payer funded just before?, the funding payments)."""
        return self._lookup(self._funding, edges)

    @staticmethod
    def _lookup(table, edges):
        key, other = table
        lo = np.searchsorted(key, edges, "left")
        hi = np.searchsorted(key, edges, "right")
        has = hi > lo
        if not has.any():
            return has, np.empty(0, np.int64)
        return has, np.concatenate([other[a:b] for a, b in zip(lo[has], hi[has])])

    @staticmethod
    def linked_share(has: np.ndarray, leaves: np.ndarray) -> float:
        """Share of the distinct leaves with at least one linked payment."""
        u = np.unique(leaves)
        return float(len(np.unique(leaves[has])) / len(u)) if len(u) else 0.0


class FanOutDetector(TypologyDetector):
    """One account pays many accounts it never paid before, spread over hours or days.

    Only first payments between two accounts count, so payroll and supplier runs that repeat
    every month never form a star after their first appearance; a payroll-style batch (many
    payments within minutes) is left out as well. Supporting evidence: the burst is funded by
    a matching inflow shortly before (money passing through, not a business paying out of
    revenue), and the number of counterparties.
    """

    name = "fan_out"
    _outgoing = True

    def __init__(self, window_hours=96, min_degree=5, max_degree=60, min_edge_amount=500.0,
                 min_total_amount=5000.0, max_card_share=0.5, batch_minutes=60,
                 min_linked_share=0.6, link_dwell_hours=24, min_link_ratio=0.85,
                 max_link_ratio=1.0, max_amount_spread=0.75, min_score=0.5, enabled=True):
        self.max_amount_spread = max_amount_spread
        self.min_linked_share = min_linked_share
        self.link_dwell_hours = link_dwell_hours
        self.min_link_ratio = min_link_ratio
        self.max_link_ratio = max_link_ratio
        self.window_hours = window_hours
        self.min_degree = min_degree
        self.max_degree = max_degree
        self.min_edge_amount = min_edge_amount
        self.min_total_amount = min_total_amount
        self.max_card_share = max_card_share
        self.batch_minutes = batch_minutes
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        window_s = int(self.window_hours * HOUR)
        center, leaf = (graph.src, graph.dst) if self._outgoing else (graph.dst, graph.src)
        # Sizeable first contacts only: card purchases, bills and recurring payments would
        # otherwise make every busy account a star.
        mask = ~graph.is_hub[center] & (graph.amount >= self.min_edge_amount) & graph.pair_first
        # Payroll-style batches (min_degree payments within minutes) are the payroll
        # look-alike; disguised payroll is the pooled model's job.
        batch = neighbours_within(graph, center, mask, int(self.batch_minutes * 30))
        mask &= batch < self.min_degree
        self._links = HopLinks(graph, int(self.link_dwell_hours * HOUR), self.min_link_ratio,
                               self.max_link_ratio, self.min_edge_amount)
        out = []
        for e in star_groups(graph, center, leaf, mask, window_s, self.min_degree,
                             self.max_degree):
            inst = self._judge(graph, e, int(center[e[0]]), leaf, window_s)
            if inst is not None and inst.score >= self.min_score:
                out.append(inst)
        return out

    def _flow_ratio(self, graph, node: int, t0: int, t1: int, window_s: int, total: float):
        """Fan-out: outflow / inflow received in [t0 - window, t1]. Fan-in: outflow in
        [t0, t1 + window] / inflow. 0 when the other side is empty."""
        if self._outgoing:
            other = graph.amount[graph.in_edges_between(node, t0 - window_s, t1)].sum()
            return float(total / other) if other > 0 else 0.0
        other = graph.amount[graph.out_edges_between(node, t0, t1 + window_s)].sum()
        return float(other / total) if total > 0 else 0.0

    def _judge(self, graph, e, node, leaf, window_s):
        total = float(graph.amount[e].sum())
        if total < self.min_total_amount:
            return None
        if share(graph.payment_format[e] == "Credit Card") > self.max_card_share:
            return None
        t0, t1 = int(graph.t[e].min()), int(graph.t[e].max())
        ratio = self._flow_ratio(graph, node, t0, t1, window_s, total)
        funded = 0.7 <= ratio <= 1.15
        k = len(np.unique(leaf[e]))
        # The leaves pass the money on (fan-out) or were handed it just before (fan-in).
        has, linked = (self._links.onward(e) if self._outgoing else self._links.funding(e))
        linked_share = HopLinks.linked_share(has, leaf[e])
        if linked_share < self.min_linked_share:
            # An ordinary star: the money stops with its leaves. Unless min_degree linked
            # leaves remain on their own (a busy account, often abroad, can be the centre
            # of an ordinary star and a laundering one in the same days): keep those.
            if len(np.unique(leaf[e[has]])) < self.min_degree:
                return None
            e, has = e[has], has[has]
            k = len(np.unique(leaf[e]))
        # The linked legs are parts of one split sum, so alike; unrelated transfers that
        # happen to meet at one account vary widely.
        amounts = graph.amount[e[has]]
        spread = float(amounts.std() / amounts.mean())
        if spread > self.max_amount_spread:
            return None
        score = 0.5 + 0.1 * funded + 0.1 * linked_share \
            + 0.15 * min(1.0, k / (2 * self.min_degree)) + 0.15 * (1.0 - min(spread, 1.0))
        # amount: what the star moved (the onward hops carry the same money again).
        return self._instance(np.concatenate([e, linked]), score, center=node, hops=2,
                              amount=float(graph.amount[e].sum()),
                              counterparties=k, flow_ratio=ratio, funded=funded,
                              linked_share=linked_share, amount_spread=spread)


class FanInDetector(FanOutDetector):
    """Many accounts that never paid it before pay one account within a short window.

    Separates from merchants (many small card payments) by the median amount and the card
    share, from regular collections (rent, utilities, repeat customers) by first contacts
    only; supporting evidence is that the collected money moves on soon after.
    """

    name = "fan_in"
    _outgoing = False

    def __init__(self, window_hours=96, min_degree=5, max_degree=60, min_edge_amount=500.0,
                 min_total_amount=5000.0, max_card_share=0.5, min_median_amount=1000.0,
                 batch_minutes=60, min_linked_share=0.6, link_dwell_hours=24,
                 min_link_ratio=0.85, max_link_ratio=1.0, max_amount_spread=0.75,
                 min_score=0.5, enabled=True):
        super().__init__(window_hours, min_degree, max_degree, min_edge_amount,
                         min_total_amount, max_card_share, batch_minutes, min_linked_share,
                         link_dwell_hours, min_link_ratio, max_link_ratio, max_amount_spread,
                         min_score, enabled)
        self.min_median_amount = min_median_amount

    def _judge(self, graph, e, node, leaf, window_s):
        # Merchants collect many small payments; laundering gathers sizeable ones.
        if float(np.median(graph.amount[e])) < self.min_median_amount:
            return None
        return super()._judge(graph, e, node, leaf, window_s)
