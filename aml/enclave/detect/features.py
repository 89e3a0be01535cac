"""Per-transaction graph features for the pooled model.

`transaction_features(graph)` returns one row per edge of a `TransactionGraph`, in the graph's
edge order (sorted by time). Everything is vectorised: windowed counts use a sorted
``(node, time)`` key and `np.searchsorted`, distinct counts sorted integer keys, so the cost is
a few sorts of the edge list — no Python loop over edges.

`FeatureTable(graph)` computes the same features once but keeps them compact (counts as int32,
per-account facts per account, features of the amount or time alone not at all) and hands out
float64 rows on request (`take_rows`), so the model never holds a float64 matrix of every
payment: about 140 bytes per payment instead of 490 (61 float64 columns).

Windows are two-sided (``[t - w, t + w]``): detection runs over a whole batch after the fact,
so activity shortly after a payment (the mule forwarding it on) is as telling as activity
before it. Labels are never read here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aml.core.schema import ALERT_PATTERNS, PAYMENT_FORMATS

DAY = 86_400
WEEK = 7 * DAY
WINDOWS = {"1d": DAY, "7d": WEEK}
CTR_THRESHOLD = 10_000.0  # US currency transaction report threshold: structuring sits just below
NO_PRIOR_INFLOW = 30 * DAY  # dwell time used when the payer received nothing before paying

_FORMATS = sorted(PAYMENT_FORMATS)
_PATTERNS = [p for p in ALERT_PATTERNS if p != "model"]


def _feature_names() -> list[str]:
    names = ["log_amount", "amount_to_src_median", "amount_to_dst_median",
             "round_100", "round_1000", "below_ctr", "ctr_gap"]
    for w in WINDOWS:
        names += [f"src_out_deg_{w}", f"src_in_deg_{w}", f"dst_in_deg_{w}", f"dst_out_deg_{w}",
                  f"src_out_amount_{w}", f"dst_in_amount_{w}"]
    names += ["src_fan_out_1d", "dst_fan_in_1d", "src_fan_out_7d", "dst_fan_in_7d",
              "src_fan_out_all", "src_fan_in_all", "dst_fan_in_all", "dst_fan_out_all",
              "src_out_deg_all", "dst_in_deg_all",
              "src_dwell", "src_forward_fraction", "src_in_amount_1d_ratio",
              "dst_next_out_delay", "dst_forward_fraction",
              "reciprocal", "pair_count",
              "src_bank_diversity", "dst_bank_diversity", "cross_bank",
              "currency_rarity_src", "format_rarity_src", "hour"]
    names += [f"format_{f.lower().replace(' ', '_')}" for f in _FORMATS]
    names += [f"pattern_{p}" for p in _PATTERNS] + ["pattern_count", "pattern_max_score"]
    return names


FEATURE_NAMES: list[str] = _feature_names()
PATTERN_FEATURES: list[str] = [n for n in FEATURE_NAMES if n.startswith("pattern_")]


def _node_time_key(node: np.ndarray, t: np.ndarray, t0: int) -> np.ndarray:
    """One int64 per (node, time) that sorts by node, then time."""
    return (node.astype(np.int64) << 32) | (t - t0).astype(np.int64)


class _SortedSet:
    """The edges keyed by one endpoint's (node, time), sorted once and reused by every
    windowed look-up: count and amount sum within [t - w, t + w], last before, first after.

    `order` is the graph's CSR order for that endpoint (by node, then time: the same as a
    stable sort of the key). A set's sorted keys are also the sorted query keys for its
    endpoint, so every search runs with sorted needles (several times faster than in edge
    order) and the answers are scattered back to edge order. With `need` (bool per edge),
    only those edges are queried; the others' answers are left 0 / -1."""

    def __init__(self, node: np.ndarray, t: np.ndarray, amount: np.ndarray, order: np.ndarray,
                 t0: int, need: np.ndarray | None = None):
        self.order = order
        self.key = _node_time_key(node[order], t[order], t0)
        self.csum = np.concatenate([[0.0], np.cumsum(amount[order])])
        # As queries, only the edges whose features are needed (still in key order).
        if need is None:
            self.q_order, self.q_key = order, self.key
        else:
            sel = need[order]
            self.q_order, self.q_key = order[sel], self.key[sel]

    def window(self, q: "_SortedSet", width: int):
        """(count, amount sum) of this set's edges of each query edge's node within its
        [t - width, t + width]; the query edges are all edges keyed as `q` keys them."""
        # key - width never borrows from the node bits: t0 lies more than a week before t.
        lo = np.searchsorted(self.key, q.q_key - width, "left")
        hi = np.searchsorted(self.key, q.q_key + width, "right")
        count = np.zeros(len(q.order), dtype=np.int32)
        total = np.zeros(len(q.order), dtype=np.float64)
        count[q.q_order] = hi - lo
        total[q.q_order] = self.csum[hi] - self.csum[lo]
        return count, total

    def last_before(self, q: "_SortedSet"):
        """Index of the query node's last edge of this set strictly before t, or -1."""
        pos = np.searchsorted(self.key, q.q_key, "left") - 1
        ok = pos >= 0
        pos_c = np.where(ok, pos, 0)
        ok &= (self.key[pos_c] >> 32) == (q.q_key >> 32)
        out = np.full(len(q.order), -1, dtype=np.int64)
        out[q.q_order] = np.where(ok, self.order[pos_c], -1)
        return out

    def first_after(self, q: "_SortedSet"):
        """Index of the query node's first edge of this set strictly after t, or -1."""
        pos = np.searchsorted(self.key, q.q_key, "right")
        ok = pos < len(self.key)
        pos_c = np.where(ok, pos, 0)
        ok &= (self.key[pos_c] >> 32) == (q.q_key >> 32)
        out = np.full(len(q.order), -1, dtype=np.int64)
        out[q.q_order] = np.where(ok, self.order[pos_c], -1)
        return out


def _unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy's default hash-based path is several times slower here)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if len(x) else x


def _group_codes(group: np.ndarray, order: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """(number of groups, dense code of each row's group in sorted order) — np.unique's
    inverse. `order`: a permutation along which `group` is already non-decreasing (a CSR
    order of the graph), which spares the argsort."""
    if order is not None:
        sorted_group = group[order]
        if len(group) and (sorted_group[1:] >= sorted_group[:-1]).all():
            code = np.empty(len(group), dtype=np.int64)
            code[order] = np.concatenate([[0], np.cumsum(sorted_group[1:] != sorted_group[:-1])])
            return int(code[order[-1]]) + 1, code
    codes, inverse = np.unique(group, return_inverse=True)
    return len(codes), inverse


def _distinct_per_group(group: np.ndarray, value: np.ndarray,
                        order: np.ndarray | None = None) -> np.ndarray:
    """For each row: how many distinct `value`s its `group` has (a group-by nunique)."""
    n_groups, g = _group_codes(group, order)
    pairs = _unique(g.astype(np.int64) * (int(value.max()) + 1) + value)
    counts = np.bincount(pairs // (int(value.max()) + 1), minlength=n_groups)
    return counts[g].astype(np.int32)


def _group_size(*keys: np.ndarray) -> np.ndarray:
    """For each row: how many rows share its combination of keys (a group-by size)."""
    key = np.zeros(len(keys[0]), dtype=np.int64)
    for k in keys:
        key = key * (int(k.max()) + 1) + k
    if int(key.max()) < 4 * len(key) + 1024:
        # Few possible keys (accounts x currencies, say): count them directly, no sort.
        return np.bincount(key)[key].astype(np.int32)
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return counts[inverse].astype(np.int32)


def _distance_to_round(amount: np.ndarray, unit: float) -> np.ndarray:
    """0 when the amount is a whole multiple of `unit`, up to 1 half-way between multiples."""
    r = np.mod(amount, unit)
    return np.minimum(r, unit - r) / (unit / 2)


def _pattern_columns(n_edges: int, instances) -> dict[str, np.ndarray]:
    cols = {f"pattern_{p}": np.zeros(n_edges) for p in _PATTERNS}
    total = np.zeros(n_edges)
    best = np.zeros(n_edges)
    for inst in instances or ():
        idx = np.unique(np.asarray(inst.edge_idx, dtype=np.int64))
        name = f"pattern_{inst.pattern}"
        if name in cols:
            cols[name][idx] += 1
        total[idx] += 1
        best[idx] = np.maximum(best[idx], float(inst.score))
    cols["pattern_count"] = total
    cols["pattern_max_score"] = best
    return cols


class FeatureTable:
    """The features of every edge of `graph`, stored compactly; `take_rows(idx)` gives them as
    float64 rows (columns `columns`, default `FEATURE_NAMES`), exactly as
    `transaction_features` computes them.

    `instances` are typology `PatternInstance`s for the pattern_* columns (their ``edge_idx``
    index the graph's edges); without them those columns are zero. `rows` (bool per edge,
    optional): the only edges whose rows will be asked for. Windows still count every edge,
    but the per-edge look-ups run for those edges only; asking for another row is an error.
    """

    def __init__(self, graph, instances=None, rows=None):
        n = len(graph)
        self.n_rows = n
        self._need = None if rows is None else np.asarray(rows, dtype=bool)
        self.columns = list(FEATURE_NAMES)
        self._t = np.asarray(graph.t, dtype=np.int64)
        self._src = np.asarray(graph.src, dtype=np.int64)
        self._dst = np.asarray(graph.dst, dtype=np.int64)
        self._amount = np.asarray(graph.amount, dtype=np.float64)
        self._patterns = _pattern_columns(n, instances) if instances is not None else None
        if n == 0:
            return
        t, src, dst, amount = self._t, self._src, self._dst, self._amount
        n_nodes = int(max(graph.n_nodes, src.max() + 1, dst.max() + 1))
        t0 = int(t.min()) - WEEK - 1
        node_feats: dict[str, np.ndarray] = {}  # per account, looked up by src or dst
        rows: dict[str, np.ndarray] = {}  # per edge

        # Amount shape: the median payment of each account as payer / payee.
        for side, node in (("src", src), ("dst", dst)):
            med = pd.Series(amount).groupby(node).median()
            per_node = np.full(n_nodes, np.nan)
            per_node[med.index.to_numpy()] = med.to_numpy()
            node_feats[f"{side}_median"] = per_node

        # Windowed degree and volume of both ends, out- and in-side.
        need = self._need
        by_src = _SortedSet(src, t, amount, np.asarray(graph.out_idx, dtype=np.int64), t0, need)
        by_dst = _SortedSet(dst, t, amount, np.asarray(graph.in_idx, dtype=np.int64), t0, need)
        in_sum_1d = None
        for w, width in WINDOWS.items():
            rows[f"src_out_deg_{w}"], out_sum = by_src.window(by_src, width)
            rows[f"src_in_deg_{w}"], src_in_sum = by_dst.window(by_src, width)
            rows[f"dst_in_deg_{w}"], in_sum = by_dst.window(by_dst, width)
            rows[f"dst_out_deg_{w}"], _ = by_src.window(by_dst, width)
            rows[f"src_out_amount_{w}"] = np.log1p(out_sum)
            rows[f"dst_in_amount_{w}"] = np.log1p(in_sum)
            if width == DAY:
                in_sum_1d = src_in_sum
            del out_sum, in_sum, src_in_sum

        # Distinct counterparties (fan) per calendar day / week bucket and over all time.
        for w, size in (("1d", DAY), ("7d", WEEK)):
            bucket = t // size - t.min() // size
            n_buckets = int(bucket.max()) + 1
            # Edges are in time order, so (node, bucket) is sorted in the node's CSR order.
            rows[f"src_fan_out_{w}"] = _distinct_per_group(src * n_buckets + bucket, dst,
                                                           by_src.order)
            rows[f"dst_fan_in_{w}"] = _distinct_per_group(dst * n_buckets + bucket, src,
                                                          by_dst.order)
        pair = (src << 32) | dst
        pairs, pair_inverse, pair_counts = np.unique(pair, return_inverse=True,
                                                     return_counts=True)
        node_feats["out_fan"] = np.bincount(pairs >> 32, minlength=n_nodes)
        node_feats["in_fan"] = np.bincount(pairs & 0xFFFFFFFF, minlength=n_nodes)
        node_feats["out_deg"] = np.bincount(src, minlength=n_nodes)
        node_feats["in_deg"] = np.bincount(dst, minlength=n_nodes)

        # Dwell: how long the payer held money it last received, and how much of it goes on
        # here; the payee: how soon it pays on, and what share of this payment.
        rows["last_in"] = by_dst.last_before(by_src)
        rows["src_in_amount_1d_ratio"] = \
            np.minimum(amount / np.maximum(in_sum_1d, 1.0), 10.0) * (in_sum_1d > 0)
        rows["next_out"] = by_src.first_after(by_dst)
        del by_src, by_dst, in_sum_1d

        # Pair structure: money coming back (cycles of length 2) and repeated pairs.
        back = (dst << 32) | src
        pos = np.minimum(np.searchsorted(pairs, back), len(pairs) - 1)
        rows["reciprocal"] = pairs[pos] == back
        rows["pair_count"] = pair_counts[pair_inverse].astype(np.int32)
        del pair, back, pos, pairs, pair_inverse, pair_counts

        # Cross-institution reach: distinct counterparty banks per account.
        bank = np.asarray(graph.node_bank_code, dtype=np.int64)
        n_banks = int(bank.max()) + 1 if len(bank) else 1
        src_bank, dst_bank = bank[src], bank[dst]
        out_banks = _unique(src * n_banks + dst_bank)
        in_banks = _unique(dst * n_banks + src_bank)
        node_feats["src_bank_diversity"] = np.bincount(out_banks // n_banks, minlength=n_nodes)
        node_feats["dst_bank_diversity"] = np.bincount(in_banks // n_banks, minlength=n_nodes)
        self._bank = bank
        del src_bank, dst_bank, out_banks, in_banks

        # How unusual this payment's currency and format are for the payer.
        currency = np.asarray(graph.currency_code, dtype=np.int64)
        self._format = np.asarray(graph.format_code)
        rows["currency_count_src"] = _group_size(src, currency)
        rows["format_count_src"] = _group_size(src, self._format)
        self._format_code = {name: graph.formats.index(name) if name in graph.formats else -1
                             for name in _FORMATS}
        self._rows, self._nodes = rows, node_feats

    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, len(self.columns)

    def select(self, columns: list[str]) -> "FeatureTable":
        """The same table handing out only `columns` (in that order)."""
        out = object.__new__(FeatureTable)
        out.__dict__.update(self.__dict__)
        out.columns = list(columns)
        return out

    def take_rows(self, idx) -> np.ndarray:
        """float64 matrix of the features (`columns`) of edges `idx` (an index array or
        slice), no NaN."""
        idx = np.arange(self.n_rows)[idx] if isinstance(idx, slice) else \
            np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), len(self.columns)), dtype=np.float64, order="F")
        if len(idx) == 0:
            return out
        if self._need is not None and not self._need[idx].all():
            raise ValueError("feature rows requested that the table was not built for")
        cache: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.columns):
            out[:, j] = self._column(name, idx, cache)
        out[np.isnan(out)] = 0.0
        return out

    def _column(self, name: str, idx: np.ndarray, cache: dict) -> np.ndarray:
        rows, nodes = self._rows, self._nodes

        def get(key, fn):
            if key not in cache:
                cache[key] = fn()
            return cache[key]

        amount = get("amount", lambda: self._amount[idx])
        src = get("src", lambda: self._src[idx])
        dst = get("dst", lambda: self._dst[idx])
        t = get("t", lambda: self._t[idx])
        log_amount = get("log_amount", lambda: np.log1p(amount))
        if name.startswith("pattern_"):
            return self._patterns[name][idx] if self._patterns is not None else 0.0
        if name == "log_amount":
            return log_amount
        if name == "amount_to_src_median":
            return log_amount - np.log1p(nodes["src_median"][src])
        if name == "amount_to_dst_median":
            return log_amount - np.log1p(nodes["dst_median"][dst])
        if name == "round_100":
            return _distance_to_round(amount, 100.0)
        if name == "round_1000":
            return _distance_to_round(amount, 1000.0)
        if name == "below_ctr":
            return ((amount >= 0.8 * CTR_THRESHOLD) & (amount < CTR_THRESHOLD)).astype(float)
        if name == "ctr_gap":
            return np.clip((CTR_THRESHOLD - amount) / CTR_THRESHOLD, -1.0, 1.0)
        per_node = {"src_fan_out_all": ("out_fan", src), "src_fan_in_all": ("in_fan", src),
                    "dst_fan_in_all": ("in_fan", dst), "dst_fan_out_all": ("out_fan", dst),
                    "src_out_deg_all": ("out_deg", src), "dst_in_deg_all": ("in_deg", dst),
                    "src_bank_diversity": ("src_bank_diversity", src),
                    "dst_bank_diversity": ("dst_bank_diversity", dst)}
        if name in per_node:
            key, node = per_node[name]
            return nodes[key][node]
        if name in ("src_dwell", "src_forward_fraction"):
            last_in = rows["last_in"][idx]
            has_in = last_in >= 0
            li = np.where(has_in, last_in, 0)
            if name == "src_dwell":
                return np.log1p(np.where(has_in, t - self._t[li], NO_PRIOR_INFLOW))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(has_in, np.minimum(amount / self._amount[li], 10.0), 0.0)
        if name in ("dst_next_out_delay", "dst_forward_fraction"):
            next_out = rows["next_out"][idx]
            has_out = next_out >= 0
            no = np.where(has_out, next_out, 0)
            if name == "dst_next_out_delay":
                return np.log1p(np.where(has_out, self._t[no] - t, NO_PRIOR_INFLOW))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(has_out, np.minimum(self._amount[no] / amount, 10.0), 0.0)
        if name == "cross_bank":
            return (self._bank[src] != self._bank[dst]).astype(float)
        if name in ("currency_rarity_src", "format_rarity_src"):
            count = rows[name.replace("rarity", "count")][idx].astype(float)
            return 1.0 - count / nodes["out_deg"][src]
        if name == "hour":
            return ((t % DAY) // 3600).astype(float)
        if name.startswith("format_"):
            fmt = _FORMATS[[f"format_{f.lower().replace(' ', '_')}" for f in _FORMATS].index(name)]
            return (self._format[idx] == self._format_code[fmt]).astype(float)
        return rows[name][idx]


def transaction_features(graph, instances=None, config=None) -> pd.DataFrame:
    """One row of `FEATURE_NAMES` per edge of `graph` (same order); no NaN.

    `instances` are typology `PatternInstance`s (their ``edge_idx`` index the graph's edges);
    `config` is accepted for symmetry with the other detection stages and not read yet.
    """
    table = FeatureTable(graph, instances)
    return pd.DataFrame(table.take_rows(slice(None)), columns=FEATURE_NAMES)
