"""What every typology detector shares: the instance record, the estimator base, helpers."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from aml.core.errors import ConfigError

HOUR = 3600


@dataclass
class PatternInstance:
    """One occurrence of a typology: the edges it spans, a 0..1 score and its evidence.

    `evidence` may carry `center` (node id of the hub), `hops`, `amount` (total moved, base
    currency; default: sum of the edges) and detector-specific measurements. It never leaves
    the enclave: alerts.py turns it into a scoped, anonymised alert.
    """

    pattern: str
    edge_idx: np.ndarray
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)


class TypologyDetector(BaseEstimator):
    """Base for the typology detectors (scikit-learn estimator idiom).

    Parameters are `__init__` keyword arguments so `get_params`/`set_params`/`clone` work;
    `from_config` builds a detector from its TOML section. Detectors are rules, so `fit` is a
    no-op that returns self.
    """

    name: str = ""

    def fit(self, graph=None, y=None):
        return self

    def detect(self, graph) -> list[PatternInstance]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_config(cls, config) -> "TypologyDetector":
        section = dict(config.section(cls.name))
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(section) - accepted)
        if unknown:  # a misspelt threshold must not silently fall back to its default
            raise ConfigError(f"detection config [{cls.name}] has unknown keys: {', '.join(unknown)}")
        return cls(**section)

    def _instance(self, edge_idx, score: float, **evidence) -> PatternInstance:
        return PatternInstance(self.name, np.unique(np.asarray(edge_idx, dtype=np.int64)),
                               float(np.clip(score, 0.0, 1.0)), evidence)


# ------------------------------------------------------------------ shared helpers
def window_buckets(t: np.ndarray, window_s: int) -> list[np.ndarray]:
    """Two overlapping tilings of time into windows of `window_s` (offset by half a window).

    Any burst shorter than half a window falls wholly inside one bucket of one tiling, so a
    grouped count over (node, bucket) finds it without a per-edge sliding window.
    """
    window_s = max(int(window_s), 1)
    return [t // window_s, (t + window_s // 2) // window_s]


def star_groups(graph, center: np.ndarray, leaf: np.ndarray, edge_mask: np.ndarray,
                window_s: int, min_degree: int, max_degree: int) -> list[np.ndarray]:
    """Edge-index groups where one `center` node meets >= min_degree distinct `leaf` nodes
    within a window (and <= max_degree: bigger stars are bulk payers / merchants).

    Vectorised: one pandas group-by per tiling. Returns arrays of edge indices.
    """
    idx = np.flatnonzero(edge_mask)
    if len(idx) == 0:
        return []
    c, lf, tt = center[idx], leaf[idx], graph.t[idx]
    groups: list[np.ndarray] = []
    seen: set[tuple] = set()
    for bucket in window_buckets(tt, window_s):
        df = pd.DataFrame({"c": c, "b": bucket, "l": lf, "e": idx})
        n_distinct = df.groupby(["c", "b"], sort=False)["l"].transform("nunique").to_numpy()
        keep = (n_distinct >= min_degree) & (n_distinct <= max_degree)
        if not keep.any():
            continue
        for _, g in df[keep].groupby(["c", "b"], sort=False)["e"]:
            e = np.sort(g.to_numpy())
            key = (int(e[0]), int(e[-1]), len(e))
            if key not in seen:
                seen.add(key)
                groups.append(e)
    return groups


def merge_overlapping(instances: list[PatternInstance]) -> list[PatternInstance]:
    """Union instances of one pattern that share an edge (score: the max; evidence: the best's)."""
    if len(instances) <= 1:
        return list(instances)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([np.full(len(i.edge_idx), k) for k, i in enumerate(instances)])
    cols = np.concatenate([i.edge_idx for i in instances])
    n_inst = len(instances)
    # Bipartite instance–edge incidence; components over it join instances sharing an edge.
    _, edge_code = np.unique(cols, return_inverse=True)
    n = n_inst + edge_code.max() + 1
    m = coo_matrix((np.ones(len(rows)), (rows, n_inst + edge_code)), shape=(n, n))
    _, comp = connected_components(m, directed=False)
    by_comp: dict[int, list[int]] = {}
    for k in range(n_inst):
        by_comp.setdefault(int(comp[k]), []).append(k)
    merged = []
    for members in by_comp.values():
        if len(members) == 1:
            merged.append(instances[members[0]])
            continue
        best = max(members, key=lambda k: instances[k].score)
        edges = np.unique(np.concatenate([instances[k].edge_idx for k in members]))
        evidence = dict(instances[best].evidence)
        evidence["merged"] = len(members)
        evidence.pop("amount", None)  # the union's total is recomputed from its edges
        merged.append(PatternInstance(instances[best].pattern, edges, instances[best].score,
                                      evidence))
    return merged


def share(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else 0.0


def neighbours_within(graph, center: np.ndarray, mask: np.ndarray, half_window_s: int
                      ) -> np.ndarray:
    """For each masked edge: how many masked edges of the same centre lie within
    ±half_window_s of it (itself included). 0 for unmasked edges. Vectorised via one sort."""
    out = np.zeros(len(graph), dtype=np.int64)
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return out
    t = graph.t[idx] - graph.t.min()
    key = (center[idx].astype(np.int64) << 34) | t
    order = np.argsort(key, kind="stable")
    sk = key[order]
    lo = np.searchsorted(sk, sk - half_window_s, "left")
    hi = np.searchsorted(sk, sk + half_window_s, "right")
    out[idx[order]] = hi - lo
    return out
