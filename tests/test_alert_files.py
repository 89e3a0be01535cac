"""Every member's alert file of a run has the same size, so a file's size cannot tell the
operator which bank got alerts (issue 14, finding 6); each bank still opens its own alerts."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aml.core.crypto import container
from aml.core.crypto.keys import load_keypair, write_keypair
from aml.enclave import runner, tasks
from aml.enclave.alert_files import ALERT_FILE_FLOOR, _payload_len_for, seal_run_alerts
from aml.enclave.identity import init_enclave, load_enclave_keys, load_members, seal_alerts
from aml.core.schema import ALERT_SCHEMA, TRANSACTION_SCHEMA

T0 = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)
BANKS = ["B01", "B02", "B03"]


@pytest.fixture()
def enclave(tmp_path, monkeypatch):
    monkeypatch.setattr("aml.core.measure.measure_tree", lambda root: "ab" * 32)
    keys = tmp_path / "keys"
    for bank in BANKS:
        write_keypair(bank, keys)
    init_enclave(tmp_path / "enclave", keys)
    return tmp_path


def _open(data: bytes, bank: str, enclave_dir, keys_dir) -> pa.Table:
    """What `aml open` does with the file: verify, decrypt, strip the padding, parse."""
    pair = load_keypair(keys_dir / f"{bank}.key")
    enclave_public = load_enclave_keys(enclave_dir).public
    header, payload = container.open_bytes(data, pair, enclave_public.ed25519, expected_recipient=bank)
    assert header.kind == "alerts" and header.row_count == 0
    return container.parquet_to_table(payload, ALERT_SCHEMA)


def _fans(bank: str, centres: int) -> list[dict]:
    """`centres` accounts at `bank` each paying 8 fresh accounts (who pass it on at once):
    fan-outs the detectors flag. All inside `bank`, so only `bank` gets alerts about them."""
    rows = []
    for c in range(centres):
        for k in range(8):
            at = T0 + timedelta(days=c, hours=1 + k)
            payee, onward = f"P{c}{k:03d}", f"Q{c}{k:03d}"
            rows.append(dict(txn_id=f"{bank}-{c}-{k}a", timestamp=at, src_bank=bank, src_account=f"C{c:03d}",
                             dst_bank=bank, dst_account=payee, amount=6000.0))
            rows.append(dict(txn_id=f"{bank}-{c}-{k}b", timestamp=at + timedelta(minutes=30), src_bank=bank,
                             src_account=payee, dst_bank=bank, dst_account=onward, amount=5900.0))
    return rows


def _batch(rows: list[dict]) -> pa.Table:
    base = dict(currency="USD", amount_received=None, receiving_currency=None, payment_format="Wire",
                label=None)
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=TRANSACTION_SCHEMA)


def test_a_run_seals_every_members_alert_file_to_one_size(enclave, monkeypatch):
    """The enclave task itself (merge, detect, seal) over three banks' batches: B01 gets many
    alerts, B02 one pattern's worth, B03 none; their sealed files are the same size."""
    monkeypatch.setitem(runner._WORKER, "inside", True)  # this process plays the enclave worker
    monkeypatch.setattr(tasks, "get_run_logger", lambda: logging.getLogger("test-enclave"))
    work = enclave / "work"
    work.mkdir(mode=0o700)
    # B03 sends only history (labelled clean): nothing of it can raise an alert.
    quiet = [dict(txn_id=f"B03-{k}", timestamp=T0 - timedelta(hours=3 * k), src_bank="B03",
                  src_account=f"S{k}", dst_bank="B03", dst_account=f"M{k}", amount=120.0 + k, label=0)
             for k in range(3)]
    batches = []
    for bank, rows in (("B01", _fans("B01", 6)), ("B02", _fans("B02", 1)), ("B03", quiet)):
        path = work / f"{bank}.arrow"
        tasks.write_work_table(_batch(rows), path)
        batches.append({"bank": bank, "batch_id": f"{bank.lower()}batch", "path": str(path), "sequence": 1,
                        "sha256": f"{len(batches):064x}", "rows": len(rows)})

    out = tasks.detect_and_seal.fn(str(enclave / "enclave"), str(work), "run-sizes", batches, [],
                                   30.0, "default", {"run_id": "run-sizes"})

    files = {bank: open(out["alerts"][bank]["path"], "rb").read() for bank in BANKS}
    opened = {bank: _open(data, bank, enclave / "enclave", enclave / "keys") for bank, data in files.items()}
    counts = {bank: t.num_rows for bank, t in opened.items()}
    assert counts["B03"] == 0 and 1 <= counts["B02"] < counts["B01"], counts
    assert len({len(d) for d in files.values()}) == 1, {b: len(d) for b, d in files.items()}
    assert len(files["B01"]) >= ALERT_FILE_FLOOR
    for bank, table in opened.items():  # each bank still reads exactly its own alerts
        assert set(table.column("bank").to_pylist()) <= {bank}
        assert all(a.startswith(("C", "P", "Q")) for acc in table.column("accounts").to_pylist() for a in acc)


def _many_alerts(bank: str, n: int) -> pa.Table:
    return pa.Table.from_pylist([
        dict(alert_id=f"{i:020x}", bank=bank, pattern="fan_out", score=0.5, accounts=[f"A{i:07d}"],
             txn_ids=[f"T{i:07d}", f"T{i + n:07d}"], start=T0, end=T0 + timedelta(minutes=i),
             amount=1000.0 + i, institutions=3, hops=2,
             explanation=f"Funds fanned out from your account A{i:07d} to {i % 40} accounts; case {i}")
        for i in range(n)], schema=ALERT_SCHEMA)


def test_the_largest_file_of_a_run_sets_the_size_above_the_floor(enclave):
    keys, members = load_enclave_keys(enclave / "enclave"), load_members(enclave / "enclave")
    tables = {"B01": _many_alerts("B01", 3000), "B02": _many_alerts("B02", 1)}  # B03: none
    files = seal_run_alerts(tables, members, keys, "run-big", 4, {"run_id": "run-big"}, now=1_800_000_000)
    alone = seal_alerts(tables["B01"], "B01", members["B01"], keys, "run-big", 4, {"run_id": "run-big"},
                        now=1_800_000_000)
    assert len(alone) > ALERT_FILE_FLOOR  # B01's own Padmé bucket is the run's largest
    assert {len(d) for d in files.values()} == {len(alone)}
    for bank in ("B01", "B02", "B03"):
        got = _open(files[bank], bank, enclave / "enclave", enclave / "keys")
        want = tables.get(bank, ALERT_SCHEMA.empty_table())
        assert got.equals(want)


def test_small_runs_are_padded_to_the_floor(enclave):
    keys, members = load_enclave_keys(enclave / "enclave"), load_members(enclave / "enclave")
    for tables in ({}, {"B02": _many_alerts("B02", 10)}):
        files = seal_run_alerts(tables, members, keys, "run-small", 2, {}, now=1_800_000_000)
        assert {len(d) for d in files.values()} == {ALERT_FILE_FLOOR}


@settings(max_examples=200, deadline=None)
@given(st.integers(16, 4096), st.integers(0, 20_000))
def test_padding_reaches_every_size_except_across_a_chunk_tag(chunk, extra):
    header = container.Header(kind="alerts", sender=container.ENCLAVE, recipient="B01", batch_id="r1", sequence=1,
                              created=1, expires=2, schema_version=1, row_count=0, recipient_key_id="k1",
                              sender_key_id="k2", chunk_size=chunk)
    size = container.sealed_length(header, container.LENGTH_PREFIX_LEN) + extra
    payload_len = _payload_len_for(header, size)
    if payload_len is None:  # only just past a chunk boundary, where a whole tag appears at once
        below = [_payload_len_for(header, size - j) for j in range(1, container.TAG_LEN + 1)]
        assert any(p is not None and p % chunk == 0 for p in below)
    else:
        assert container.sealed_length(header, payload_len) == size
