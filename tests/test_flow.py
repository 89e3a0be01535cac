"""The flow's parts outside Prefect: ledger, merge/reconcile, sealed history, work area, the
outside-the-enclave inbox checks. Fast: no Prefect server, no detection."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from aml.enclave.history import empty_history, read_history, trim_to_window, write_history
from aml.enclave.merge import merge_batches
from aml.enclave.workarea import remove_stale_work_areas, work_area
from aml.core.errors import RunBusyError, TamperedError
from aml.operator.ledger import BatchRecord, Ledger, run_lock
from aml.core.schema import TRANSACTION_SCHEMA

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def txns(rows: list[dict]) -> pa.Table:
    base = {"currency": "USD", "amount_received": None, "receiving_currency": None,
            "payment_format": "Wire", "label": None}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=TRANSACTION_SCHEMA)


def row(txn, src_bank="B01", dst_bank="B02", amount=100.0, day=0, label=None, src="a1", dst="b1"):
    return {"txn_id": txn, "timestamp": T0 + timedelta(days=day), "src_bank": src_bank, "src_account": src,
            "dst_bank": dst_bank, "dst_account": dst, "amount": amount, "label": label}


# --- merge and reconcile ----------------------------------------------------------------------
def test_two_agreeing_copies_become_one_row_submitted_by_both():
    m = merge_batches([("B01", txns([row("t1")])), ("B02", txns([row("t1")]))])
    assert m.merged.num_rows == 1
    assert m.merged.column("submitted_by").to_pylist() == [["B01", "B02"]]
    assert m.merged.column("is_new").to_pylist() == [True]
    assert m.counts["cross_bank"] == 1 and m.counts["conflicts"] == 0


def test_disagreeing_copies_are_kept_apart_each_as_its_banks_own_and_counted():
    m = merge_batches([("B01", txns([row("t1"), row("t2")])), ("B02", txns([row("t1", amount=999.0)]))])
    got = [(r["txn_id"], r["amount"], r["submitted_by"]) for r in m.merged.to_pylist()]
    assert got == [("t1", 100.0, ["B01"]), ("t1", 999.0, ["B02"]), ("t2", 100.0, ["B01"])]
    assert m.counts["conflicts"] == 1 and m.conflicts_by_bank == {"B01": 1, "B02": 1}


def test_labels_combine_and_labelled_rows_are_not_new():
    m = merge_batches([("B01", txns([row("t1", label=0)])), ("B02", txns([row("t1", label=1)]))])
    assert m.merged.column("label").to_pylist() == [1]
    assert m.merged.column("is_new").to_pylist() == [False]


def test_filled_in_defaults_do_not_count_as_disagreement():
    a = txns([row("t1")])
    b = txns([{**row("t1"), "amount_received": 100.0, "receiving_currency": "USD"}])
    m = merge_batches([("B01", a), ("B02", b)])
    assert m.counts["conflicts"] == 0 and m.merged.num_rows == 1


def test_history_joins_later_copy_and_same_bank_resend_replaces():
    first = merge_batches([("B01", txns([row("t1"), row("t2", amount=5.0)]))])
    assert first.counts["new_rows"] == 2
    later = merge_batches([("B02", txns([row("t1")])), ("B01", txns([row("t2", amount=6.0)]))], first.history())
    got = {r["txn_id"]: r for r in later.merged.to_pylist()}
    assert got["t1"]["submitted_by"] == ["B01", "B02"]
    assert got["t2"]["amount"] == 6.0 and got["t2"]["submitted_by"] == ["B01"]
    assert later.counts["history_rows"] == 2


def test_a_copy_from_a_bank_not_on_the_row_is_dropped_and_the_payment_kept():
    agree = [("B01", txns([row("t1")])), ("B02", txns([row("t1")]))]
    m = merge_batches(agree + [("B03", txns([row("t1", src="other")]))])
    assert m.merged.column("submitted_by").to_pylist() == [["B01", "B02"]]
    assert m.merged.column("src_account").to_pylist() == ["a1"]
    assert m.counts["conflicts"] == 0 and m.counts["foreign_copies"] == 1 and m.foreign_by_bank == {"B03": 1}


def test_a_conflict_clears_when_the_bank_resends_an_agreeing_copy():
    m = merge_batches([("B01", txns([row("t1")])), ("B02", txns([row("t1", src="other")]))])
    assert m.merged.num_rows == 2 and m.counts["conflicts"] == 1
    # B02 corrects its copy in a later batch of the same run: its latest copy counts.
    fixed = merge_batches([("B01", txns([row("t1")])), ("B02", txns([row("t1", src="other")])),
                           ("B02", txns([row("t1")]))])
    assert fixed.merged.column("submitted_by").to_pylist() == [["B01", "B02"]]
    assert fixed.counts["conflicts"] == 0 and fixed.counts["cross_bank"] == 1
    # ... or in a later run, against the history
    later = merge_batches([("B02", txns([row("t1")]))], m.history())
    assert later.merged.column("submitted_by").to_pylist() == [["B01", "B02"]]


def test_batches_without_rows_merge_to_an_empty_table_with_history_kept():
    empty = TRANSACTION_SCHEMA.empty_table()
    assert merge_batches([("B01", empty), ("B02", empty)]).merged.num_rows == 0
    hist = merge_batches([("B01", txns([row("t1", label=0)]))]).history()
    m = merge_batches([("B01", empty)], hist)
    assert m.merged.column("txn_id").to_pylist() == ["t1"]
    assert m.merged.column("is_new").to_pylist() == [False] and m.counts["history_rows"] == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["B01", "B02", "B03"]), st.sampled_from(["B01", "B02", "B03"]),
                          st.integers(1, 10_000)), min_size=1, max_size=30))
def test_splitting_by_bank_then_merging_gives_back_every_payment_once(payments):
    table = txns([row(f"t{i}", s, d, float(a), day=i % 5) for i, (s, d, a) in enumerate(payments)])
    parts = []
    for bank in ("B01", "B02", "B03"):
        mine = [r for r in table.to_pylist() if bank in (r["src_bank"], r["dst_bank"])]
        if mine:
            parts.append((bank, pa.Table.from_pylist(mine, schema=TRANSACTION_SCHEMA)))
    m = merge_batches(parts)
    assert sorted(m.merged.column("txn_id").to_pylist()) == sorted(table.column("txn_id").to_pylist())
    assert m.counts["conflicts"] == 0
    for r in m.merged.to_pylist():
        assert r["submitted_by"] == sorted({r["src_bank"], r["dst_bank"]})


# --- sealed history -------------------------------------------------------------------------
def test_history_round_trips_and_refuses_another_runs_file(tmp_path):
    key = bytes(range(32))
    # A long account id: two bytes like "a1" turn up in random ciphertext every few runs.
    hist = merge_batches([("B01", txns([row("t1", src="CANARY-acct-5b1e"), row("t2", day=40)]))]).history()
    write_history(hist, tmp_path / "h.aes", key, "run-a")
    assert b"CANARY-acct-5b1e" not in (tmp_path / "h.aes").read_bytes()
    assert read_history(tmp_path / "h.aes", key, "run-a").to_pylist() == hist.to_pylist()
    with pytest.raises(TamperedError):
        read_history(tmp_path / "h.aes", key, "run-b")
    blob = bytearray((tmp_path / "h.aes").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "h.aes").write_bytes(bytes(blob))
    with pytest.raises(TamperedError):
        read_history(tmp_path / "h.aes", key, "run-a")
    assert read_history(None, key, None).num_rows == 0 == empty_history().num_rows


def test_window_is_measured_from_the_latest_transaction():
    hist = merge_batches([("B01", txns([row("old", day=0), row("mid", day=20), row("new", day=40)]))]).history()
    assert trim_to_window(hist, 30).column("txn_id").to_pylist() == ["mid", "new"]
    assert trim_to_window(hist, 100) is hist  # nothing to drop: the same table, not a copy


def test_merge_output_order_and_conflicts_with_history_and_many_batches():
    # Output is ordered by (timestamp, txn_id, src_bank, dst_bank, submitting bank) whatever the
    # arrival order; a conflict in the middle of the order keeps both copies apart and leaves
    # every other payment, with its own banks and label, in place.
    hist = merge_batches([("B01", txns([row("h2", day=2, label=0), row("h1", day=1)]))]).history()
    m = merge_batches([("B02", txns([row("c", day=1, amount=5.0), row("b", day=1), row("h1", day=1)])),
                       ("B01", txns([row("c", day=1, amount=6.0), row("a", day=3, label=1)]))], hist)
    assert m.merged.column("txn_id").to_pylist() == ["b", "c", "c", "h1", "h2", "a"]
    assert m.merged.column("amount").to_pylist() == [100.0, 6.0, 5.0, 100.0, 100.0, 100.0]
    assert m.merged.column("submitted_by").to_pylist() == [["B02"], ["B01"], ["B02"], ["B01", "B02"], ["B01"], ["B01"]]
    assert m.merged.column("label").to_pylist() == [None, None, None, None, 0, 1]
    assert m.merged.column("is_new").to_pylist() == [True, True, True, True, False, False]
    assert m.counts == {"rows": 6, "new_rows": 4, "cross_bank": 1, "conflicts": 1, "foreign_copies": 0,
                        "history_rows": 2}


# --- ledger, lock, work area ----------------------------------------------------------------
def test_ledger_records_a_batch_once_only(tmp_path):
    b = BatchRecord("batch-1", "B01", 1, "ab" * 32, 10)
    with Ledger(tmp_path) as ledger:
        ledger.commit_run("run-1", [b], "history-run-1.aes", {"rows": 10})
        with pytest.raises(sqlite3.IntegrityError):
            ledger.commit_run("run-2", [BatchRecord("batch-2", "B02", 1, "cd" * 32, 5), b], "h2", {})
        assert ledger.batch_count() == 1 and not ledger.run_exists("run-2")
        with pytest.raises(sqlite3.IntegrityError):  # same bank and sequence, other batch id
            ledger.commit_run("run-3", [BatchRecord("batch-3", "B01", 1, "ef" * 32, 5)], "h3", {})
        assert ledger.last_sequence("B01") == 1 and ledger.last_sequence("B02") is None
        assert ledger.current_history() == "history-run-1.aes" and ledger.next_run_sequence() == 2


def test_run_lock_refuses_a_second_run(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunBusyError):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_work_area_is_removed_after_failure_and_stale_ones_at_start(tmp_path):
    with pytest.raises(ValueError):
        with work_area(tmp_path, "run-x") as wd:
            (wd / "plain.parquet").write_bytes(b"rows")
            raise ValueError
    assert not (tmp_path / "work" / "run-x").exists()
    stale = tmp_path / "work" / "run-killed"
    stale.mkdir(parents=True)
    (stale / "plain.parquet").write_bytes(b"rows")
    assert remove_stale_work_areas(tmp_path) == 1 and not stale.exists()


def test_run_id_is_deterministic_and_order_free():
    from flows.consortium import run_id_for

    assert run_id_for(["b", "a"]) == run_id_for(["a", "b"]) != run_id_for(["a"])


# --- outside the enclave: the inbox checks --------------------------------------------------
@pytest.fixture()
def enclave(tmp_path):
    from aml.bank.keygen import keygen
    from aml.enclave.identity import init_enclave

    keys, edir, inbox = tmp_path / "keys", tmp_path / "enclave", tmp_path / "inbox"
    for bank in ("B01", "B02"):
        keygen(bank, keys)
    init_enclave(edir, keys)
    inbox.mkdir()
    batch = tmp_path / "b.parquet"
    pq.write_table(txns([row("t1")]), batch)
    return {"keys": keys, "enclave": edir, "inbox": inbox, "batch": batch, "tmp": tmp_path}


def _seal(e, bank="B01", sequence=None, expires_hours=72.0) -> Path:
    from aml.bank.seal import seal

    from aml.tools.demo import pin_policy

    return seal(bank=bank, key=e["keys"] / f"{bank}.key", attestation=e["enclave"] / "attestation.json",
                file=e["batch"], inbox=e["inbox"], policy=pin_policy(e["enclave"], e["tmp"] / "bank"),
                allow_simulated=True, sequence=sequence, expires_hours=expires_hours)


def _verify(e) -> dict:
    from flows.consortium import verify_inbox

    return {c["file"]: c for c in verify_inbox.fn(str(e["enclave"]), str(e["inbox"]))}


def _reason(e, name) -> dict:
    return json.loads((e["inbox"] / "quarantine" / f"{name}.reason.json").read_text())


def test_inbox_checks_accept_good_batches_and_quarantine_the_rest(enclave):
    e = enclave
    good = _seal(e, "B01", sequence=5)
    replayed = _seal(e, "B01", sequence=5)  # a second batch reusing sequence 5
    (e["inbox"] / "junk.amlb").write_bytes(b"not a sealed file")
    forged = _seal(e, "B02", sequence=1)
    data = bytearray(forged.read_bytes())
    data[-70] ^= 1  # inside the signature
    forged.write_bytes(bytes(data))

    out = _verify(e)
    accepted = [f for f, c in out.items() if c["status"] == "accepted"]
    assert len(accepted) == 1 and accepted[0] in (good.name, replayed.name)
    codes = sorted(c["code"] for c in out.values() if c["status"] == "rejected")
    assert codes == sorted(["replay", "format", "bad_signature"])
    assert (e["inbox"] / "quarantine" / "junk.amlb").is_file()
    assert _reason(e, "junk.amlb")["code"] == "format"
    assert not forged.exists() and _reason(e, forged.name)["code"] == "bad_signature"


def test_inbox_symlinks_are_quarantined_not_followed(enclave):
    """Issue 14, finding 11: a link in the inbox (to a genuine batch elsewhere, or to any file the
    flow can read) is never opened; the link itself goes to quarantine with its reason."""
    e = enclave
    elsewhere = e["tmp"] / "elsewhere"
    genuine = _seal(e, "B01", sequence=1)
    elsewhere.mkdir()
    target = elsewhere / genuine.name
    genuine.rename(target)
    link = e["inbox"] / genuine.name
    link.symlink_to(target)
    (e["inbox"] / "passwd.amlb").symlink_to("/etc/passwd")
    honest = _seal(e, "B02", sequence=1)

    out = _verify(e)
    assert out[honest.name]["status"] == "accepted"
    for name in (genuine.name, "passwd.amlb"):
        assert out[name]["status"] == "rejected" and out[name]["code"] == "bad_input"
        assert "symbolic link" in _reason(e, name)["message"]
        moved = e["inbox"] / "quarantine" / name
        assert moved.is_symlink() and not (e["inbox"] / name).exists()
    assert target.is_file()  # the file the link pointed at is left alone


def test_inbox_checks_skip_processed_batches_and_refuse_lower_sequences(enclave):
    e = enclave
    first = _seal(e, "B01", sequence=3)
    c = _verify(e)[first.name]
    with Ledger(e["enclave"]) as ledger:
        ledger.commit_run("run-1", [BatchRecord(c["batch_id"], "B01", 3, c["sha256"], 1)], "h", {})
    older = _seal(e, "B01", sequence=2)
    out = _verify(e)
    assert out[first.name]["status"] == "skipped" and out[first.name]["code"] == "already_processed"
    assert out[older.name]["status"] == "rejected" and out[older.name]["code"] == "replay"


def test_inbox_checks_refuse_expired_and_non_member_batches(enclave):
    from aml.bank.keygen import keygen
    from aml.core.crypto.container import ENCLAVE, Header, seal_bytes, table_to_parquet
    from aml.core.crypto.keys import load_keypair
    from aml.enclave.identity import load_members
    from aml.core.schema import SCHEMA_VERSION

    e = enclave
    expired = _seal(e, "B01", sequence=1, expires_hours=0.0001)
    time.sleep(1)
    keygen("X09", e["tmp"] / "outsider")
    outsider = load_keypair(e["tmp"] / "outsider" / "X09.key")
    enclave_pub = load_members(e["enclave"])["B01"]  # any X25519 key: membership fails first
    now = int(time.time())
    header = Header(kind="batch", sender="X09", recipient=ENCLAVE, batch_id="outsider1", sequence=1,
                    created=now, expires=now + 3600, schema_version=SCHEMA_VERSION, row_count=1,
                    recipient_key_id=enclave_pub.key_id, sender_key_id=outsider.key_id)
    (e["inbox"] / "X09-1.amlb").write_bytes(
        seal_bytes(table_to_parquet(txns([row("t1")]), TRANSACTION_SCHEMA), header, enclave_pub, outsider))
    out = _verify(e)
    assert out[expired.name]["code"] == "expired"
    assert out["X09-1.amlb"]["code"] == "not_a_member"
