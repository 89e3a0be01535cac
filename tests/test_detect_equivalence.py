"""The fast paths of detection give exactly what the plain ones give.

Cycle enumeration reproduces networkx.simple_cycles (same cycles, order and start nodes), and
the search for large components finds the same cycles;
`FeatureTable` rows equal `transaction_features`; the pooled model trained from a
`FeatureTable` equals the one trained from the float64 matrix; the graph's compact columns
read back as the input.
"""

from __future__ import annotations

import random

import networkx as nx
import numpy as np
import pytest

from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.features import FEATURE_NAMES, FeatureTable, transaction_features
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.detect.model import PooledModel
from aml.enclave.detect.typologies.cycle import removal_order_cycles, simple_cycles


class _Everything:
    def __contains__(self, item):
        return True


def _random_pairs(rng: random.Random):
    n = rng.randint(3, 60)
    pairs = dict.fromkeys((rng.randrange(n) * 37 + 3, rng.randrange(n) * 37 + 3)
                          for _ in range(rng.randint(n, 4 * n)))
    return [(u, v) for u, v in pairs if u != v]


def test_simple_cycles_equal_networkx_in_order_and_rotation():
    rng = random.Random(7)
    for _ in range(150):
        pairs = _random_pairs(rng)
        bound = rng.randint(3, 8)
        expected = list(nx.simple_cycles(nx.DiGraph(pairs), length_bound=bound))
        assert list(simple_cycles(pairs, bound)) == expected
        # the pruned search without pruning: the same
        assert list(simple_cycles(pairs, bound, _Everything())) == expected


def test_linked_search_keeps_order_and_drops_only_unlinkable_cycles():
    rng = random.Random(8)
    for _ in range(150):
        pairs = _random_pairs(rng)
        bound = rng.randint(3, 8)
        linked = {(a, b, c) for a, b in pairs for b2, c in pairs if b2 == b and rng.random() < 0.5}

        def at_most_one_break(cyc):
            k = len(cyc)
            return sum((cyc[i], cyc[(i + 1) % k], cyc[(i + 2) % k]) not in linked
                       for i in range(k)) <= 1

        expected = [c for c in nx.simple_cycles(nx.DiGraph(pairs), length_bound=bound)
                    if at_most_one_break(c)]
        assert list(simple_cycles(pairs, bound, linked)) == expected


def test_removal_order_search_finds_the_same_cycles():
    rng = random.Random(9)

    def rotated(cyc):  # the same cycle from its smallest node
        i = cyc.index(min(cyc))
        return tuple(cyc[i:] + cyc[:i])

    for _ in range(150):
        pairs = _random_pairs(rng)
        bound = rng.randint(3, 8)
        linked = {(a, b, c) for a, b in pairs for b2, c in pairs if b2 == b and rng.random() < 0.5}
        expected = sorted(rotated(c) for c in simple_cycles(pairs, bound, linked))
        found = [rotated(c) for c in removal_order_cycles(pairs, bound, linked)]
        assert sorted(found) == expected and len(set(found)) == len(found)


@pytest.fixture(scope="module")
def graph():
    from aml.tools.synth import generate

    transactions, _ = generate(banks=3, accounts=300, days=20, seed=1)
    return TransactionGraph.from_table(transactions, DetectionConfig.load())


def test_feature_table_rows_equal_transaction_features(graph):
    full = transaction_features(graph).to_numpy()
    table = FeatureTable(graph)
    rows = np.sort(np.random.default_rng(0).choice(len(graph), 300, replace=False))
    assert np.array_equal(table.take_rows(rows), full[rows])
    names = FEATURE_NAMES[3:9]
    assert np.array_equal(table.select(names).take_rows(rows),
                          full[rows][:, [FEATURE_NAMES.index(n) for n in names]])


def test_model_from_feature_table_equals_model_from_matrix(graph):
    y = graph.label.astype(np.float64)
    table = FeatureTable(graph)
    X = table.take_rows(np.arange(len(graph)))
    params = dict(max_iter=15, max_train_negatives=2_000, min_positives=5)
    a = PooledModel(**params).fit(X, y)
    b = PooledModel(**params).fit(table, y)
    assert a.threshold_ == b.threshold_
    assert np.array_equal(a.raw_score(X), b.raw_score(table))


def test_graph_columns_read_back(graph):
    edges = graph.edges
    assert list(edges["txn_id"]) == graph.txn_ids(np.arange(len(graph)))
    assert list(edges["payment_format"]) == list(graph.payment_format)
    assert (edges["src_bank"].to_numpy() == graph.node_bank[graph.src]).all()
    sub = graph.submitted_by_of(np.arange(len(graph)))
    assert all(graph.src_submitted[i] == (edges["src_bank"].iloc[i] in s)
               and graph.dst_submitted[i] == (edges["dst_bank"].iloc[i] in s)
               for i, s in enumerate(sub))
