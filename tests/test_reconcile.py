"""Issue 14, finding 1: a member bank cannot erase or rewrite payments between other banks.

Reconciliation (aml/enclave/merge.py `reconcile`, shared by the enclave merge and the graph)
keys a payment by (txn_id, src_bank, dst_bank); only the two banks a row names count as its
submitters; copies that disagree are kept apart, never dropped."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
from hypothesis import HealthCheck, given, settings, strategies as st

from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.merge import merge_batches
from aml.core.schema import TRANSACTION_SCHEMA, validate

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
BANKS = ["B01", "B02", "B03", "B04"]
EVIL = "B01"
_FIELDS = [c for c in TRANSACTION_SCHEMA.names if c != "label"]


def txns(rows: list[dict]) -> pa.Table:
    base = {"currency": "USD", "amount_received": None, "receiving_currency": None,
            "payment_format": "Wire", "label": None}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=TRANSACTION_SCHEMA)


def pay(txn, src_bank, dst_bank, amount=100.0, day=0, src="a1", dst="b1", label=None):
    return {"txn_id": txn, "timestamp": T0 + timedelta(hours=day), "src_bank": src_bank, "src_account": src,
            "dst_bank": dst_bank, "dst_account": dst, "amount": amount, "label": label}


def batches_of(rows: list[dict], banks=BANKS) -> list[tuple[str, pa.Table]]:
    """Each bank's batch: every row that names it (a cross-bank payment goes to both)."""
    return [(b, txns([r for r in rows if b in (r["src_bank"], r["dst_bank"])])) for b in banks]


def payment_view(table: pa.Table) -> list[tuple]:
    """The comparable fields of each row, defaults filled in as the merge keeps them."""
    t = txns([{k: r[k] for k in TRANSACTION_SCHEMA.names} for r in table.to_pylist()])
    out = []
    for r in t.to_pylist():
        r["amount_received"] = r["amount_received"] or r["amount"]
        r["receiving_currency"] = r["receiving_currency"] or r["currency"]
        out.append(tuple(r[k] for k in _FIELDS))
    return out


def test_reused_txn_ids_from_a_third_bank_do_not_erase_other_banks_payments():
    # The reproduction: B02 -> B03 payments, and B01 sends rows of its own that reuse
    # their txn_ids (sequential ids are easy to guess). Before the fix every reused id made the
    # honest payment vanish from detection and from the history.
    honest = [pay(f"T{i:06d}", "B02", "B03", 100.0 + i, day=i, src=f"s{i}", dst=f"d{i}") for i in range(5)]
    forged = [pay(f"T{i:06d}", "B01", "B02", 7.0, day=i, src="x", dst=f"s{i}") for i in range(3)] + \
             [pay(f"T{i:06d}", "B03", "B01", 9.0, day=i, src=f"d{i}", dst="y") for i in range(3, 5)]
    m = merge_batches(batches_of(honest, ["B02", "B03"]) + [("B01", txns(forged))])
    rows = m.merged.to_pylist()
    got = {(r["txn_id"], r["src_bank"], r["dst_bank"]): r for r in rows}
    for h in honest:
        r = got[(h["txn_id"], "B02", "B03")]
        assert (r["amount"], r["src_account"], r["submitted_by"]) == (h["amount"], h["src_account"], ["B02", "B03"])
    # B01's rows are its own one-sided payments, nothing more
    assert sum(r["submitted_by"] == ["B01"] for r in rows) == len(forged)
    assert m.counts["conflicts"] == 0
    # ... and the graph keeps every honest payment as its own edge
    g = TransactionGraph.from_table(m.merged, DetectionConfig.load())
    edges = g.edges
    for h in honest:
        e = edges[(edges.txn_id == h["txn_id"]) & (edges.src_bank == "B02")]
        assert len(e) == 1 and e.amount_orig.iloc[0] == h["amount"]
    # ... and the next night's history still has them
    night2 = merge_batches([("B02", txns([pay("N1", "B02", "B03", day=30)]))], m.history())
    kept = {(r["txn_id"], r["src_bank"]) for r in night2.merged.to_pylist()}
    assert all((h["txn_id"], "B02") in kept for h in honest)


def test_validation_already_quarantines_a_row_naming_two_other_banks():
    raw = txns([pay("T1", "B02", "B03"), pay("T2", "B01", "B03")])
    result = validate(raw, bank_id="B01")
    assert result.counts == {"foreign_row": 1}
    assert result.good.column("txn_id").to_pylist() == ["T2"]


def test_a_copy_that_disagrees_with_its_counterparty_is_kept_apart_not_dropped():
    m = merge_batches([("B01", txns([pay("T1", "B01", "B02", 5.0)])), ("B02", txns([pay("T1", "B01", "B02")]))])
    got = sorted((r["amount"], r["submitted_by"]) for r in m.merged.to_pylist())
    assert got == [(5.0, ["B01"]), (100.0, ["B02"])]
    assert m.counts["conflicts"] == 1 and m.conflicts_by_bank == {"B01": 1, "B02": 1}


def test_honest_id_collisions_between_unrelated_pairs_are_two_payments():
    # Two honest banks whose own sequential ids collide: not a conflict, both payments kept.
    rows = [pay("T1", "B01", "B02", 5.0), pay("T1", "B03", "B04", 6.0)]
    m = merge_batches(batches_of(rows))
    assert sorted(m.merged.column("amount").to_pylist()) == [5.0, 6.0]
    assert m.counts == {"rows": 2, "new_rows": 2, "cross_bank": 2, "conflicts": 0, "foreign_copies": 0,
                        "history_rows": 0}


def test_graph_uses_the_merge_rule_not_first_row_wins():
    # A table without provenance (e.g. batches concatenated): before, the first row of a txn_id
    # won and the other payment vanished from the graph.
    rows = [pay("T1", "B01", "B02", 5.0), pay("T1", "B03", "B04", 6.0), pay("T1", "B03", "B04", 6.0)]
    g = TransactionGraph.from_table(txns(rows), DetectionConfig.load())
    assert sorted(g.amount_orig.tolist()) == [5.0, 6.0]
    assert sorted(map(tuple, g.edges.submitted_by)) == [("B01", "B02"), ("B03", "B04")]


# --- the property -----------------------------------------------------------------------------
_ids = st.sampled_from([f"T{i}" for i in range(12)])
_bank = st.sampled_from(BANKS)
_payment = st.tuples(_ids, _bank, _bank, st.integers(1, 4), st.integers(0, 5), st.sampled_from(["a", "b"]))
# what the malicious member adds: any txn_id (honest ones included), any banks, any values
_forged = st.tuples(_ids, _bank, _bank, st.integers(1, 9), st.integers(0, 5), st.sampled_from(["a", "b", "z"]),
                    st.sampled_from([None, 0, 1]))


def _honest_world(payments) -> list[dict]:
    """Distinct payments; a txn_id may repeat across bank pairs (banks' own id schemes collide)."""
    seen, rows = set(), []
    for txn, s, d, amount, day, acct in payments:
        if (txn, s, d) in seen:
            continue
        seen.add((txn, s, d))
        rows.append(pay(txn, s, d, float(amount), day, src=acct, dst=acct + "2"))
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_payment, min_size=1, max_size=25), st.lists(_forged, max_size=25), st.booleans(),
       st.booleans())
def test_property_no_member_can_erase_or_change_an_honest_payment(payments, forged, split_nights, validated):
    """For any honest world and any rows the malicious member B01 adds (validated or not, in
    the same run or a later one), every honest payment between two other banks survives the
    merge (and the next night's history) exactly once and unchanged, and every honest bank's
    own copy of a payment with B01 survives too, unchanged."""
    world = _honest_world(payments)
    honest = [b for b in BANKS if b != EVIL]
    evil_rows = txns([pay(t, s, d, float(a), day, src=acct, dst=acct, label=lab)
                      for t, s, d, a, day, acct, lab in forged])
    if validated:
        evil_rows = validate(evil_rows, bank_id=EVIL, now=T0 + timedelta(days=365)).good
    evil_own = [r for r in world if EVIL in (r["src_bank"], r["dst_bank"])]
    honest_batches = batches_of(world, honest)
    if split_nights:  # night 1: the honest world; night 2: the attack against the history
        first = merge_batches(honest_batches + [(EVIL, txns(evil_own))])
        m = merge_batches([(EVIL, evil_rows)], first.history())
    else:
        m = merge_batches(honest_batches + [(EVIL, txns(evil_own)), (EVIL, evil_rows)])
    # the next night's history, after one more quiet run
    after = merge_batches([("B02", txns([]))], m.history())

    for result in (m.merged, after.merged):
        view = payment_view(result)
        submitted = result.column("submitted_by").to_pylist()
        for r in world:
            want = payment_view(txns([r]))[0]
            others = EVIL not in (r["src_bank"], r["dst_bank"])
            hits = [i for i, v in enumerate(view) if v == want]
            key_rows = [i for i, v in enumerate(view) if v[:1] + v[2:3] + v[4:5] == want[:1] + want[2:3] + want[4:5]]
            if others:
                # exactly one row for the payment's key, with the honest values and banks
                assert len(key_rows) == 1 and hits == key_rows
                assert submitted[hits[0]] == sorted({r["src_bank"], r["dst_bank"]})
            else:
                mine = {r["src_bank"], r["dst_bank"]} - {EVIL}
                assert not mine or any(set(submitted[i]) >= mine for i in hits), "an honest bank's copy was lost"
    # the graph reconciles with the same rule: the merged table is already a fixed point
    again = TransactionGraph._merge_duplicate_rows(m.merged, None)
    assert again.to_pylist() == m.merged.to_pylist()


def test_the_run_summary_names_conflicts_per_sending_bank():
    from aml.operator.run import format_summary

    text = format_summary({"run_id": "run-1", "accepted": 2, "rejected": 0, "skipped": 0, "rows": 3,
                           "rows_quarantined": 0, "alerts": 0, "conflicts_by_bank": {"B02": 1, "B01": 1},
                           "foreign_by_bank": {}})
    assert "(kept apart), per sending bank: B01 1, B02 1" in text
    assert "dropped" not in text
