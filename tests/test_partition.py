"""Time-partitioned detection finds exactly what whole-graph detection finds, per detector."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.enclave.detect.config import DEFAULT_CONFIG_PATH, DetectionConfig
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.detect.partition import (
    canonical_order, detect_typologies, detector_reach, overlap_s, time_partitions,
)
from aml.enclave.detect.pipeline import run_detection
from aml.enclave.detect.typologies import build_detectors
from aml.enclave.detect.typologies.base import merge_overlapping
from aml.tools.synth import generate

DEFAULT = DetectionConfig.load()


def _short_windows() -> DetectionConfig:
    """The default config with every window and dwell a quarter as long: the reach is then
    small next to the data's 30 days, so partitions cut through many more patterns."""
    text = DEFAULT_CONFIG_PATH.read_text()
    text = re.sub(r"(?m)^((?:window|max_dwell|link_dwell)_hours) = ([0-9.]+)",
                  lambda m: f"{m.group(1)} = {float(m.group(2)) / 4}", text)
    return DetectionConfig.from_bytes(text.encode())


SHORT = _short_windows()


def _key(instances):
    return sorted((i.pattern, tuple(int(e) for e in i.edge_idx), round(i.score, 12),
                   repr(sorted(i.evidence.items()))) for i in instances)


@pytest.fixture(scope="module")
def graphs():
    out = {}
    for seed in (0, 1):
        table, _ = generate(banks=4, accounts=250, days=30, seed=seed)
        out[seed] = table
    return out


@pytest.mark.parametrize("config", [DEFAULT, SHORT], ids=["default", "short_windows"])
@pytest.mark.parametrize("seed", [0, 1])
def test_partitioned_instances_equal_whole_graph_per_detector(graphs, config, seed):
    graph = TransactionGraph.from_table(graphs[seed], config)
    detectors = build_detectors(config)
    whole = {d.name: merge_overlapping(canonical_order(d.fit(graph).detect(graph)))
             for d in detectors}
    assert sum(len(v) for v in whole.values()) > 20  # the data has patterns to lose
    for n in (3, 8):
        found = detect_typologies(graph, detectors, partitions=n)
        for d in detectors:
            mine = [i for i in found if i.pattern == d.name]
            assert _key(mine) == _key(whole[d.name]), (d.name, n)


def test_single_partition_is_the_whole_graph_run(graphs):
    graph = TransactionGraph.from_table(graphs[0], DEFAULT)
    detectors = build_detectors(DEFAULT)
    expected = [i for d in detectors for i in merge_overlapping(canonical_order(d.fit(graph).detect(graph)))]
    assert _key(detect_typologies(graph, detectors, partitions=1)) == _key(expected)


def test_partitioned_alerts_equal_single_process_alerts(graphs):
    table = graphs[1]
    # The last week is new (unlabelled): alerts are raised only for instances touching it.
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    new = ts >= ts.max() - 7 * 86_400 * 10**6
    label = np.where(new, None, table.column("label").to_numpy(zero_copy_only=False))
    table = table.set_column(table.schema.get_field_index("label"), "label",
                             pa.array(label, pa.int8()))
    key = b"\x01" * 32
    single = run_detection(table, SHORT, alert_key=key, placeholder_key=key)
    split = run_detection(table, SHORT, alert_key=key, placeholder_key=key, partitions=5)
    assert sum(single.counts.values()) > 0
    assert split.counts == single.counts
    for bank in single.banks:
        assert split.alerts_for(bank).equals(single.alerts_for(bank)), bank


def test_random_chain_is_not_time_local_and_runs_on_the_whole_graph():
    reach = {d.name: detector_reach(d) for d in build_detectors(DEFAULT)}
    assert reach.pop("random_chain") is None
    assert all(r is not None and r[0] > 0 and r[1] > 0 for r in reach.values())


def test_overlap_follows_the_config():
    before, after = overlap_s(build_detectors(DEFAULT))
    short_before, short_after = overlap_s(build_detectors(SHORT))
    assert (short_before, short_after) == (before // 4, after // 4)
    # At least the longest pattern window of any enabled detector, either side.
    longest = max(DEFAULT.section(n).get("window_hours", 0) for n in DEFAULT.raw) * 3600
    assert min(before, after) >= longest


def test_time_slice_keeps_whole_graph_account_facts(graphs):
    graph = TransactionGraph.from_table(graphs[0], DEFAULT)
    a, b = len(graph) // 3, 2 * len(graph) // 3
    part = graph.time_slice(a, b)
    assert len(part) == b - a and part.n_nodes == graph.n_nodes
    np.testing.assert_array_equal(part.t, graph.t[a:b])
    np.testing.assert_array_equal(part.src, graph.src[a:b])
    np.testing.assert_array_equal(part.is_hub, graph.is_hub)
    np.testing.assert_array_equal(part.degree, graph.degree)
    np.testing.assert_array_equal(part.node_first_t, graph.node_first_t)
    np.testing.assert_array_equal(part.pair_first, graph.pair_first[a:b])
    # Adjacency is the slice's own: node n's out-edges are its global out-edges in [a, b).
    n = int(graph.src[a])
    glob = graph.out_edges(n)
    np.testing.assert_array_equal(part.out_edges(n) + a, glob[(glob >= a) & (glob < b)])
    inner = part.time_slice(10, 20)
    np.testing.assert_array_equal(inner.pair_first, graph.pair_first[a + 10:a + 20])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=80), st.integers(1, 12),
       st.integers(0, 60), st.integers(0, 60))
def test_cores_tile_the_edges_and_spans_cover_the_overlap(times, n, before, after):
    t = np.sort(np.asarray(times, dtype=np.int64))
    parts = time_partitions(t, n, (before, after))
    assert 1 <= len(parts) <= n
    covered = np.zeros(len(t), dtype=int)
    for p in parts:
        lo, hi = p.core
        covered[lo:hi] += 1
        assert np.all((t[lo:hi] >= p.lo) & (t[lo:hi] < p.hi))
        s0, s1 = p.span
        assert s0 <= lo and hi <= s1
        inside = (t >= p.lo - before) & (t <= p.hi - 1 + after)
        assert np.all(np.flatnonzero(inside) >= s0) and np.all(np.flatnonzero(inside) < s1)
    assert np.all(covered == 1)  # every edge in exactly one core
    assert [p.lo for p in parts] == sorted(p.lo for p in parts)
