"""Time-respecting cycles: money that leaves an account and comes back through others."""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order

from aml.enclave.detect.typologies.base import HOUR, PatternInstance, TypologyDetector, window_buckets
from aml.enclave.detect.typologies.chain import forward_links


# ------------------------------------------------------------------ cycle enumeration
# `simple_cycles` below reproduces networkx 3.x's `simple_cycles(nx.DiGraph(pairs),
# length_bound)`: the same cycles in the same order, each starting at the same node, so the
# detector's output is unchanged. networkx removes one start node after another and
# recomputes strongly connected components (Tarjan) of what is left; which node starts next
# depends on the order Tarjan builds each component's set. That recursion is kept exactly,
# but each Tarjan run is done by scipy (components, depth-first pre- and post-order) instead
# of Python over filtered graph views, and the sets are built in Tarjan's order. The search
# from each start node is a depth-first search in adjacency order, like networkx's; with
# `linked`, it prunes paths no time-respecting cycle can take, which leaves the order of the
# remaining cycles as it was.


def _tarjan_sets(nodes: np.ndarray, eu: np.ndarray, ev: np.ndarray, inside: np.ndarray,
                 label_of: np.ndarray) -> list[tuple[set, np.ndarray]]:
    """networkx.strongly_connected_components of the graph on `nodes` (local ids, in the
    order networkx iterates them) with the edges (eu, ev) (local ids, in adjacency order)
    between nodes in `inside`: the components of two or more nodes, in networkx's order, each
    as (the set networkx builds, in its insertion order, of `label_of` values; local ids).

    Nuutila's variant: a component is emitted when its root (first node reached) finishes;
    its set is the root, then the other members in reverse order of finishing."""
    k = len(nodes)
    if k < 2:
        return []
    pos = np.full(len(inside), -1, dtype=np.int64)
    pos[nodes] = np.arange(k)
    m = inside[eu] & inside[ev]
    ru, rv = pos[eu[m]], pos[ev[m]]
    o = np.argsort(ru, kind="stable")
    # Node k is a virtual root with an edge to every node in order: one depth-first search
    # from it visits the roots in the order networkx's loop tries them.
    indptr = np.zeros(k + 2, dtype=np.int32)
    np.cumsum(np.bincount(ru, minlength=k), out=indptr[1:k + 1])
    indptr[k + 1] = indptr[k] + k
    indices = np.concatenate([rv[o], np.arange(k)]).astype(np.int32)
    g = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(k + 1, k + 1))
    n_comp, label = connected_components(g, directed=True, connection="strong")
    size = np.bincount(label, minlength=n_comp)
    big = np.flatnonzero(size[label[:k]] >= 2)
    if len(big) == 0:
        return []
    pre, parent = depth_first_order(g, k, directed=True, return_predecessors=True)
    pre_pos = np.empty(k + 1, dtype=np.int64)
    pre_pos[pre] = np.arange(k + 1)
    # Finishing order: the depth-first tree walked with children in reverse, reversed.
    child = pre[1:]
    o = np.lexsort((-pre_pos[child], parent[child]))
    tree_ptr = np.zeros(k + 2, dtype=np.int32)
    np.cumsum(np.bincount(parent[child], minlength=k + 1), out=tree_ptr[1:])
    tree = csr_matrix((np.ones(k), child[o].astype(np.int32), tree_ptr), shape=(k + 1, k + 1))
    post = depth_first_order(tree, k, directed=True, return_predecessors=False)[::-1]
    post_pos = np.empty(k + 1, dtype=np.int64)
    post_pos[post] = np.arange(k + 1)
    # A root finishes after the rest of its component: components by their last finish,
    # members latest-finishing (the root) first.
    lab = label[big]
    last = np.full(n_comp, -1, dtype=np.int64)
    np.maximum.at(last, lab, post_pos[big])
    members = big[np.lexsort((-post_pos[big], last[lab]))]
    bounds = np.flatnonzero(np.diff(label[members])) + 1
    out = []
    for part in np.split(members, bounds):
        local = nodes[part]
        out.append((set(label_of[local].tolist()), local))
    return out


def simple_cycles(pairs, length_bound: int, linked: set | None = None):
    """Simple cycles of at most `length_bound` (>= 3) nodes of the digraph with edges `pairs`
    (distinct (u, v), u != v, int nodes), as lists of nodes: networkx.simple_cycles' output.

    `linked`: a set of (a, b, c) "pair (a, b) can be followed by pair (b, c)". If given, only
    cycles with at most one unlinked step (counted around the cycle) are yielded, the
    others are pruned from the search; the order of those yielded is unchanged."""
    first: dict[int, dict[int, None]] = {}  # nx.DiGraph(pairs): nodes in order of appearance
    for u, v in pairs:
        first.setdefault(u, {})
        first.setdefault(v, {})
        first[u][v] = None
    # simple_cycles rebuilds the graph from its adjacency (this can reorder nodes).
    succ: dict[int, dict[int, None]] = {}
    pred: dict[int, dict[int, None]] = {}
    for u, nbrs in first.items():
        for v in nbrs:
            for x in (u, v):
                if x not in succ:
                    succ[x], pred[x] = {}, {}
            succ[u][v] = None
            pred[v][u] = None
    # Local ids in node order, edges in adjacency order, for the component computations.
    label_of = np.fromiter(succ, dtype=np.int64, count=len(succ))
    local = {x: i for i, x in enumerate(succ)}
    eu = np.fromiter((local[u] for u, nbrs in succ.items() for _ in nbrs), dtype=np.int64)
    ev = np.fromiter((local[v] for nbrs in succ.values() for v in nbrs), dtype=np.int64)
    n = len(label_of)
    alive = np.ones(n, dtype=bool)
    components = _tarjan_sets(np.arange(n), eu, ev, alive, label_of)
    while components:
        c, c_local = components.pop()
        keep = {x for x in c if x in succ}  # G.subgraph(c): show_nodes(nbunch_iter(c))
        v = next(iter(c))
        adj = _Neighbours(succ, keep)
        if linked is None:
            yield from _bounded_cycle_search(adj, [v], length_bound)
        else:
            yield from _linked_cycle_search(adj, v, length_bound, linked)
        for u in succ[v]:  # G.remove_node(v)
            del pred[u][v]
        del succ[v]
        for u in pred[v]:
            del succ[u][v]
        del pred[v]
        alive[local[v]] = False
        inside = np.zeros(n, dtype=bool)
        inside[c_local] = True
        inside &= alive
        # The view's node order: its node set's, or its parent's (insertion order = local id).
        if 2 * len(keep) < len(succ):
            nodes = np.fromiter((local[x] for x in keep if x in succ), dtype=np.int64)
        else:
            nodes = np.flatnonzero(inside)
        components.extend(_tarjan_sets(nodes, eu, ev, inside, label_of))


def removal_order_cycles(pairs, length_bound: int, linked: set):
    """The cycles `simple_cycles(pairs, length_bound, linked)` yields, in another order: from
    each node in turn (ascending), the linked search through it among the nodes not yet
    searched from. Each cycle is found once, from its first node in that order.

    For large strongly connected components: networkx's order needs a fresh component
    computation after every start node (quadratic in the component); this needs none, and
    the linked search from one node stays small (at most one unlinked step)."""
    succ: dict[int, list[int]] = {}
    for u, v in pairs:
        succ.setdefault(u, []).append(v)
        succ.setdefault(v, [])
    alive = set(succ)
    for v in sorted(succ):
        yield from _linked_cycle_search(_Neighbours(succ, alive), v, length_bound, linked)
        alive.discard(v)


class _Neighbours(dict):
    """Successors within a node set, computed on first use (networkx's _NeighborhoodCache)."""

    def __init__(self, succ, keep):
        super().__init__()
        self.succ, self.keep = succ, keep

    def __missing__(self, v):
        keep = self.keep
        out = self[v] = [w for w in self.succ[v] if w in keep]
        return out


def _linked_cycle_search(G, start, length_bound, linked):
    """The cycles through `start` that _bounded_cycle_search finds, in the same (depth-first,
    adjacency) order, but only those with at most one unlinked step around the cycle."""
    path, on_path, breaks = [start], {start}, [0]
    stack = [iter(G[start])]
    while stack:
        for w in stack[-1]:
            b = path[-1]
            k = breaks[-1] + (len(path) >= 2 and (path[-2], b, w) not in linked)
            if w == start:
                if k + ((b, start, path[1]) not in linked) <= 1:
                    yield path[:]
            elif k <= 1 and w not in on_path and len(path) < length_bound:
                path.append(w)
                on_path.add(w)
                breaks.append(k)
                stack.append(iter(G[w]))
                break
        else:
            stack.pop()
            on_path.discard(path.pop())
            breaks.pop()


def _bounded_cycle_search(G, path, length_bound):
    """networkx.algorithms.cycles._bounded_cycle_search, verbatim (G[v]: successor list)."""
    lock = {v: 0 for v in path}
    B = defaultdict(set)
    start = path[0]
    stack = [iter(G[path[-1]])]
    blen = [length_bound]
    while stack:
        nbrs = stack[-1]
        for w in nbrs:
            if w == start:
                yield path[:]
                blen[-1] = 1
            elif len(path) < lock.get(w, length_bound):
                path.append(w)
                blen.append(length_bound)
                lock[w] = len(path)
                stack.append(iter(G[w]))
                break
        else:
            stack.pop()
            v = path.pop()
            bl = blen.pop()
            if blen:
                blen[-1] = min(blen[-1], bl)
            if bl < length_bound:
                relax_stack = [(bl, v)]
                while relax_stack:
                    bl, u = relax_stack.pop()
                    if lock.get(u, length_bound) < length_bound - bl + 1:
                        lock[u] = length_bound - bl + 1
                        relax_stack.extend((bl + 1, w) for w in B[u].difference(path))
            else:
                for w in G[v]:
                    B[w].add(v)


class CycleDetector(TypologyDetector):
    """A -> B -> ... -> A where each payment follows the previous one within max_dwell_hours,
    the whole loop fits in window_hours, and every hop carries nearly the first hop's amount.

    Candidate finding: per time window, strongly connected components (scipy) of the sizeable
    payments between non-hub accounts; components of min_length..max_component_nodes
    accounts go to `networkx.simple_cycles(length_bound=max_length)` (its order), larger ones
    to `removal_order_cycles` (same cycles, no per-node component recomputation). Friends'
    pay-backs (A -> B -> A, days apart, different amounts) fail length, dwell and
    conservation.
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
        src, dst = graph.src[idx].astype(np.int64), graph.dst[idx].astype(np.int64)
        m = len(idx)
        for bucket in window_buckets(graph.t[idx], w):
            # One node per (bucket, account): SCCs never span two windows.
            key = np.concatenate([bucket, bucket]) * graph.n_nodes + np.concatenate([src, dst])
            _, s_key = np.unique(key, return_inverse=True)
            s_code, d_code = s_key[:m], s_key[m:]
            n = int(s_key.max()) + 1
            adj = coo_matrix((np.ones(m), (s_code, d_code)), shape=(n, n)).tocsr()
            n_comp, comp = connected_components(adj, directed=True, connection="strong")
            size = np.bincount(comp, minlength=n_comp)
            ok = (size[comp[s_code]] >= self.min_length) & (comp[s_code] == comp[d_code])
            if not ok.any():
                continue
            # Components in order of their first payment, each's payments in time order.
            c, e = comp[s_code[ok]], idx[ok]
            _, first, inv = np.unique(c, return_index=True, return_inverse=True)
            rank = np.empty(len(first), dtype=np.int64)
            rank[np.argsort(first)] = np.arange(len(first))
            order = np.argsort(rank[inv], kind="stable")
            bounds = np.flatnonzero(np.diff(inv[order])) + 1
            large = size[c[order]] > self.max_component_nodes
            starts = np.concatenate([[0], bounds])
            for group, big in zip(np.split(e[order], bounds), large[starts]):
                for inst in self._cycles_in(graph, group, w, bool(big)):
                    key = tuple(inst.edge_idx)
                    if key not in seen:
                        seen.add(key)
                        out.append(inst)
        return out

    def _cycles_in(self, graph, edges: np.ndarray, w: int, large: bool = False
                   ) -> list[PatternInstance]:
        by_pair: dict[tuple[int, int], list[int]] = {}
        for s, d, e in zip(graph.src[edges].tolist(), graph.dst[edges].tolist(), edges.tolist()):
            by_pair.setdefault((s, d), []).append(e)  # edge order == time order
        by_pair = {k: np.asarray(v, dtype=np.int64) for k, v in by_pair.items()}
        if large and self.max_length >= 3:
            cycles = removal_order_cycles(list(by_pair), self.max_length,
                                          self._linked(graph, edges))
        elif self.max_length >= 3:
            cycles = simple_cycles(list(by_pair), self.max_length, self._linked(graph, edges))
        else:  # no cycle is that short (min_length >= 3), but keep networkx's answer
            cycles = nx.simple_cycles(nx.DiGraph(list(by_pair)), length_bound=self.max_length)
        found = []
        for cyc in cycles:
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

    def _linked(self, graph, edges: np.ndarray) -> set[tuple[int, int, int]]:
        """(a, b, c) for each payment a -> b that a payment b -> c among `edges` can follow
        on a time-respecting cycle: within max_dwell after it, at most 1.02x its amount and
        at least min_conservation / 1.02^(max_length - 2) of it (what the rules below allow
        between consecutive hops). A cycle _time_respecting accepts has at most one step
        that is not such a link (where its path starts), so the search skips the others."""
        src, dst = graph.src[edges].astype(np.int64), graph.dst[edges].astype(np.int64)
        t, amount = graph.t[edges], graph.amount[edges]
        dwell = int(np.floor(self.max_dwell_hours * HOUR))
        t_rel = t - t.min()
        key = (src << 34) | t_rel
        order = np.argsort(key, kind="stable")
        key = key[order]
        base = (dst << 34) | t_rel
        lo = np.searchsorted(key, base + 1, "left")
        hi = np.searchsorted(key, base + dwell, "right")
        n = hi - lo
        e = np.repeat(np.arange(len(edges)), n)
        f = order[np.repeat(lo, n) + np.arange(len(e)) - np.repeat(np.cumsum(n) - n, n)]
        lowest = self.min_conservation / 1.02 ** max(self.max_length - 2, 0) * 0.999
        ok = (amount[f] <= amount[e] * 1.02) & (amount[f] >= amount[e] * lowest)
        e, f = e[ok], f[ok]
        return set(zip(src[e].tolist(), dst[e].tolist(), dst[f].tolist()))

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
