"""Time-respecting cycles: money that leaves an account and comes back through others."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aml.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, window_buckets
from aml.detect.typologies.chain import forward_links


class CycleDetector(TypologyDetector):
    """A -> B -> ... -> A where each payment follows the previous one within max_dwell_hours,
    the whole loop fits in window_hours, and every hop carries nearly the first hop's amount.

    Candidate finding: per time window, strongly connected components (scipy) of the sizeable
    payments between non-hub accounts; only components of min_length..max_component_nodes
    accounts go to `networkx.simple_cycles(length_bound=max_length)`. Friends' pay-backs
    (A -> B -> A, days apart, different amounts) fail length, dwell and conservation.
    """

    name = "cycle"

    def __init__(self, window_hours=168, min_length=3, max_length=8, min_edge_amount=500.0,
                 min_conservation=0.7, max_dwell_hours=72, max_component_nodes=2000,
                 min_score=0.5, enabled=True):
        self.window_hours = window_hours
        self.min_length = min_length
        self.max_length = max_length
        self.min_edge_amount = min_edge_amount
        self.min_conservation = min_conservation
        self.max_dwell_hours = max_dwell_hours
        self.max_component_nodes = max_component_nodes
        self.min_score = min_score
        self.enabled = enabled

    def detect(self, graph) -> list[PatternInstance]:
        if len(graph) == 0:
            return []
        w = int(self.window_hours * HOUR)
        # A cycle payment follows an incoming payment or is followed by an outgoing one
        # (each within max_dwell, of a conserved amount): keep only such payments. This
        # vectorised pruning leaves small components for the cycle enumeration.
        e, f = forward_links(graph, int(self.max_dwell_hours * HOUR), self.min_conservation,
                             1.02, self.min_edge_amount)
        linked = np.zeros(len(graph), dtype=bool)
        linked[e] = True
        linked[f] = True
        mask = linked & ~graph.is_hub[graph.src] & ~graph.is_hub[graph.dst] \
            & (graph.src != graph.dst)
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return []
        out, seen = [], set()
        for bucket in window_buckets(graph.t[idx], w):
            # One node per (bucket, account): SCCs never span two windows.
            s_key = pd.factorize(pd.MultiIndex.from_arrays([
                np.concatenate([bucket, bucket]),
                np.concatenate([graph.src[idx], graph.dst[idx]])]))[0]
            m = len(idx)
            s_code, d_code = s_key[:m], s_key[m:]
            n = int(s_key.max()) + 1
            adj = coo_matrix((np.ones(m), (s_code, d_code)), shape=(n, n)).tocsr()
            n_comp, comp = connected_components(adj, directed=True, connection="strong")
            size = np.bincount(comp, minlength=n_comp)
            ok = (size[comp[s_code]] >= self.min_length) & (comp[s_code] == comp[d_code]) \
                & (size[comp[s_code]] <= self.max_component_nodes)
            if not ok.any():
                continue
            cand = pd.DataFrame({"c": comp[s_code[ok]], "e": idx[ok]})
            for _, g in cand.groupby("c", sort=False):
                for inst in self._cycles_in(graph, g.e.to_numpy(), w):
                    key = tuple(inst.edge_idx)
                    if key not in seen:
                        seen.add(key)
                        out.append(inst)
        return out

    def _cycles_in(self, graph, edges: np.ndarray, w: int) -> list[PatternInstance]:
        by_pair: dict[tuple[int, int], np.ndarray] = {}
        df = pd.DataFrame({"s": graph.src[edges], "d": graph.dst[edges], "e": edges})
        for (s, d), g in df.groupby(["s", "d"], sort=False):
            by_pair[(int(s), int(d))] = np.sort(g.e.to_numpy())  # edge order == time order
        dg = nx.DiGraph(list(by_pair))
        found = []
        for cyc in nx.simple_cycles(dg, length_bound=self.max_length):
            if len(cyc) < self.min_length:
                continue
            path = self._time_respecting(graph, cyc, by_pair, w)
            if path is not None:
                amounts = graph.amount[path]
                conservation = float(amounts.min() / amounts.max())
                dwell_h = float(np.diff(graph.t[path]).max() / HOUR)
                score = 0.6 + 0.2 * conservation + 0.2 * (1 - dwell_h / self.max_dwell_hours)
                if score >= self.min_score:
                    found.append(self._instance(
                        path, score, hops=len(path), conservation=conservation,
                        max_dwell_hours=dwell_h, amount=float(amounts[0])))
        return found

    def _time_respecting(self, graph, cyc, by_pair, w) -> np.ndarray | None:
        """Earliest-following payments around the cycle, from any start, within the rules."""
        k = len(cyc)
        max_dwell = self.max_dwell_hours * HOUR
        for r in range(k):
            nodes = cyc[r:] + cyc[:r]
            first_edges = by_pair[(nodes[0], nodes[1 % k])]
            for e0 in first_edges:
                path, t, a0 = [int(e0)], graph.t[e0], graph.amount[e0]
                prev_a = a0
                for i in range(1, k):
                    cand = by_pair[(nodes[i], nodes[(i + 1) % k])]
                    ct = graph.t[cand]
                    ca = graph.amount[cand]
                    ok = (ct > t) & (ct - t <= max_dwell) & (ca <= prev_a * 1.02) \
                        & (ca >= a0 * self.min_conservation)
                    if not ok.any():
                        break
                    nxt = int(cand[np.argmax(ok)])
                    path.append(nxt)
                    t, prev_a = graph.t[nxt], graph.amount[nxt]
                else:
                    if graph.t[path[-1]] - graph.t[path[0]] <= w:
                        return np.asarray(path, dtype=np.int64)
        return None
