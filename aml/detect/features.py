"""Per-transaction graph features for the pooled model.

`transaction_features(graph)` returns one row per edge of a `TransactionGraph`, in the graph's
edge order (sorted by time). Everything is vectorised: windowed counts use a sorted
``(node, time)`` key and `np.searchsorted`, distinct counts use pandas group-bys, so the cost
is a few sorts of the edge list — no Python loop over edges.

Windows are two-sided (``[t - w, t + w]``): detection runs over a whole batch after the fact,
so activity shortly after a payment (the mule forwarding it on) is as telling as activity
before it. Labels are never read here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from aml.schema import ALERT_PATTERNS, PAYMENT_FORMATS

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


def _node_time_key(node: np.ndarray, t: np.ndarray, t0: int) -> np.ndarray:
    """One int64 per (node, time) that sorts by node, then time."""
    return (node.astype(np.int64) << 32) | (t - t0).astype(np.int64)


def _window_count_and_sum(node_of_set, t_of_set, amount_of_set, node_q, t_q, width, t0):
    """For each query (node, t): how many set edges of that node lie in [t-w, t+w], and their sum."""
    key = _node_time_key(node_of_set, t_of_set, t0)
    order = np.argsort(key, kind="stable")
    key = key[order]
    csum = np.concatenate([[0.0], np.cumsum(amount_of_set[order])])
    lo = np.searchsorted(key, _node_time_key(node_q, np.maximum(t_q - width, t0), t0), "left")
    hi = np.searchsorted(key, _node_time_key(node_q, t_q + width, t0), "right")
    return (hi - lo).astype(np.float64), csum[hi] - csum[lo]


def _last_before(node_of_set, t_of_set, node_q, t_q, t0, strictly=True):
    """Index (into the set) of the node's last set edge before t, or -1."""
    key = _node_time_key(node_of_set, t_of_set, t0)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    qkey = _node_time_key(node_q, t_q, t0)
    pos = np.searchsorted(skey, qkey, "left" if strictly else "right") - 1
    ok = pos >= 0
    pos_c = np.where(ok, pos, 0)
    ok &= (skey[pos_c] >> 32) == node_q.astype(np.int64)
    return np.where(ok, order[pos_c], -1)


def _first_after(node_of_set, t_of_set, node_q, t_q, t0):
    """Index (into the set) of the node's first set edge strictly after t, or -1."""
    key = _node_time_key(node_of_set, t_of_set, t0)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    pos = np.searchsorted(skey, _node_time_key(node_q, t_q, t0), "right")
    ok = pos < len(skey)
    pos_c = np.where(ok, pos, 0)
    ok &= (skey[pos_c] >> 32) == node_q.astype(np.int64)
    return np.where(ok, order[pos_c], -1)


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


def transaction_features(graph, instances=None, config=None) -> pd.DataFrame:
    """One row of `FEATURE_NAMES` per edge of `graph` (same order); no NaN.

    `instances` are typology `PatternInstance`s (their ``edge_idx`` index the graph's edges);
    `config` is accepted for symmetry with the other detection stages and not read yet.
    """
    e = graph.edges
    n = len(e)
    if n == 0:
        return pd.DataFrame(np.zeros((0, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    t = e["t"].to_numpy(np.int64)
    src = e["src"].to_numpy(np.int64)
    dst = e["dst"].to_numpy(np.int64)
    amount = e["amount"].to_numpy(np.float64)
    t0 = int(t.min()) - WEEK - 1
    f: dict[str, np.ndarray] = {}

    # Amount shape.
    f["log_amount"] = np.log1p(amount)
    src_median = pd.Series(amount).groupby(src).transform("median").to_numpy()
    dst_median = pd.Series(amount).groupby(dst).transform("median").to_numpy()
    f["amount_to_src_median"] = np.log1p(amount) - np.log1p(src_median)
    f["amount_to_dst_median"] = np.log1p(amount) - np.log1p(dst_median)
    f["round_100"] = _distance_to_round(amount, 100.0)
    f["round_1000"] = _distance_to_round(amount, 1000.0)
    f["below_ctr"] = ((amount >= 0.8 * CTR_THRESHOLD) & (amount < CTR_THRESHOLD)).astype(float)
    f["ctr_gap"] = np.clip((CTR_THRESHOLD - amount) / CTR_THRESHOLD, -1.0, 1.0)

    # Windowed degree and volume of both ends, out- and in-side.
    for w, width in WINDOWS.items():
        f[f"src_out_deg_{w}"], f[f"src_out_amount_{w}"] = _window_count_and_sum(
            src, t, amount, src, t, width, t0)
        f[f"src_in_deg_{w}"], _ = _window_count_and_sum(dst, t, amount, src, t, width, t0)
        f[f"dst_in_deg_{w}"], f[f"dst_in_amount_{w}"] = _window_count_and_sum(
            dst, t, amount, dst, t, width, t0)
        f[f"dst_out_deg_{w}"], _ = _window_count_and_sum(src, t, amount, dst, t, width, t0)
        f[f"src_out_amount_{w}"] = np.log1p(f[f"src_out_amount_{w}"])
        f[f"dst_in_amount_{w}"] = np.log1p(f[f"dst_in_amount_{w}"])

    # Distinct counterparties (fan) per calendar day / week bucket and over all time.
    frame = pd.DataFrame({"src": src, "dst": dst, "day": t // DAY, "week": t // WEEK})
    for w, bucket in (("1d", "day"), ("7d", "week")):
        f[f"src_fan_out_{w}"] = frame.groupby(["src", bucket])["dst"].transform("nunique").to_numpy(float)
        f[f"dst_fan_in_{w}"] = frame.groupby(["dst", bucket])["src"].transform("nunique").to_numpy(float)
    out_fan = frame.groupby("src")["dst"].nunique()
    in_fan = frame.groupby("dst")["src"].nunique()
    f["src_fan_out_all"] = out_fan.reindex(src, fill_value=0).to_numpy(float)
    f["src_fan_in_all"] = in_fan.reindex(src, fill_value=0).to_numpy(float)
    f["dst_fan_in_all"] = in_fan.reindex(dst, fill_value=0).to_numpy(float)
    f["dst_fan_out_all"] = out_fan.reindex(dst, fill_value=0).to_numpy(float)
    f["src_out_deg_all"] = np.bincount(src, minlength=graph.n_nodes)[src].astype(float)
    f["dst_in_deg_all"] = np.bincount(dst, minlength=graph.n_nodes)[dst].astype(float)

    # Dwell: how long the payer held money it last received, and how much of it goes on here.
    last_in = _last_before(dst, t, src, t, t0)
    has_in = last_in >= 0
    li = np.where(has_in, last_in, 0)
    f["src_dwell"] = np.log1p(np.where(has_in, t - t[li], NO_PRIOR_INFLOW))
    f["src_forward_fraction"] = np.where(has_in, np.minimum(amount / amount[li], 10.0), 0.0)
    _, in_sum_1d = _window_count_and_sum(dst, t, amount, src, t, DAY, t0)
    f["src_in_amount_1d_ratio"] = np.minimum(amount / np.maximum(in_sum_1d, 1.0), 10.0) * (in_sum_1d > 0)
    # ... and the payee: how soon it pays on, and what share of this payment.
    next_out = _first_after(src, t, dst, t, t0)
    has_out = next_out >= 0
    no = np.where(has_out, next_out, 0)
    f["dst_next_out_delay"] = np.log1p(np.where(has_out, t[no] - t, NO_PRIOR_INFLOW))
    f["dst_forward_fraction"] = np.where(has_out, np.minimum(amount[no] / amount, 10.0), 0.0)

    # Pair structure: money coming back (cycles of length 2) and repeated pairs.
    pair = (src << 32) | dst
    back = (dst << 32) | src
    f["reciprocal"] = np.isin(back, pair).astype(float)
    f["pair_count"] = pd.Series(pair).groupby(pair).transform("size").to_numpy(float)

    # Cross-institution reach.
    banks = pd.DataFrame({"src": src, "dst": dst,
                          "sb": e["src_bank"].astype(str).to_numpy(),
                          "db": e["dst_bank"].astype(str).to_numpy()})
    f["src_bank_diversity"] = banks.groupby("src")["db"].transform("nunique").to_numpy(float)
    f["dst_bank_diversity"] = banks.groupby("dst")["sb"].transform("nunique").to_numpy(float)
    f["cross_bank"] = (banks["sb"].to_numpy() != banks["db"].to_numpy()).astype(float)

    # How unusual this payment's currency and format are for the payer.
    fmt = e["payment_format"].astype(str).to_numpy()
    cur = e["currency"].astype(str).to_numpy()
    f["currency_rarity_src"] = 1.0 - pd.DataFrame({"s": src, "c": cur}).groupby(
        ["s", "c"])["c"].transform("size").to_numpy(float) / np.bincount(src)[src]
    f["format_rarity_src"] = 1.0 - pd.DataFrame({"s": src, "c": fmt}).groupby(
        ["s", "c"])["c"].transform("size").to_numpy(float) / np.bincount(src)[src]
    f["hour"] = ((t % DAY) // 3600).astype(float)
    for name in _FORMATS:
        f[f"format_{name.lower().replace(' ', '_')}"] = (fmt == name).astype(float)

    f.update(_pattern_columns(n, instances))
    out = pd.DataFrame(f, columns=FEATURE_NAMES)
    return out.fillna(0.0)
