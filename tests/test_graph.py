"""TransactionGraph construction: currency conversion, ordering, adjacency, batch merging."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from aml.enclave.detect.config import DEFAULT_CONFIG_PATH, DetectionConfig
from aml.enclave.detect.graph import TransactionGraph
from aml.core.errors import ConfigError
from aml.core.schema import CURRENCIES, TRANSACTION_SCHEMA

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def row(txn, hours, src, dst, amount, currency="USD", label=None, fmt="Wire"):
    (sb, sa), (db, da) = src, dst
    return dict(txn_id=txn, timestamp=T0 + dt.timedelta(hours=hours), src_bank=sb,
                src_account=sa, dst_bank=db, dst_account=da, amount=float(amount),
                currency=currency, amount_received=None, receiving_currency=None,
                payment_format=fmt, label=label)


def table(rows, **extra) -> pa.Table:
    t = pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA)
    for name, values in extra.items():
        t = t.append_column(name, pa.array(values))
    return t


@pytest.fixture(scope="module")
def config():
    return DetectionConfig.load()


A, B, C = ("B01", "A0000001"), ("B02", "A0000002"), ("B01", "A0000003")


def test_config_loads_default_and_hashes_file_bytes(config):
    import hashlib

    assert config.hash == hashlib.sha256(DEFAULT_CONFIG_PATH.read_bytes()).hexdigest()
    assert CURRENCIES <= set(config.rates)
    assert config.rates["USD"] == 1.0 and config.base_currency == "USD"
    assert config.section("fan_out")["min_degree"] >= 2
    assert "threshold" in config.model


def test_config_rejects_missing_rates(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[currency]\nbase = "USD"\n[currency.rates]\nUSD = 1.0\n')
    with pytest.raises(ConfigError):
        DetectionConfig.load(p)


def test_amounts_converted_to_base_currency(config):
    g = TransactionGraph.from_table(table([
        row("t1", 1, A, B, 100, "EUR"), row("t2", 2, B, A, 1000, "JPY"),
        row("t3", 3, A, C, 50, "USD")]), config)
    amounts = dict(zip(g.edges.txn_id, g.amount))
    assert amounts["t1"] == pytest.approx(100 * config.rates["EUR"])
    assert amounts["t2"] == pytest.approx(1000 * config.rates["JPY"])
    assert amounts["t3"] == pytest.approx(50.0)


def test_unknown_currency_is_a_config_error_without_data(config):
    with pytest.raises(ConfigError) as exc:
        TransactionGraph.from_table(table([row("secret-txn", 1, A, B, 5, "XXX")]), config)
    assert "secret-txn" not in str(exc.value) and "XXX" not in str(exc.value)


def test_edges_sorted_by_time_then_txn_id(config):
    g = TransactionGraph.from_table(table([
        row("t9", 5, A, B, 1), row("t2", 1, B, C, 1), row("t1", 5, C, A, 1),
        row("t0", 3, A, C, 1)]), config)
    assert list(g.edges.txn_id) == ["t2", "t0", "t1", "t9"]
    assert np.all(np.diff(g.t) >= 0)
    assert g.t.dtype == np.int64 and g.src.dtype == np.int32


def test_nodes_are_bank_account_pairs(config):
    same_id_other_bank = ("B02", "A0000001")
    g = TransactionGraph.from_table(table([row("t1", 1, A, same_id_other_bank, 1)]), config)
    assert g.n_nodes == 2
    assert set(zip(g.node_bank, g.node_account)) == {A, same_id_other_bank}


def test_csr_adjacency_lists_edges_per_node_in_time_order(config):
    g = TransactionGraph.from_table(table([
        row("t1", 3, A, B, 1), row("t2", 1, A, C, 1), row("t3", 2, B, A, 1),
        row("t4", 4, A, B, 1)]), config)
    node = {(b, a): i for i, (b, a) in enumerate(zip(g.node_bank, g.node_account))}
    out_a = g.out_edges(node[A])
    assert list(g.edges.txn_id.to_numpy()[out_a]) == ["t2", "t1", "t4"]
    assert list(g.edges.txn_id.to_numpy()[g.in_edges(node[A])]) == ["t3"]
    assert g.out_ptr[-1] == g.in_ptr[-1] == len(g)
    assert sorted(np.concatenate([g.out_edges(n) for n in range(g.n_nodes)])) == list(range(4))
    assert list(g.edges.txn_id.to_numpy()[g.out_edges_between(node[A], g.t.min() + 3600,
                                                            g.t.min() + 2 * 3600)]) == ["t1"]


def test_is_new_defaults_to_unlabelled_and_submitted_by_to_members(config):
    g = TransactionGraph.from_table(table([
        row("t1", 1, A, B, 1, label=0), row("t2", 2, A, ("X01", "Z"), 1)]), config,
        members=["B01", "B02"])
    assert list(g.is_new) == [False, True]
    assert list(g.edges.submitted_by) == [("B01", "B02"), ("B01",)]


def test_duplicate_rows_from_both_banks_become_one_edge(config):
    rows = [row("t1", 1, A, B, 10), row("t1", 1, A, B, 10), row("t2", 2, B, A, 5)]
    g = TransactionGraph.from_table(
        table(rows, submitted_by=[["B01"], ["B02"], ["B02"]]), config)
    assert len(g) == 2
    assert set(g.edges.submitted_by.iloc[0]) == {"B01", "B02"}
    assert tuple(g.edges.submitted_by.iloc[1]) == ("B02",)


def test_pair_first_and_subgraph(config):
    g = TransactionGraph.from_table(table([
        row("t1", 1, A, B, 1), row("t2", 2, A, B, 1), row("t3", 3, B, A, 1)]), config)
    assert list(g.pair_first) == [True, False, True]
    sub = g.subgraph_nx(np.array([0, 1]))
    assert sub.number_of_edges() == 2 and sub.number_of_nodes() == 2


def test_empty_table(config):
    g = TransactionGraph.from_table(TRANSACTION_SCHEMA.empty_table(), config)
    assert len(g) == 0 and g.n_nodes == 0 and list(g.out_ptr) == [0]


def test_config_pickles_with_same_hash(config):
    import pickle

    again = pickle.loads(pickle.dumps(config))
    assert again.hash == config.hash and dict(again.section("cycle")) == dict(config.section("cycle"))
