"""Fan-out (one payer, many new payees in a burst) and fan-in (many new payers, one payee)."""

from __future__ import annotations

import numpy as np

from aml.detect.typologies.base import (
    HOUR, PatternInstance, TypologyDetector, neighbours_within, share, star_groups,
)


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
                 min_score=0.5, enabled=True):
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
        # Parts of one sum split for layering are alike; invoices and bills vary widely.
        amounts = graph.amount[e]
        spread = float(amounts.std() / amounts.mean())
        score = 0.5 + 0.2 * funded + 0.15 * min(1.0, k / (2 * self.min_degree)) \
            + 0.15 * (1.0 - min(spread, 1.0))
        return self._instance(e, score, center=node, hops=1, counterparties=k,
                              flow_ratio=ratio, funded=funded, amount_spread=spread)


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
                 batch_minutes=60, min_score=0.5, enabled=True):
        super().__init__(window_hours, min_degree, max_degree, min_edge_amount,
                         min_total_amount, max_card_share, batch_minutes, min_score, enabled)
        self.min_median_amount = min_median_amount

    def _judge(self, graph, e, node, leaf, window_s):
        # Merchants collect many small payments; laundering gathers sizeable ones.
        if float(np.median(graph.amount[e])) < self.min_median_amount:
            return None
        return super()._judge(graph, e, node, leaf, window_s)
