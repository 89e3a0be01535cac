"""Bipartite (many payers -> many payees, densely) and stack (layered bipartite)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aml.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, share, window_buckets


def dense_components(graph, window_s: int, min_edge_amount: float, max_nodes: int):
    """Per time window: weakly connected pieces of sizeable payments between non-hub accounts
    where every payer pays >= 2 of the accounts and every payee is paid by >= 2.

    Yields edge-index arrays. The ">= 2 both ways" pruning is a vectorised group-by, so an
    ordinary one-to-one payment never reaches the component step.
    """
    mask = (graph.amount >= min_edge_amount) & ~graph.is_hub[graph.src] \
        & ~graph.is_hub[graph.dst] & (graph.src != graph.dst)
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return
    for bucket in window_buckets(graph.t[idx], window_s):
        df = pd.DataFrame({"b": bucket, "s": graph.src[idx], "d": graph.dst[idx], "e": idx})
        for _ in range(2):  # prune twice: removing edges can drop others below 2
            out_n = df.groupby(["b", "s"], sort=False)["d"].transform("nunique").to_numpy()
            in_n = df.groupby(["b", "d"], sort=False)["s"].transform("nunique").to_numpy()
            df = df[(out_n >= 2) & (in_n >= 2)]
        if df.empty:
            continue
        keys, codes = np.unique(np.concatenate([
            df.b.to_numpy() * graph.n_nodes + df.s.to_numpy(),
            df.b.to_numpy() * graph.n_nodes + df.d.to_numpy()]), return_inverse=True)
        m = len(df)
        n = len(keys)
        adj = coo_matrix((np.ones(m), (codes[:m], codes[m:])), shape=(n, n))
        _, comp = connected_components(adj, directed=False)
        size = np.bincount(comp)
        ec = comp[codes[:m]]
        ok = size[ec] <= max_nodes
        sub = pd.DataFrame({"c": ec[ok], "e": df.e.to_numpy()[ok]})
        for _, g in sub.groupby("c", sort=False):
            yield np.sort(g.e.to_numpy())


def layers_of(graph, edges: np.ndarray) -> list[np.ndarray] | None:
    """Split a component into layers by longest distance from its pure payers; None if it is
    not layered (a payment inside a layer or skipping a layer)."""
    s, d = graph.src[edges], graph.dst[edges]
    nodes = np.unique(np.concatenate([s, d]))
    depth = dict.fromkeys(nodes.tolist(), 0)
    for _ in range(len(nodes)):  # longest-path relaxation; tiny components only
        changed = False
        for a, b in zip(s.tolist(), d.tolist()):
            if depth[b] < depth[a] + 1:
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    else:
        return None  # a cycle: not layered
    for a, b in zip(s.tolist(), d.tolist()):
        if depth[b] != depth[a] + 1:
            return None
    n_layers = max(depth.values()) + 1
    return [np.array([v for v, k in depth.items() if k == i]) for i in range(n_layers)]


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

    def __init__(self, window_hours=96, min_sources=2, min_destinations=2, min_density=0.5,
                 min_edge_amount=500.0, max_component_nodes=200,
                 min_new_counterparty_share=0.8, min_score=0.5, enabled=True):
        self.window_hours = window_hours
        self.min_sources = min_sources
        self.min_destinations = min_destinations
        self.min_density = min_density
        self.min_edge_amount = min_edge_amount
        self.max_component_nodes = max_component_nodes
        self.min_new_counterparty_share = min_new_counterparty_share
        self.min_score = min_score
        self.enabled = enabled

    _want_layers = 2

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        out = []
        for edges in dense_components(graph, int(self.window_hours * HOUR),
                                      self.min_edge_amount, self.max_component_nodes):
            layers = layers_of(graph, edges)
            if layers is None:
                continue
            inst = self._judge(graph, edges, layers)
            if inst is not None and inst.score >= self.min_score:
                out.append(inst)
        return out

    def _judge(self, graph, edges, layers):
        if len(layers) != 2:
            return None
        left, right = set(layers[0].tolist()), set(layers[1].tolist())
        if len(left) < self.min_sources or len(right) < self.min_destinations:
            return None
        density = _density(graph, edges, left, right)
        new_share = share(graph.pair_first[edges])
        if density < self.min_density or new_share < self.min_new_counterparty_share:
            return None
        score = 0.5 + 0.25 * density + 0.25 * new_share
        return self._instance(edges, score, hops=1, sources=len(left), destinations=len(right),
                              density=density, new_counterparty_share=new_share)


class StackDetector(BipartiteDetector):
    """Bipartite layers stacked: payers -> a layer -> (more layers) -> payees.

    Evidence as for bipartite, per consecutive pair of layers, plus that middle layers pass on
    roughly what they received.
    """

    name = "stack"

    def __init__(self, window_hours=168, min_layers=3, min_layer_size=2, min_density=0.4,
                 min_edge_amount=500.0, max_component_nodes=200,
                 min_new_counterparty_share=0.8, min_score=0.5, enabled=True):
        self.window_hours = window_hours
        self.min_density = min_density
        self.min_edge_amount = min_edge_amount
        self.max_component_nodes = max_component_nodes
        self.min_new_counterparty_share = min_new_counterparty_share
        self.min_score = min_score
        self.enabled = enabled
        self.min_layers = min_layers
        self.min_layer_size = min_layer_size

    def _judge(self, graph, edges, layers):
        if len(layers) < self.min_layers or min(len(x) for x in layers) < self.min_layer_size:
            return None
        sets = [set(x.tolist()) for x in layers]
        density = min(_density(graph, edges, a, b) for a, b in zip(sets, sets[1:]))
        new_share = share(graph.pair_first[edges])
        if density < self.min_density or new_share < self.min_new_counterparty_share:
            return None
        first = np.isin(graph.src[edges], layers[0])
        last = np.isin(graph.dst[edges], layers[-1])
        sent, arrived = graph.amount[edges[first]].sum(), graph.amount[edges[last]].sum()
        conservation = float(arrived / sent) if sent > 0 else 0.0
        score = 0.4 + 0.2 * density + 0.2 * new_share + 0.2 * (0.7 <= conservation <= 1.05)
        return self._instance(edges, score, hops=len(layers) - 1, layers=len(layers),
                              density=density, conservation=conservation,
                              amount=float(sent), new_counterparty_share=new_share)
