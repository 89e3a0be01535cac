"""Per-transaction features: shape, no NaN, determinism, and that they see known structure."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.features import FEATURE_NAMES, transaction_features
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.detect.typologies.base import PatternInstance
from aml.core.schema import TRANSACTION_SCHEMA

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


def make_table(rows: list[tuple]) -> pa.Table:
    """rows: (txn_id, seconds after T0, src_bank, src_account, dst_bank, dst_account, amount)."""
    cols = {name: [] for name in TRANSACTION_SCHEMA.names}
    for txn, dt, sb, sa, db, da, amount in rows:
        cols["txn_id"].append(txn)
        cols["timestamp"].append((T0 + dt) * 1_000_000)
        cols["src_bank"].append(sb)
        cols["src_account"].append(sa)
        cols["dst_bank"].append(db)
        cols["dst_account"].append(da)
        cols["amount"].append(float(amount))
        cols["currency"].append("USD")
        cols["amount_received"].append(None)
        cols["receiving_currency"].append(None)
        cols["payment_format"].append("Wire")
        cols["label"].append(0)
    return pa.Table.from_pydict(cols, schema=TRANSACTION_SCHEMA)


def background(n: int = 200, seed: int = 1) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(f"bg{i}", int(rng.integers(0, 20 * 86_400)), "B1", f"a{rng.integers(0, 40)}",
             "B2", f"b{rng.integers(0, 40)}", round(float(rng.lognormal(5, 1)), 2))
            for i in range(n)]


@pytest.fixture(scope="module")
def config():
    return DetectionConfig.load()


def graph_of(rows, config):
    return TransactionGraph.from_table(make_table(rows), config)


def test_shape_names_no_nan_and_deterministic(config):
    g = graph_of(background(), config)
    a = transaction_features(g)
    b = transaction_features(g)
    assert list(a.columns) == FEATURE_NAMES
    assert len(a) == len(g.edges)
    assert np.isfinite(a.to_numpy()).all()
    assert a.equals(b)


def test_fan_out_counts_distinct_recipients_in_the_window(config):
    star = [(f"s{k}", 10 * 86_400 + 600 * k, "B3", "hub", "B2", f"mule{k}", 900.0) for k in range(7)]
    g = graph_of(background() + star, config)
    f = transaction_features(g)
    is_star = g.edges["txn_id"].str.startswith("s").to_numpy()
    assert (f.loc[is_star, "src_fan_out_1d"] == 7).all()
    assert (f.loc[is_star, "src_out_deg_1d"] == 7).all()
    assert f.loc[~is_star, "src_fan_out_1d"].max() < 7
    assert (f.loc[is_star, "cross_bank"] == 1).all()


def test_dwell_and_forwarding_see_a_pass_through(config):
    rows = background() + [("in", 5 * 86_400, "B1", "x", "B3", "mule", 5000.0),
                           ("out", 5 * 86_400 + 1800, "B3", "mule", "B2", "y", 4900.0)]
    g = graph_of(rows, config)
    f = transaction_features(g)
    out = np.flatnonzero(g.edges["txn_id"].to_numpy() == "out")[0]
    inc = np.flatnonzero(g.edges["txn_id"].to_numpy() == "in")[0]
    assert f.at[out, "src_dwell"] == pytest.approx(np.log1p(1800))
    assert f.at[out, "src_forward_fraction"] == pytest.approx(0.98)
    assert f.at[inc, "dst_forward_fraction"] == pytest.approx(0.98)


def test_amount_shape_features(config):
    rows = background() + [("struct", 3 * 86_400, "B1", "s", "B2", "t", 9500.0),
                           ("round", 3 * 86_400 + 5, "B1", "s", "B2", "t", 3000.0)]
    g = graph_of(rows, config)
    f = transaction_features(g).set_index(g.edges["txn_id"])
    assert f.at["struct", "below_ctr"] == 1.0 and f.at["round", "below_ctr"] == 0.0
    assert f.at["round", "round_1000"] == 0.0
    assert f.at["struct", "round_1000"] == pytest.approx(1.0)  # 9500 is half-way


def test_pattern_participation_comes_from_instances(config):
    g = graph_of(background(50), config)
    inst = PatternInstance("cycle", np.array([0, 3, 3]), 0.7, {})
    f = transaction_features(g, [inst])
    assert f["pattern_cycle"].tolist()[:4] == [1.0, 0.0, 0.0, 1.0]
    assert f["pattern_count"].sum() == 2
    assert f.at[3, "pattern_max_score"] == pytest.approx(0.7)


def test_empty_graph(config):
    g = graph_of([], config)
    f = transaction_features(g)
    assert f.shape == (0, len(FEATURE_NAMES))
