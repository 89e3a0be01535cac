"""Tests for the synthetic data generator (aml/tools/synth.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml import cli

from aml.core.errors import ConfigError
from aml.core.schema import PATTERN_TABLE_SCHEMA, TRANSACTION_SCHEMA
from aml.tools.synth import (
    DISGUISED, PATTERNS, TYPOLOGIES, USD_PER_UNIT, generate, write_synthetic,
)

SMALL = dict(banks=5, accounts=600, days=21, seed=3)


@pytest.fixture(scope="module")
def small():
    txns, patterns = generate(**SMALL)
    return txns.to_pandas(), patterns.to_pandas(), txns, patterns


@pytest.fixture(scope="module")
def laundering(small):
    """Laundering rows joined to their pattern instance."""
    df, pat, _, _ = small
    return pat.merge(df, on="txn_id", how="left", validate="one_to_one")


def _usd(amount, currency):
    return amount * currency.map(USD_PER_UNIT)


def test_same_seed_gives_equal_tables_and_other_seed_differs(small):
    _, _, txns, patterns = small
    again_t, again_p = generate(**SMALL)
    assert txns.equals(again_t, check_metadata=True)
    assert patterns.equals(again_p)
    other_t, _ = generate(**{**SMALL, "seed": 4})
    assert not txns.equals(other_t)


def test_schemas_are_exactly_the_canonical_ones(small):
    _, _, txns, patterns = small
    assert txns.schema.equals(TRANSACTION_SCHEMA, check_metadata=True)
    assert patterns.schema.equals(PATTERN_TABLE_SCHEMA)
    assert txns.num_rows > 0 and patterns.num_rows > 0


def test_write_synthetic_writes_what_generate_returns(tmp_path):
    args = dict(banks=3, accounts=300, days=10, seed=1)
    summary = write_synthetic(tmp_path, **args)
    txns, patterns = generate(**args)
    on_disk = pq.read_table(tmp_path / "transactions.parquet")
    assert on_disk.equals(txns)
    assert pq.read_table(tmp_path / "patterns.parquet").equals(patterns)
    assert summary == {"transactions": txns.num_rows, "patterns": patterns.num_rows}


def test_every_pattern_appears_several_times(small):
    _, pat, _, _ = small
    assert len(PATTERNS) == 12 and set(TYPOLOGIES) | set(DISGUISED) == set(PATTERNS)
    instances = pat.groupby("pattern")["pattern_id"].nunique()
    assert set(instances.index) == set(PATTERNS)
    assert (instances >= 4).all()
    # A pattern id names one pattern.
    assert (pat.groupby("pattern_id")["pattern"].nunique() == 1).all()


def test_labels_match_the_pattern_table(small):
    df, pat, _, _ = small
    assert df["label"].notna().all()
    in_pattern = df["txn_id"].isin(set(pat["txn_id"]))
    assert (df.loc[in_pattern, "label"] == 1).all()
    assert (df.loc[~in_pattern, "label"] == 0).all()
    assert pat["txn_id"].is_unique  # each laundering txn belongs to exactly one instance
    share = df["label"].mean()
    assert 0.003 < share < 0.05  # the per-pattern minimum dominates on tiny sets


def test_ids_amounts_and_time_range(small):
    df, _, _, _ = small
    assert df["txn_id"].is_unique
    assert (df["amount"] > 0).all() and (df["amount_received"] > 0).all()
    t = df["timestamp"]
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert t.min() >= start and t.max() < start + pd.Timedelta(days=SMALL["days"])
    assert (t.dt.microsecond == 0).all()  # second resolution
    assert t.is_monotonic_increasing  # txn ids follow time


def test_banks_accounts_currencies_formats(small):
    df, _, _, _ = small
    banks = set(df["src_bank"]) | set(df["dst_bank"])
    members = {f"B{i:02d}" for i in range(1, SMALL["banks"] + 1)}
    assert members <= banks and banks <= members | {"X01", "X02"}
    # An account belongs to exactly one bank.
    both = np.concatenate([df[["src_account", "src_bank"]].to_numpy(), df[["dst_account", "dst_bank"]].to_numpy()])
    owner = {}
    for acc, bank in both:
        assert owner.setdefault(acc, bank) == bank
    assert df["src_account"].str.fullmatch(r"A\d{7}").all()
    # Bank sizes are skewed: the biggest bank has several times the rows of the smallest member.
    rows = df["src_bank"].value_counts()
    assert rows["B01"] > 3 * rows[f"B{SMALL['banks']:02d}"]
    assert set(df["payment_format"]) == {"ACH", "Wire", "Cheque", "Credit Card", "Cash", "Bitcoin", "Reinvestment"}
    assert (df["currency"] == "USD").mean() > 0.8
    assert df["currency"].nunique() >= 5


def test_cross_currency_amounts_follow_the_rate_table(small):
    df, _, _, _ = small
    same = df["currency"] == df["receiving_currency"]
    assert (df.loc[same, "amount"] == df.loc[same, "amount_received"]).all()
    cross = df[~same]
    assert len(cross) > 0
    paid = _usd(cross["amount"], cross["currency"])
    got = _usd(cross["amount_received"], cross["receiving_currency"])
    # Equal up to rounding to the receiving currency's smallest unit (1 JPY is about 0.0067 USD).
    assert np.allclose(paid, got, rtol=1e-3, atol=0.05)


def test_patterns_cross_banks_and_stay_within_days(laundering):
    per = laundering.groupby("pattern_id")
    banks = per.apply(lambda g: len(set(g["src_bank"]) | set(g["dst_bank"])), include_groups=False)
    assert (banks >= 2).mean() > 0.9
    span = per["timestamp"].agg(lambda t: (t.max() - t.min()).total_seconds() / 3600)
    assert (span <= 7 * 24).all()
    sizes = per.size()
    assert sizes.min() >= 2 and sizes.max() <= 40


def _instances(laundering, name):
    for _, g in laundering[laundering["pattern"] == name].groupby("pattern_id"):
        yield g.sort_values("timestamp").assign(usd=lambda g: _usd(g["amount"], g["currency"]))


def _star(g, side):
    """(centre, the star's rows, the other rows) of a star-shaped instance."""
    centre = g[f"{side}_account"].value_counts().index[0]
    at = (g["src_account"] == centre) | (g["dst_account"] == centre)
    return centre, g[at], g[~at]


def test_fan_shapes(laundering):
    """The star, plus the hop only the leaves' banks see: fan-out leaves pass the money on
    within hours, fan-in payers were handed it just before."""
    for name, side, leaf in (("fan_out", "src", "dst"), ("fan_in", "dst", "src")):
        for g in _instances(laundering, name):
            centre, star, tail = _star(g, side)
            leaves = set(star[f"{leaf}_account"])
            assert len(leaves) >= 5 and len(tail) == len(star)
            assert set(tail[f"{side}_account"]) == leaves
            for _, hop in tail.iterrows():
                leg = star[star[f"{leaf}_account"] == hop[f"{side}_account"]].iloc[0]
                first, then = (leg, hop) if name == "fan_out" else (hop, leg)
                assert 0.85 < then["usd"] / first["usd"] <= 1.0
                assert 0 < (then["timestamp"] - first["timestamp"]).total_seconds() <= 16 * 3600


def test_cycles_close_in_time_order_and_conserve_amounts(laundering):
    for g in _instances(laundering, "cycle"):
        src, dst = g["src_account"].to_numpy(), g["dst_account"].to_numpy()
        assert (dst[:-1] == src[1:]).all() and dst[-1] == src[0]
        ratio = g["usd"].to_numpy()[1:] / g["usd"].to_numpy()[:-1]
        assert ((ratio > 0.96) & (ratio <= 1.0)).all()


def test_random_chain_is_an_open_nearly_conserved_path(laundering):
    for g in _instances(laundering, "random_chain"):
        src, dst = g["src_account"].to_numpy(), g["dst_account"].to_numpy()
        assert (dst[:-1] == src[1:]).all() and dst[-1] not in set(src)
        assert g["usd"].iloc[-1] / g["usd"].iloc[0] > 0.8


def test_structuring_stays_just_under_the_threshold(laundering):
    for g in _instances(laundering, "structuring"):
        side = "dst" if g["dst_account"].value_counts().iloc[0] >= 5 else "src"
        _, star, tail = _star(g, side)
        assert star["currency"].eq("USD").all()
        assert star["amount"].between(8_500, 9_990).all()
        assert len(star) >= 5 and len(tail) == len(star)  # each smurf's hop before / after
        assert min(star["src_account"].nunique(), star["dst_account"].nunique()) == 1
        assert len(set(star["src_bank"]) | set(star["dst_bank"])) >= 3


def test_pass_through_forwards_most_within_hours(laundering):
    for g in _instances(laundering, "pass_through"):
        terminal = set(g["dst_account"]) - set(g["src_account"])
        mules = set(g.loc[g["dst_account"].isin(terminal), "src_account"])
        assert len(mules) == 1
        mule = mules.pop()
        inflow, outflow = g[g["dst_account"] == mule], g[g["src_account"] == mule]
        assert 0.78 <= outflow["usd"].sum() / inflow["usd"].sum() <= 0.96
        dwell = (outflow["timestamp"].min() - inflow["timestamp"].max()).total_seconds()
        assert 0 <= dwell <= 16 * 3600  # 0.5-10 h, stretched by the shift into daytime
        # Every payer of the mule was itself funded just before: the hop before is laundering too.
        for _, pay in inflow.iterrows():
            fed = g[(g["dst_account"] == pay["src_account"]) & (g["timestamp"] < pay["timestamp"])]
            assert len(fed) == 1


def test_patterns_are_laid_across_banks(laundering):
    """Each bank sees one or two legs: hops of chains and cycles cross a bank every time,
    a fan's leaves are spread over the banks, and star centres are often abroad."""
    for name in ("cycle", "random_chain"):
        for g in _instances(laundering, name):
            assert (g["src_bank"] != g["dst_bank"]).all()
    centres_abroad = []
    for name, side, leaf in (("fan_out", "src", "dst"), ("fan_in", "dst", "src")):
        for g in _instances(laundering, name):
            _, star, _ = _star(g, side)
            assert star[f"{leaf}_bank"].value_counts().iloc[0] <= max(2, len(star) / 2)
            centres_abroad.append(star[f"{side}_bank"].iloc[0].startswith("X"))
    assert 0.0 < np.mean(centres_abroad) <= 0.8


def test_laundering_legs_look_like_ordinary_sizeable_payments(small, laundering):
    df, _, _, _ = small
    clean = df[df["label"] == 0].assign(usd=lambda d: _usd(d["amount"], d["currency"]))
    sizeable = clean[clean["usd"] >= 1_000]
    legs = laundering[~laundering["pattern"].isin(DISGUISED)]
    legs = legs.assign(usd=_usd(legs["amount"], legs["currency"]))
    assert 0.5 < legs["usd"].median() / sizeable["usd"].median() < 2.0
    assert set(legs["payment_format"]) - {"Bitcoin"} <= set(sizeable["payment_format"])
    # Ordinary forwarders: a first-time payer's sizeable transfer passed on within 10 hours.
    sizeable = sizeable.sort_values("timestamp")
    inn = sizeable[["dst_account", "timestamp", "usd"]].rename(columns={"dst_account": "acc"})
    out = sizeable[["src_account", "timestamp", "usd"]].rename(columns={"src_account": "acc"})
    pairs = pd.merge_asof(out, inn, on="timestamp", by="acc", direction="backward",
                          tolerance=pd.Timedelta(hours=10), suffixes=("_out", "_in")).dropna()
    assert (pairs["usd_out"] / pairs["usd_in"]).between(0.8, 1.0).sum() > 20


def test_scatter_gather_and_gather_scatter_meet_in_the_middle(laundering):
    for g in _instances(laundering, "scatter_gather"):
        assert g["src_account"].value_counts().iloc[0] >= 3  # the scatterer
        assert g["dst_account"].value_counts().iloc[0] >= 3  # the gatherer
    for g in _instances(laundering, "gather_scatter"):
        hub = g["dst_account"].value_counts().index[0]
        assert (g["src_account"] == hub).sum() >= 3
        assert g.loc[g["dst_account"] == hub, "timestamp"].max() < g.loc[g["src_account"] == hub, "timestamp"].min()


def test_disguised_payroll_looks_like_a_payroll_batch(laundering):
    for g in _instances(laundering, "disguised_payroll"):
        front = g["src_account"].value_counts().index[0]
        pay = g[g["src_account"] == front]
        assert len(pay) >= 4 and (pay["payment_format"] == "ACH").all()
        assert (pay["timestamp"].max() - pay["timestamp"].min()).total_seconds() <= 900
        assert pay["usd"].max() / pay["usd"].min() < 1.2
        assert pay["timestamp"].dt.hour.between(7, 11).all()  # office hours, like real payroll
        funding = g[g["dst_account"] == front]
        assert len(funding) == 1 and funding["timestamp"].iloc[0] < pay["timestamp"].min()


def test_disguised_supplier_invoices_are_forwarded(laundering):
    for g in _instances(laundering, "disguised_supplier"):
        forward = g.iloc[-1]
        invoices = g.iloc[:-1]
        assert invoices["src_account"].nunique() == 1 and invoices["dst_account"].nunique() == 1
        assert forward["src_account"] == invoices["dst_account"].iloc[0]
        assert invoices["timestamp"].dt.hour.between(9, 16).all()
        assert 0.85 <= forward["usd"] / invoices["usd"].sum() <= 0.96


def test_laundering_accounts_also_trade_normally(small, laundering):
    df, _, _, _ = small
    accounts = set(laundering["src_account"]) | set(laundering["dst_account"])
    ordinary = df[df["label"] == 0]
    trading = set(ordinary["src_account"]) | set(ordinary["dst_account"])
    assert len(accounts & trading) / len(accounts) > 0.9


def test_ordinary_look_alikes_exist(small):
    df, _, _, _ = small
    clean = df[df["label"] == 0]
    # Friends paying back: A->B followed by B->A.
    pairs = set(zip(clean["src_account"], clean["dst_account"]))
    assert sum((b, a) in pairs for a, b in pairs if a != b) > 50
    # Payroll fan-outs: one company paying many accounts within fifteen minutes.
    ach = clean[clean["payment_format"] == "ACH"]
    batches = ach.groupby([ach["src_account"], ach["timestamp"].dt.floor("D")])["dst_account"].nunique()
    assert (batches >= 5).sum() >= 3
    # Ordinary payments just under 10,000 exist too.
    usd = clean[clean["currency"] == "USD"]
    assert usd["amount"].between(8_500, 9_990).sum() > 5


def test_volume_scales_with_accounts_and_days():
    a, _ = generate(banks=3, accounts=300, days=10, seed=0)
    b, _ = generate(banks=3, accounts=600, days=20, seed=0)
    assert 3.0 < b.num_rows / a.num_rows < 5.0
    assert 1.3 < a.num_rows / (300 * 10) < 2.5


@pytest.mark.parametrize(
    "kwargs", [dict(banks=1), dict(accounts=10), dict(days=0), dict(seed=-1)]
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ConfigError):
        generate(**{**dict(banks=3, accounts=300, days=10, seed=0), **kwargs})


def test_committed_sample_data_is_what_the_documented_command_produces():
    # sample_data/README.md: aml synth --out sample_data --banks 6 --accounts 700 --days 42 --seed 7
    root = Path(__file__).resolve().parent.parent / "sample_data"
    txns, patterns = generate(banks=6, accounts=700, days=42, seed=7)
    assert pq.read_table(root / "transactions.parquet").equals(txns, check_metadata=True)
    assert pq.read_table(root / "patterns.parquet").equals(patterns)
    assert 40_000 < txns.num_rows < 60_000


@settings(max_examples=15, deadline=None)
@given(
    banks=st.integers(2, 12),
    accounts=st.integers(200, 800),
    days=st.integers(7, 20),
    seed=st.integers(0, 2**32),
)
def test_invariants_hold_for_any_arguments(banks, accounts, days, seed):
    txns, patterns = generate(banks=banks, accounts=accounts, days=days, seed=seed)
    assert txns.schema.equals(TRANSACTION_SCHEMA, check_metadata=True)
    df, pat = txns.to_pandas(), patterns.to_pandas()
    assert df["txn_id"].is_unique and (df["amount"] > 0).all()
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert df["timestamp"].min() >= start and df["timestamp"].max() < start + pd.Timedelta(days=days)
    assert set(pat["pattern"]) == set(PATTERNS)
    assert set(df.loc[df["label"] == 1, "txn_id"]) == set(pat["txn_id"])
    members = {f"B{i:02d}" for i in range(1, banks + 1)}
    assert set(df["src_bank"]) | set(df["dst_bank"]) <= members | {"X01", "X02"}


def test_cli_writes_files_and_refuses_bad_options(tmp_path, capsys):
    assert cli.main(["synth", "--out", str(tmp_path), "--banks", "3", "--accounts", "300", "--days", "8"]) == 0
    assert (tmp_path / "transactions.parquet").exists() and (tmp_path / "patterns.parquet").exists()
    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--banks", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "banks" in err[0]


def test_look_alikes_keep_the_hours_of_laundering_legs():
    """One time-of-day law for laundering legs and the ordinary payments shaped like them, so a
    bank's model cannot tell them apart by the hour (everyday traffic peaks in the afternoon)."""
    from aml.tools.synth import original as synth

    rng = np.random.default_rng(0)
    pop = synth._make_population(rng, 5, 3_000)
    synth._assign_roles(rng, pop)
    look, laundering = synth._Edges(), synth._Edges()
    synth._lookalikes(rng, pop, 3_000, 6_000, 30, look)
    names = np.array(synth._laundering(rng, pop, 30, 3_000, laundering))
    legs = laundering.arrays()
    own_hours = ~np.isin(names[legs["instance"]], DISGUISED) & (legs["instance"] >= 0)

    def share_by_quarter_day(t):
        return np.bincount((t % 86_400) // 21_600, minlength=4) / len(t)

    lookalike, laundered = share_by_quarter_day(look.arrays()["t"]), share_by_quarter_day(legs["t"][own_hours])
    assert np.abs(lookalike - laundered).max() < 0.05, (lookalike, laundered)
    everyday = share_by_quarter_day(synth._daytime(rng, 100_000))
    assert np.abs(everyday - laundered).max() > 0.1  # the law differs from everyday traffic's
