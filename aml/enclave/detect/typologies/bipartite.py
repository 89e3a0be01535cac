"""Bipartite (many payers -> many payees, densely) and stack (layered bipartite)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aml.enclave.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, share, window_buckets


def ring_edges(graph, min_edge_amount: float) -> np.ndarray:
    """Candidate payments: sizeable, between non-hub accounts, and the first payment between
    the two. A ring's transfers are new relationships, while ordinary customers and suppliers
    pay each other again and again."""
    return np.flatnonzero((graph.amount >= min_edge_amount) & ~graph.is_hub[graph.src]
                          & ~graph.is_hub[graph.dst] & (graph.src != graph.dst)
                          & graph.pair_first)


def shared_neighbour_groups(b: np.ndarray, x: np.ndarray, y: np.ndarray, min_shared: int = 2,
                            max_fan: int = 30) -> list[tuple[int, np.ndarray]]:
    """Group the x's (within one time bucket b) that share >= min_shared y's with another x.

    E.g. x = payees, y = payers: payees paid by the same two or more payers end up in one
    group. A self-join on (b, y), bounded by skipping y's linked to more than max_fan x's.
    Returns (bucket, sorted x ids) per group of >= 2.
    """
    df = pd.DataFrame({"b": b, "x": x, "y": y}).drop_duplicates()
    fan = df.groupby(["b", "y"], sort=False)["x"].transform("size").to_numpy()
    df = df[(fan >= 2) & (fan <= max_fan)]
    if df.empty:
        return []
    j = df.merge(df, on=["b", "y"])
    j = j[j.x_x < j.x_y]
    links = j.groupby(["b", "x_x", "x_y"], sort=False).size()
    links = links[links >= min_shared].reset_index()
    if links.empty:
        return []
    keys, codes = np.unique(np.concatenate([
        links.b.to_numpy() * (2**31) + links.x_x.to_numpy(),
        links.b.to_numpy() * (2**31) + links.x_y.to_numpy()]), return_inverse=True)
    m = len(links)
    adj = coo_matrix((np.ones(m), (codes[:m], codes[m:])), shape=(len(keys),) * 2)
    _, comp = connected_components(adj, directed=False)
    out = []
    for c in np.unique(comp):
        members = keys[comp == c]
        out.append((int(members[0] // 2**31), np.sort(members % 2**31)))
    return out


def _density(graph, edges, left, right) -> float:
    pairs = {(a, b) for a, b in zip(graph.src[edges].tolist(), graph.dst[edges].tolist())
             if a in left and b in right}
    return len(pairs) / max(len(left) * len(right), 1)


class BipartiteDetector(TypologyDetector):
    """A set of payers that each pay several members of a set of payees, within a window.

    Evidence: density of the payer x payee matrix, sizeable amounts, and first-contact share
    (customers of the same two suppliers repeat their payments; a laundering ring's transfers
    are new relationships).
    """

    name = "bipartite"

    def __init__(self, window_hours=72, min_sources=2, min_destinations=2, min_density=0.5,
                 min_edge_amount=500.0, max_fan=30,
                 min_new_counterparty_share=0.8, amount_band=1.6, max_amount_spread=0.3,
                 min_score=0.5, enabled=True):
        self.window_hours = window_hours
        self.amount_band = amount_band
        self.max_amount_spread = max_amount_spread
        self.min_sources = min_sources
        self.min_destinations = min_destinations
        self.min_density = min_density
        self.min_edge_amount = min_edge_amount
        self.max_fan = max_fan
        self.min_new_counterparty_share = min_new_counterparty_share
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        w = int(self.window_hours * HOUR)
        idx = ring_edges(graph, self.min_edge_amount)
        out = []
        for bucket in window_buckets(graph.t[idx], w):
            # Payees that share >= 2 payers in the window form the right-hand side.
            for b, right in shared_neighbour_groups(bucket, graph.dst[idx], graph.src[idx],
                                                        max_fan=self.max_fan):
                # idx is in time order, so one bucket's payments are one slice of it.
                in_b = idx[np.searchsorted(bucket, b, "left"):np.searchsorted(bucket, b, "right")]
                e = in_b[np.isin(graph.dst[in_b], right)]
                e = e[~np.isin(graph.src[e], right)]  # payees paying each other: not this shape
                # A ring's legs are shares of one sum: payments far from the group's median
                # size are other business of these accounts that fell in the same window.
                # The same goes for payments far from the group's median time: a ring moves
                # its money at once, within half a window.
                a, med = graph.amount[e], np.median(graph.amount[e])
                off = np.abs(graph.t[e] - np.median(graph.t[e]))
                e = e[(a >= med / self.amount_band) & (a <= med * self.amount_band)
                      & (off <= w // 2)]
                right = np.unique(graph.dst[e])
                payers, n_paid = np.unique(graph.src[e], return_counts=True)
                left = payers[n_paid >= 2]  # the core: payers into >= 2 of these payees
                inst = self._judge(graph, e, set(left.tolist()), set(right.tolist()))
                if inst is not None and inst.score >= self.min_score:
                    out.append(inst)
        return out

    def _judge(self, graph, edges, left, right):
        if len(left) < self.min_sources or len(right) < self.min_destinations:
            return None
        density = _density(graph, edges, left, right)
        new_share = share(graph.pair_first[edges])
        if density < self.min_density or new_share < self.min_new_counterparty_share:
            return None
        # Payers and payees who merely met by chance pay whatever their own business needs.
        amounts = graph.amount[edges]
        spread = float(amounts.std() / amounts.mean())
        if spread > self.max_amount_spread:
            return None
        score = 0.5 + 0.25 * density + 0.25 * new_share
        return self._instance(edges, score, hops=1, sources=len(left), destinations=len(right),
                              density=density, new_counterparty_share=new_share,
                              amount_spread=spread)


class StackDetector(BipartiteDetector):
    """Bipartite layers stacked: payers -> a layer -> (more layers) -> payees.

    Evidence as for bipartite, per consecutive pair of layers, plus that middle layers pass on
    roughly what they received.
    """

    name = "stack"

    def __init__(self, window_hours=72, min_layers=3, min_layer_size=2, min_density=0.4,
                 min_edge_amount=500.0, max_fan=30,
                 min_new_counterparty_share=0.8, min_score=0.5, enabled=True):
        self.window_hours = window_hours
        self.min_density = min_density
        self.min_edge_amount = min_edge_amount
        self.max_fan = max_fan
        self.min_new_counterparty_share = min_new_counterparty_share
        self.min_score = min_score
        self.enabled = enabled
        self.min_layers = min_layers
        self.min_layer_size = min_layer_size

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        w = int(self.window_hours * HOUR)
        idx = ring_edges(graph, self.min_edge_amount)
        out = []
        for bucket in window_buckets(graph.t[idx], w):
            # Middle-layer accounts: paid by >= 2 and paying >= 2 new counterparties.
            df = pd.DataFrame({"b": bucket, "s": graph.src[idx], "d": graph.dst[idx]})
            n_in = df.groupby(["b", "d"])["s"].nunique()
            n_out = df.groupby(["b", "s"])["d"].nunique()
            mids = n_in[n_in >= self.min_layer_size].index.intersection(
                n_out[n_out >= self.min_layer_size].index)
            if len(mids) == 0:
                continue
            mid_key = set(mids.tolist())
            into_mid = np.array([k in mid_key for k in zip(bucket.tolist(),
                                                             graph.dst[idx].tolist())])
            # Middles sharing >= 2 payers are one layer; their payers and payees the others.
            for b, layer in shared_neighbour_groups(bucket[into_mid], graph.dst[idx][into_mid],
                                                    graph.src[idx][into_mid],
                                                    max_fan=self.max_fan):
                in_b = idx[np.searchsorted(bucket, b, "left"):np.searchsorted(bucket, b, "right")]
                e_in = in_b[np.isin(graph.dst[in_b], layer)]
                e_out = in_b[np.isin(graph.src[in_b], layer)]
                srcs, c_in = np.unique(graph.src[e_in], return_counts=True)
                dsts, c_out = np.unique(graph.dst[e_out], return_counts=True)
                first, last = srcs[c_in >= 2], dsts[c_out >= 2]
                e_in = e_in[np.isin(graph.src[e_in], first)]
                e_out = e_out[np.isin(graph.dst[e_out], last)]
                layers = [first, layer, last]
                inst = self._judge(graph, np.concatenate([e_in, e_out]), layers)
                if inst is not None and inst.score >= self.min_score:
                    out.append(inst)
        return out

    def _judge(self, graph, edges, layers):
        sets = [set(x.tolist()) for x in layers]
        if min(len(x) for x in sets) < self.min_layer_size or sets[0] & sets[2] \
                or len(layers) < self.min_layers:
            return None
        density = min(_density(graph, edges, a, b) for a, b in zip(sets, sets[1:]))
        new_share = share(graph.pair_first[edges])
        if density < self.min_density or new_share < self.min_new_counterparty_share:
            return None
        first = np.isin(graph.src[edges], layers[0])
        last = np.isin(graph.dst[edges], layers[-1])
        sent, arrived = graph.amount[edges[first]].sum(), graph.amount[edges[last]].sum()
        conservation = float(arrived / sent) if sent > 0 else 0.0
        # Middle accounts forward after receiving: their first outflow follows their first inflow.
        score = 0.4 + 0.2 * density + 0.2 * new_share + 0.2 * (0.7 <= conservation <= 1.05)
        return self._instance(edges, score, hops=len(layers) - 1, layers=len(layers),
                              density=density, conservation=conservation,
                              amount=float(sent), new_counterparty_share=new_share)
