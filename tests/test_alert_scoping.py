"""The privacy rule: an alert for bank B names only B's accounts and B's own submitted
transactions; its times and amounts are those of B's own payments; everything else is a coarse
count, foreign accounts are unlinkable placeholders, and no field (explanation included) carries
another bank's id, amount or time."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.enclave.detect.alerts import alert_id, alert_key, cut_alerts
from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.detect.pipeline import run_detection
from aml.enclave.detect.typologies.base import PatternInstance
from aml.core.schema import ALERT_PATTERNS, ALERT_SCHEMA, TRANSACTION_SCHEMA

CONFIG = DetectionConfig.load()
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
BANKS = ["B01", "B02", "B03", "X01"]
PLACEHOLDER = re.compile(r"ext-[0-9a-f]{6,}")
KEY = alert_key(b"\x07" * 32)
# A number as written in a sentence: 48,000 / 48000.5 / 48k / 1.2 million
NUMBER = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*(k|K|M|million|thousand)?\b")
SCALE = {None: 1, "k": 1e3, "K": 1e3, "thousand": 1e3, "M": 1e6, "million": 1e6}


@st.composite
def scenarios(draw):
    n_acc = draw(st.integers(3, 12))
    acc_bank = [draw(st.sampled_from(BANKS)) for _ in range(n_acc)]
    members = draw(st.lists(st.sampled_from(BANKS[:3]), min_size=1, max_size=3, unique=True))
    n_edges = draw(st.integers(2, 25))
    rows, submitted = [], []
    for i in range(n_edges):
        s, d = draw(st.integers(0, n_acc - 1)), draw(st.integers(0, n_acc - 1))
        sb, db = acc_bank[s], acc_bank[d]
        rows.append(dict(
            txn_id=f"T{i:07d}",
            timestamp=T0 + dt.timedelta(seconds=draw(st.integers(0, 5000 * 60))),
            src_bank=sb, src_account=f"A{s:07d}", dst_bank=db, dst_account=f"A{d:07d}",
            # >= 1,000 with cents, so no amount hides among the explanation's small counts
            amount=draw(st.integers(100_000, 10_000_000)) / 100, currency=draw(st.sampled_from(
                ["USD", "EUR", "GBP"])), amount_received=None, receiving_currency=None,
            payment_format="Wire", label=None))
        sides = [b for b in dict.fromkeys((sb, db)) if b in members]
        # A member may fail to submit a row it should have: scoping must rely on what it did.
        submitted.append([b for b in sides if draw(st.booleans())] if sides else [])
    table = pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA).append_column(
        "submitted_by", pa.array(submitted, pa.list_(pa.string())))
    g = TransactionGraph.from_table(table, CONFIG)
    specs = []
    for _ in range(draw(st.integers(1, 6))):
        txns = sorted(set(draw(st.lists(st.sampled_from([r["txn_id"] for r in rows]),
                                        min_size=1, max_size=n_edges))))
        e = _edges_of(g, txns)
        nodes = np.concatenate([g.src[e], g.dst[e]])
        specs.append(dict(pattern=draw(st.sampled_from(ALERT_PATTERNS)), txns=txns,
                          score=draw(st.floats(0, 1)),
                          center=int(draw(st.sampled_from(nodes.tolist()))),
                          sink=int(draw(st.sampled_from(nodes.tolist()))),
                          hops=draw(st.integers(1, 5))))
    return table, g, specs, members


def _edges_of(g, txns) -> np.ndarray:
    ids = np.asarray([str(x) for x in g.txn_ids(np.arange(len(g)))], dtype=object)
    return np.sort(np.flatnonzero(np.isin(ids, txns)))


def _instances(g, specs) -> list[PatternInstance]:
    """Instances with the evidence real detectors record: measurements over the whole pattern
    (total moved, the centre's inflow and forwarded share, dwell time, conservation)."""
    out = []
    for sp in specs:
        e = _edges_of(g, sp["txns"])
        c = sp["center"]
        inflow = float(g.amount[e][g.dst[e] == c].sum())
        outflow = float(g.amount[e][g.src[e] == c].sum())
        t = g.t[e]
        ev = {"center": c, "sink": sp["sink"], "hops": sp["hops"], "sources": 2,
              "destinations": 2, "amount": float(g.amount[e].sum()), "inflow": inflow or outflow,
              "forward_share": outflow / inflow if inflow else 1.0,
              "dwell_hours": float(t.max() - t.min()) / 3600,
              "conservation": float(g.amount[e].min() / g.amount[e].max())}
        out.append(PatternInstance(sp["pattern"], e, sp["score"], ev))
    return out


def _own_mask(g, bank: str) -> np.ndarray:
    """The payments `bank` submitted itself as payer's or payee's bank."""
    src_bank, dst_bank = g.node_bank[g.src], g.node_bank[g.dst]
    return (g.src_submitted & (src_bank == bank)) | (g.dst_submitted & (dst_bank == bank))


def _amount_values(g, e: np.ndarray) -> list[float]:
    """Every amount a sentence could state about payments `e`: each one (as paid and in the
    base currency), their total, and per account what it received and what it paid on."""
    vals = list(g.amount[e]) + list(g.amount_orig[e])
    if len(e):
        vals.append(float(g.amount[e].sum()))
        for n in np.unique(np.concatenate([g.src[e], g.dst[e]])):
            vals += [float(g.amount[e][g.dst[e] == n].sum()), float(g.amount[e][g.src[e] == n].sum())]
    return [float(v) for v in vals if v > 0]


def _numbers(text: str) -> list[float]:
    text = PLACEHOLDER.sub(" ", text)
    text = re.sub(r"\bA\d{7}\b", " ", text)  # account ids are checked separately
    out = []
    for m in NUMBER.finditer(text):
        try:
            out.append(float(m.group(1).replace(",", "")) * SCALE[m.group(2)])
        except ValueError:
            pass
    return out


def _time_renderings(ts: int) -> set[str]:
    d = dt.datetime.fromtimestamp(int(ts), dt.timezone.utc)
    return {d.isoformat(), d.strftime("%Y-%m-%dT%H:%M"), d.strftime("%Y-%m-%d %H:%M"),
            d.strftime("%H:%M"), d.strftime("%Y-%m-%d"), d.strftime("%d %b"),
            d.strftime("%b %d").replace(" 0", " "), d.strftime("%d/%m/%Y"),
            str(int(ts)), str(int(ts) * 1000), str(int(ts) * 1_000_000)}


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.005 * max(abs(a), abs(b))  # ±0.5 %: "any reasonable rounding"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_alerts_reveal_only_own_accounts_and_own_submissions(scenario):
    _, g, specs, members = scenario
    instances = _instances(g, specs)
    tables = cut_alerts(g, instances, members, alert_key=KEY)
    assert set(tables) == set(members)
    acc_bank = dict(zip(g.node_account, g.node_bank))
    txn = g.edges.set_index("txn_id")
    all_accounts = set(g.node_account)
    all_txns = set(g.edges.txn_id)
    ids = np.asarray([str(x) for x in g.txn_ids(np.arange(len(g)))], dtype=object)
    placeholders_per_alert = []
    for bank, table in tables.items():
        assert table.schema.equals(ALERT_SCHEMA)
        own_all = _own_mask(g, bank)
        foreign_edges = np.flatnonzero(~own_all)
        for alert in table.to_pylist():
            assert alert["bank"] == bank
            assert alert["accounts"] and alert["txn_ids"]
            for a in alert["accounts"]:
                assert acc_bank[a] == bank
            for t in alert["txn_ids"]:
                r = txn.loc[t]
                assert bank in r.submitted_by and bank in (r.src_bank, r.dst_bank)
            mine = np.flatnonzero(np.isin(ids, alert["txn_ids"]))
            # Scores move in coarse steps: a detector's score is a formula of measurements.
            assert 0.0 <= alert["score"] <= 1.0 and abs(alert["score"] * 20 - round(alert["score"] * 20)) < 1e-9
            # Time window and amount: the bank's own payments, nobody else's.
            assert alert["start"] == dt.datetime.fromtimestamp(int(g.t[mine].min()), dt.timezone.utc)
            assert alert["end"] == dt.datetime.fromtimestamp(int(g.t[mine].max()), dt.timezone.utc)
            assert alert["amount"] == pytest.approx(float(g.amount[mine].sum()))
            inst_edges = [i.edge_idx for i in instances if set(mine) <= set(i.edge_idx.tolist())]
            assert any(len(np.unique(g.node_bank[np.concatenate([g.src[e], g.dst[e]])]))
                       == alert["institutions"] for e in inst_edges)

            text = alert["explanation"]
            assert set(re.findall(r"A\d{7}", text)) <= set(alert["accounts"])
            for a in all_accounts - {a for a in all_accounts if acc_bank[a] == bank}:
                assert a not in text
            for t in all_txns:
                assert t not in text
            for other in set(BANKS) - {bank}:
                assert other not in text
            assert "%" not in text  # a share of another account's flow is a measurement of it
            # No foreign amount (or sum over foreign payments) in any rounding...
            own_vals = _amount_values(g, mine) + [10_000.0]  # + the reporting threshold
            foreign_vals = [v for v in _amount_values(g, foreign_edges)
                            + [float(g.amount[e].sum()) for e in inst_edges]
                            + [float(i.evidence["inflow"]) for i in instances]
                            if not any(_close(v, o) for o in own_vals)]
            for x in _numbers(text):
                if x >= 100:
                    hit = [v for v in foreign_vals if _close(x, v)]
                    assert not hit, (x, hit, text)
            # ... and no foreign payment time in any rendering.
            own_renderings = set().union(*(_time_renderings(t) for t in g.t[mine]))
            for t in g.t[foreign_edges]:
                for r in _time_renderings(t) - own_renderings:
                    assert r not in text, (r, text)
            # Every other field: only its own values (checked above) or public counts.
            for field in ("alert_id", "pattern"):
                for a in all_accounts:
                    assert a not in alert[field]
            placeholders_per_alert.append(set(PLACEHOLDER.findall(text)))
    # Placeholders are keyed per alert: no placeholder appears in two alerts.
    seen: set[str] = set()
    for ph in placeholders_per_alert:
        assert not (ph & seen)
        seen |= ph


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_alerts_do_not_change_when_other_banks_payments_change(scenario, data):
    """Metamorphic: move every payment bank B did not submit in time and change its amount
    (the detectors' evidence follows, as it would); B's alerts stay the same in every field."""
    table, g, specs, members = scenario
    bank = data.draw(st.sampled_from(members))
    before = cut_alerts(g, _instances(g, specs), members, alert_key=KEY)[bank]
    own = _own_mask(g, bank)
    ids = np.asarray([str(x) for x in g.txn_ids(np.arange(len(g)))], dtype=object)
    own_ids = set(ids[own].tolist())
    rows = table.to_pylist()
    for r in rows:
        if r["txn_id"] not in own_ids:
            r["amount"] = round(r["amount"] * data.draw(st.sampled_from([0.37, 1.9, 7.3])), 2)
            r["timestamp"] += dt.timedelta(minutes=data.draw(st.integers(-3000, 3000)))
    moved = pa.Table.from_pylist(rows, schema=table.schema)
    g2 = TransactionGraph.from_table(moved, CONFIG)
    assert list(g2.node_account) == list(g.node_account)  # node ids (centres) carry over
    after = cut_alerts(g2, _instances(g2, specs), members, alert_key=KEY)[bank]
    assert after.to_pylist() == before.to_pylist()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_bank_touched_by_own_submission_gets_an_alert(scenario):
    _, g, specs, members = scenario
    instances = _instances(g, specs)
    tables = cut_alerts(g, instances, members, alert_key=KEY)
    for inst in instances:
        for bank in members:
            own = [e for e in inst.edge_idx if bank in g.edges.submitted_by.iloc[e]
                   and bank in (g.edges.src_bank.iloc[e], g.edges.dst_bank.iloc[e])]
            ids = {a["alert_id"] for a in tables[bank].to_pylist()}
            txns = list(g.edges.txn_id.to_numpy()[inst.edge_idx])
            expected = alert_id(KEY, inst.pattern, txns, bank)
            assert (expected in ids) == bool(own)
            # The id is a keyed MAC: without the enclave's key it cannot be recomputed (an
            # unkeyed hash of the pattern's txn_ids could be brute-forced back to them).
            assert alert_id(alert_key(b"\x08" * 32), inst.pattern, txns, bank) != expected


def test_alert_key_is_hkdf_of_the_enclave_secret():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = bytes(range(32))
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"aml-alerts/1 alert-id key").derive(secret)
    assert alert_key(secret) == expected != secret
    with pytest.raises(ValueError):
        alert_key(b"short")


def test_alert_ids_stable_across_runs_and_explanations_unlinkable():
    rows = []
    for k in range(8):
        rows.append(dict(txn_id=f"T{k:07d}", timestamp=T0 + dt.timedelta(hours=1 + k),
                         src_bank="B01", src_account="A0000001", dst_bank=f"B0{2 + k % 2}",
                         dst_account=f"A{100 + k:07d}", amount=6000.0, currency="USD",
                         amount_received=None, receiving_currency=None,
                         payment_format="Wire", label=None))
    for k in range(8):  # each payee passes the money on within the hour (at its own bank)
        rows.append(dict(txn_id=f"T{8 + k:07d}", timestamp=T0 + dt.timedelta(hours=1.5 + k),
                         src_bank=f"B0{2 + k % 2}", src_account=f"A{100 + k:07d}",
                         dst_bank=f"B0{2 + k % 2}", dst_account=f"A{200 + k:07d}",
                         amount=5900.0, currency="USD", amount_received=None,
                         receiving_currency=None, payment_format="Wire", label=None))
    table = pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA)
    # Same enclave key (a rerun after a crash): byte-identical alerts, placeholders included.
    r1, r2 = run_detection(table, CONFIG, alert_key=KEY), run_detection(table, CONFIG, alert_key=KEY)
    for bank in ("B01", "B02", "B03"):
        assert r1.alerts_for(bank).equals(r2.alerts_for(bank))
    a1 = r1.alerts_for("B01").to_pylist()
    fan = [a for a in a1 if a["pattern"] == "fan_out"]
    assert fan and fan[0]["accounts"] == ["A0000001"] and len(fan[0]["txn_ids"]) == 8
    assert "your account A0000001" in fan[0]["explanation"]
    assert "48,000 USD" in fan[0]["explanation"]  # its own 8 payments
    assert fan[0]["institutions"] == 3 and fan[0]["amount"] == pytest.approx(48000)
    # Another enclave identity (or no key: a fresh one per call): other ids, other placeholders.
    other = run_detection(table, CONFIG).alerts_for("B01").to_pylist()
    o_fan = [a for a in other if a["pattern"] == "fan_out"][0]
    assert o_fan["alert_id"] != fan[0]["alert_id"]
    p1, p2 = (set(PLACEHOLDER.findall(a["explanation"])) for a in (fan[0], o_fan))
    assert p1 and p1 != p2
    b02 = [a for a in r1.alerts_for("B02").to_pylist() if a["pattern"] == "fan_out"][0]
    assert set(b02["accounts"]) == {f"A{n + k:07d}" for k in range(0, 8, 2) for n in (100, 200)}
    assert "A0000001" not in b02["explanation"]
    # B02's own share of the fan: its 4 incoming and 4 onward payments, not the whole 48,000.
    assert b02["amount"] == pytest.approx(4 * 6000 + 4 * 5900)
    assert "48,000" not in b02["explanation"]
    assert r1.counts["fan_out"] == 3  # B01, B02, B03 each get one
    assert r1.config_hash == CONFIG.hash


def test_labelled_history_raises_no_alerts():
    rows = [dict(txn_id=f"T{k:07d}", timestamp=T0 + dt.timedelta(hours=1 + k),
                 src_bank="B01", src_account="A0000001", dst_bank="B02",
                 dst_account=f"A{100 + k:07d}", amount=6000.0, currency="USD",
                 amount_received=None, receiving_currency=None, payment_format="Wire", label=1)
            for k in range(8)]
    result = run_detection(pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA), CONFIG)
    assert result.alerts_for("B01").num_rows == 0
    assert not [i for i in result.instances if i.pattern != "model"]


def test_empty_table_gives_empty_alert_tables():
    result = run_detection(TRANSACTION_SCHEMA.empty_table(), CONFIG, members=["B01", "B02"])
    for bank in ["B01", "B02", "B99"]:
        t = result.alerts_for(bank)
        assert t.num_rows == 0 and t.schema.equals(ALERT_SCHEMA)
    assert result.counts == {} and result.banks == ["B01", "B02"]
    assert result.config_hash == CONFIG.hash


def test_model_only_alerts_cover_uncovered_new_payments(monkeypatch):
    import aml.enclave.detect.pipeline as pipeline

    rows = [dict(txn_id=f"T{k:07d}", timestamp=T0 + dt.timedelta(hours=k), src_bank="B01",
                 src_account=f"A{k:07d}", dst_bank="B02", dst_account=f"A{100 + k:07d}",
                 amount=700.0, currency="USD", amount_received=None, receiving_currency=None,
                 payment_format="ACH", label=0 if k == 0 else None) for k in range(4)]
    table = pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA)
    # Payment 0 is history, 1 scores low, 2 and 3 score high (and are unrelated payments).
    monkeypatch.setattr(pipeline, "_score_with_model",
                        lambda graph, inst, cfg: (np.array([0.99, 0.1, 0.95, 0.97]), "m" * 64))
    result = pipeline.run_detection(table, CONFIG)
    model = [a for a in result.alerts_for("B01").to_pylist() if a["pattern"] == "model"]
    assert sorted(t for a in model for t in a["txn_ids"]) == ["T0000002", "T0000003"]
    assert len(model) == 2 and result.model_hash == "m" * 64
    assert {a["score"] for a in model} == {0.95}  # 0.95 and 0.97, in steps of 0.05
    assert result.counts["model"] == 4  # two alerts, each for B01 and B02


def test_scoping_end_to_end_on_synthetic_data():
    from aml.tools.synth import generate

    tx, _ = generate(banks=4, accounts=400, days=14, seed=3)
    ts = tx.column("timestamp").cast(pa.int64()).to_numpy()
    is_new = ts >= np.quantile(ts, 0.6)
    members = ["B01", "B02", "B03"]
    src, dst = tx.column("src_bank").to_pylist(), tx.column("dst_bank").to_pylist()
    submitted = [[b for b in dict.fromkeys((s, d)) if b in members] for s, d in zip(src, dst)]
    keep = np.array([bool(x) for x in submitted])
    table = tx.append_column("is_new", pa.array(is_new)).append_column(
        "submitted_by", pa.array(submitted, pa.list_(pa.string()))).filter(pa.array(keep))
    result = run_detection(table, CONFIG, members=members)
    rows = table.to_pylist()
    own_accounts = {b: {r["src_account"] for r in rows if r["src_bank"] == b}
                    | {r["dst_account"] for r in rows if r["dst_bank"] == b} for b in members}
    all_accounts = set().union(*own_accounts.values()) | {
        r["src_account"] for r in rows} | {r["dst_account"] for r in rows}
    submitted_by = {r["txn_id"]: (set(r["submitted_by"]), r["src_bank"], r["dst_bank"])
                    for r in rows}
    n_alerts, seen = 0, set()
    for bank in members:
        for a in result.alerts_for(bank).to_pylist():
            n_alerts += 1
            assert set(a["accounts"]) <= own_accounts[bank]
            for t in a["txn_ids"]:
                subs, sb, db = submitted_by[t]
                assert bank in subs and bank in (sb, db)
            foreign = all_accounts - own_accounts[bank]
            words = set(re.findall(r"A\d{7}", a["explanation"]))
            assert not (words & foreign)
            assert not re.search(r"T\d{6,}", a["explanation"])
            assert not re.search(r"\b(B\d\d|X\d\d)\b", a["explanation"])
            ph = set(PLACEHOLDER.findall(a["explanation"]))
            assert not (ph & seen)
            seen |= ph
    assert n_alerts > 0
