"""Structuring: many payments just under the reporting threshold, to or from one party."""

from __future__ import annotations

import numpy as np

from aml.enclave.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, star_groups
from aml.enclave.detect.typologies.fan import HopLinks


class StructuringDetector(TypologyDetector):
    """At least min_count payments in [threshold*(1-band), threshold) paid into (or out of)
    one account within window_hours, from at least min_count distinct counterparties,
    spanning at least min_institutions banks.

    Splitting a sum across institutions to stay under the US $10,000 currency transaction
    report is an offence in itself (31 CFR 1010.314) that no single bank can see. Evidence
    against ordinary invoices that happen to fall in the band: several distinct
    counterparties inside days, several institutions, amounts bunched right under the line.
    """

    name = "structuring"

    def __init__(self, threshold=10000.0, band=0.2, window_hours=168, min_count=5,
                 min_institutions=2, max_degree=100, min_sizeable=1000.0, min_band_share=0.5,
                 min_linked_share=0.6, link_dwell_hours=24, min_link_ratio=0.85,
                 max_link_ratio=1.0, min_score=0.5, enabled=True):
        self.min_linked_share = min_linked_share
        self.link_dwell_hours = link_dwell_hours
        self.min_link_ratio = min_link_ratio
        self.max_link_ratio = max_link_ratio
        self.min_sizeable = min_sizeable
        self.min_band_share = min_band_share
        self.threshold = threshold
        self.band = band
        self.window_hours = window_hours
        self.min_count = min_count
        self.min_institutions = min_institutions
        self.max_degree = max_degree
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        w = int(self.window_hours * HOUR)
        lo = self.threshold * (1 - self.band)
        in_band = (graph.amount >= lo) & (graph.amount < self.threshold)
        links = HopLinks(graph, int(self.link_dwell_hours * HOUR), self.min_link_ratio,
                         self.max_link_ratio, lo * self.min_link_ratio)
        out = []
        for direction, center, leaf in (("in", graph.dst, graph.src),
                                        ("out", graph.src, graph.dst)):
            for e in star_groups(graph, center, leaf, in_band, w, self.min_count,
                                 self.max_degree):
                node = int(center[e[0]])
                banks = set(graph.node_bank[graph.src[e]]) | set(graph.node_bank[graph.dst[e]])
                if len(banks) < self.min_institutions:
                    continue
                # Share of the account's sizeable payments on this side in the window that fall
                # in the band: a supplier invoiced at all sizes has few, a smurfing target many.
                t0, t1 = int(graph.t[e].min()), int(graph.t[e].max())
                side = (graph.in_edges_between(node, t0, t1) if direction == "in"
                        else graph.out_edges_between(node, t0, t1))
                sizeable = side[graph.amount[side] >= self.min_sizeable]
                band_share = len(e) / max(len(sizeable), len(e))
                if band_share < self.min_band_share:
                    continue
                # Cross-bank evidence: the smurfs were handed the money just before (paying
                # in) or pass it on just after (paid out); buyers paying a dealer deposits
                # from their own savings were not.
                has, linked = links.funding(e) if direction == "in" else links.onward(e)
                linked_share = HopLinks.linked_share(has, leaf[e])
                if linked_share < self.min_linked_share:
                    continue
                e = np.concatenate([e, linked])
                # How tightly the amounts bunch under the threshold (0: spread over the band).
                core = e[: len(e) - len(linked)]
                closeness = float(np.mean((graph.amount[core] - lo) / (self.threshold - lo)))
                count = len(np.unique(leaf[core]))
                score = 0.5 + 0.2 * min(1.0, count / (2 * self.min_count)) \
                    + 0.15 * min(1.0, (len(banks) - 1) / 3) + 0.15 * closeness
                if score >= self.min_score:
                    out.append(self._instance(e, score, center=node, direction=direction,
                                              hops=1, count=count, threshold=self.threshold,
                                              institutions=len(banks), band_share=band_share,
                                              linked_share=linked_share,
                                              amount=float(graph.amount[core].sum())))
        return out
