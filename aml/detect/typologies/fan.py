"""Fan-out (one payer, many new payees in a burst) and fan-in (many payers, one payee)."""

from __future__ import annotations

import numpy as np

from aml.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, neighbours_within, share, star_groups

DAY = 86_400


def _flow_ratio(graph, node: int, t0: int, t1: int, window_s: int, outgoing_total: float,
                inbound: bool) -> float:
    """Money the centre moved on, relative to what reached it around the burst.

    For a fan-out: outflow / inflow received in [t0 - window, t1]; for a fan-in: outflow in
    [t0, t1 + window] / inflow. 0 when the other side is empty.
    """
    if inbound:  # fan-out centre: what came in before/during the burst
        e = graph.in_edges_between(node, t0 - window_s, t1)
        other = graph.amount[e].sum()
        return float(outgoing_total / other) if other > 0 else 0.0
    e = graph.out_edges_between(node, t0, t1 + window_s)
    other = graph.amount[e].sum()
    return float(other / outgoing_total) if outgoing_total > 0 else 0.0


class FanOutDetector(TypologyDetector):
    """One account pays many accounts it never paid before within a short window.

    Separates from payroll by counterparty novelty (payroll repeats the same staff every
    month), an established payer's history, and — as supporting evidence — whether the burst
    is funded by a matching inflow just before it (money passing through, not a business
    paying out of revenue).
    """

    name = "fan_out"

    def __init__(self, window_hours=48, min_degree=5, max_degree=60, min_edge_amount=500.0,
                 min_new_counterparty_share=0.8, min_total_amount=5000.0, max_card_share=0.5,
                 batch_minutes=60, payer_history_days=25, regular_min_payments=10,
                 min_score=0.5, enabled=True):
        self.window_hours = window_hours
        self.min_edge_amount = min_edge_amount
        self.max_card_share = max_card_share
        self.batch_minutes = batch_minutes
        self.min_degree = min_degree
        self.max_degree = max_degree
        self.min_new_counterparty_share = min_new_counterparty_share
        self.min_total_amount = min_total_amount
        self.payer_history_days = payer_history_days
        self.regular_min_payments = regular_min_payments
        self.min_score = min_score
        self.enabled = enabled

    _outgoing = True

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        window_s = int(self.window_hours * HOUR)
        center, leaf = (graph.src, graph.dst) if self._outgoing else (graph.dst, graph.src)
        # Only sizeable payments count: card purchases and bills would otherwise make every
        # busy shopper a "fan-out".
        mask = ~graph.is_hub[center] & (graph.amount >= self.min_edge_amount)
        # Payroll-style batches (min_degree payments within minutes) are left out: they are
        # the payroll look-alike, and disguised payroll is the pooled model's job.
        batch = neighbours_within(graph, center, mask, int(self.batch_minutes * 30))
        mask &= batch < self.min_degree
        out = []
        for e in star_groups(graph, center, leaf, mask, window_s, self.min_degree,
                             self.max_degree):
            inst = self._judge(graph, e, int(center[e[0]]), leaf, window_s)
            if inst is not None and inst.score >= self.min_score:
                out.append(inst)
        return out

    def _established(self, graph, node: int, t0: int) -> bool:
        """Long-lived centre with a regular stream of earlier payments on the same side."""
        old = graph.node_first_t[node] < t0 - self.payer_history_days * DAY
        side = graph.out_edges(node) if self._outgoing else graph.in_edges(node)
        earlier = int(np.searchsorted(graph.t[side], t0, "left"))
        return bool(old and earlier >= self.regular_min_payments)

    def _judge(self, graph, e, node, leaf, window_s):
        total = float(graph.amount[e].sum())
        new_share = share(graph.pair_first[e])
        if total < self.min_total_amount or new_share < self.min_new_counterparty_share:
            return None
        if share(graph.payment_format[e] == "Credit Card") > self.max_card_share:
            return None
        t0, t1 = int(graph.t[e].min()), int(graph.t[e].max())
        ratio = _flow_ratio(graph, node, t0, t1, window_s, total, inbound=self._outgoing)
        funded = 1.0 if 0.7 <= ratio <= 1.15 else 0.0
        k = len(np.unique(leaf[e]))
        score = 0.45 + 0.25 * new_share + 0.2 * funded + 0.1 * min(1.0, k / (2 * self.min_degree))
        established = self._established(graph, node, t0)
        if established and not funded:
            score *= 0.5
        return self._instance(e, score, center=node, hops=1, counterparties=k,
                              new_counterparty_share=new_share, flow_ratio=ratio,
                              established=established)


class FanInDetector(FanOutDetector):
    """Many accounts pay one account within a short window, with sizeable amounts.

    Separates from merchants (many small card payments) by the median amount and the card
    share, from regular collections by counterparty novelty; supporting evidence is that the
    collected money moves on soon after (outflow / inflow near 1).
    """

    name = "fan_in"
    _outgoing = False

    def __init__(self, window_hours=48, min_degree=5, max_degree=60, min_edge_amount=500.0,
                 min_new_counterparty_share=0.8, min_total_amount=5000.0, max_card_share=0.5,
                 min_median_amount=1000.0, batch_minutes=60, payer_history_days=25,
                 regular_min_payments=10, min_score=0.5, enabled=True):
        super().__init__(window_hours, min_degree, max_degree, min_edge_amount,
                         min_new_counterparty_share, min_total_amount, max_card_share,
                         batch_minutes, payer_history_days, regular_min_payments, min_score,
                         enabled)
        self.min_median_amount = min_median_amount

    def _judge(self, graph, e, node, leaf, window_s):
        # Merchants collect many small payments; laundering gathers sizeable ones.
        if float(np.median(graph.amount[e])) < self.min_median_amount:
            return None
        return super()._judge(graph, e, node, leaf, window_s)
