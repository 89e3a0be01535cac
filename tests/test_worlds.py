"""The independently designed data worlds behind `aml synth --world NAME`."""

from __future__ import annotations

import hashlib
import itertools

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from aml import cli
from aml.core.errors import ConfigError
from aml.tools.evaluate import member_banks
from aml.core.schema import PATTERN_TABLE_SCHEMA, TRANSACTION_SCHEMA
from aml.tools.synth import WORLDS, generate, write_synthetic

EIGHT = {"fan_out", "fan_in", "gather_scatter", "scatter_gather", "cycle", "random_chain",
         "bipartite", "stack"}
SMALL = dict(accounts=3_000, days=30, seed=4)


@pytest.fixture(scope="module", params=["amlworld", "amlsim"])
def world(request):
    txns, patterns = generate(world=request.param, **SMALL)
    return request.param, txns, patterns, txns.to_pandas(), patterns.to_pandas()


def test_the_original_world_is_unchanged():
    """Default world, same arguments: the same rows as the generator before worlds existed
    (hash of its output taken from the last commit before the package split)."""
    t, p = generate(banks=5, accounts=600, days=21, seed=3)
    digest = hashlib.sha256(t.to_pandas().to_csv(index=False).encode()
                            + p.to_pandas().to_csv(index=False).encode()).hexdigest()
    assert digest == "3d62bd77de58417fd17ca5dc51a220faeef4f335da2b5bf1c985546378499be1"


def test_worlds_are_listed_and_unknown_ones_refused():
    assert {"original", "amlworld", "amlsim"} <= set(WORLDS)
    with pytest.raises(ConfigError):
        generate(world="nope", **SMALL)


def test_deterministic_for_a_seed(world):
    name, txns, patterns, _, _ = world
    again = generate(world=name, **SMALL)
    assert txns.equals(again[0]) and patterns.equals(again[1])
    other = generate(world=name, **{**SMALL, "seed": 5})
    assert not txns.equals(other[0])


def test_canonical_tables_and_enough_banks(world):
    _, txns, patterns, df, _ = world
    assert txns.schema.equals(TRANSACTION_SCHEMA, check_metadata=False)
    assert patterns.schema.equals(PATTERN_TABLE_SCHEMA, check_metadata=False)
    banks = set(df.src_bank) | set(df.dst_bank)
    assert len(banks) >= 12  # `aml split` keeps the 8 largest; others stay outside
    members = member_banks(txns)
    assert len(members) == 8 and set(members) < banks
    assert (df.amount > 0).all() and df.txn_id.is_unique


def test_all_eight_patterns_present_and_labels_consistent(world):
    name, _, _, df, pat = world
    assert set(pat.pattern) == EIGHT
    label = df.set_index("txn_id").label
    assert (label.loc[pat.txn_id] == 1).all()  # every pattern row is laundering
    laundering = set(df.txn_id[df.label == 1])
    outside = laundering - set(pat.txn_id)
    if name == "amlsim":
        assert not outside  # AMLSim: laundering is exactly the SAR alerts
    else:
        # AMLworld: most laundering is in no pattern (disguised as ordinary payments).
        assert 0.6 <= len(outside) / len(laundering) <= 0.95


@pytest.mark.parametrize("name, low, high", [("amlworld", 1 / 1_500, 1 / 700),
                                             ("amlworld_li", 1 / 3_000, 1 / 1_400)])
def test_amlworld_laundering_rates(name, low, high):
    """HI about 1 in 1,000, LI about 1 in 2,000 (at a size where the per-pattern minimum
    does not dominate)."""
    txns, _ = generate(world=name, accounts=17_000, days=30, seed=1)
    rate = np.mean(txns.column("label").to_numpy())
    assert low <= rate <= high, rate


def _clean_graph(df):
    clean = df[df.label == 0]
    return clean, nx.DiGraph(list(zip(clean.src_account, clean.dst_account)))


def test_legitimate_look_alikes_of_the_shapes_exist(world):
    """Ordinary (label 0) payments form every shape too: stars of 4+ new payees within a
    week, cycles, two-hop scatter-gather paths."""
    _, _, _, df, pat = world
    clean, g = _clean_graph(df)
    week = clean.assign(w=clean.timestamp.dt.isocalendar().week)
    stars = week.groupby(["src_account", "w"]).dst_account.nunique()
    fan_centres = pat[pat.pattern == "fan_out"].pattern_id.nunique()
    assert (stars >= 4).sum() > fan_centres  # ordinary fan-outs outnumber laundering ones
    sinks = week.groupby(["dst_account", "w"]).src_account.nunique()
    assert (sinks >= 4).sum() > pat[pat.pattern == "fan_in"].pattern_id.nunique()
    long_cycles = (c for c in nx.simple_cycles(g, length_bound=4) if len(c) >= 3)
    assert len(list(itertools.islice(long_cycles, 5))) == 5


def test_amlsim_false_alerts_repeat_each_typology_unlabelled():
    """AMLSim's is_sar=False alerts: the typology shapes, labelled 0."""
    from aml.tools.synth import amlsim

    rng = np.random.default_rng(0)
    w = amlsim._World(rng, 14, 2_000, 30)
    w.normal(200)
    before = w.rows()
    for kind in amlsim.ALERT_TYPES:
        w.alert(kind, -1)
    inst = np.concatenate(w.instance)
    assert w.rows() > before and (inst == -1).all()


def test_cli_synth_world(tmp_path, capsys):
    out = tmp_path / "w"
    assert cli.main(["synth", "--world", "amlsim", "--out", str(out), "--accounts", "1000",
                     "--days", "14"]) == 0
    df = pd.read_parquet(out / "transactions.parquet")
    assert df.src_bank.nunique() >= 12
    assert write_synthetic(tmp_path / "o", accounts=600, days=14)["transactions"] > 0
