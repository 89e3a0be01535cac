"""Readers: canonical CSV, Parquet (file and bytes), IBM AMLworld `*_Trans.csv` (aml/core/schema.py)."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aml.core.errors import BadInputError, SchemaError
from aml.core.schema import (
    COLUMNS, IBM_CURRENCY_CODES, MALFORMED_COLUMN, TRANSACTION_SCHEMA, read_raw,
    read_transactions, read_validated, validate,
)

FIXTURES = Path(__file__).parent / "fixtures"
IBM_TINY = FIXTURES / "HI-Tiny_Trans.csv"

CANONICAL_CSV = (
    "txn_id,timestamp,src_bank,src_account,dst_bank,dst_account,amount,currency,"
    "payment_format,label\n"
    "t1,2024-03-01T10:00:00Z,010,A1,020,B1,100.5,USD,Wire,1\n"
    "t2,2024-03-01 11:30:00+02:00,020,B1,010,A2,7,EUR,ACH,\n"
    "t3,2024-03-02,010,A2,010,A1,0.01,BTC,Bitcoin,0\n"
)


def _ibm_rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    return [line.split(",") for line in lines[1:]]


# --- IBM AMLworld --------------------------------------------------------------------------

def test_ibm_fixture_has_the_exact_ibm_header():
    header = IBM_TINY.read_text().splitlines()[0].split(",")
    assert header.count("Account") == 2
    assert header[0] == "Timestamp" and header[-1] == "Is Laundering"


def test_ibm_reader_maps_columns_in_order_and_keeps_bank_ids_as_written():
    raw = read_raw(IBM_TINY)
    rows = _ibm_rows(IBM_TINY)
    assert raw.num_rows == len(rows)
    assert raw["txn_id"].to_pylist() == [f"ibm-{i}" for i in range(len(rows))]
    assert raw["src_bank"].to_pylist() == [r[1] for r in rows]
    assert raw["src_account"].to_pylist() == [r[2] for r in rows]  # first "Account": payer
    assert raw["dst_bank"].to_pylist() == [r[3] for r in rows]
    assert raw["dst_account"].to_pylist() == [r[4] for r in rows]  # second "Account": payee
    assert "010" in raw["src_bank"].to_pylist() and "0012" in raw["dst_bank"].to_pylist()


def test_ibm_reader_amounts_currencies_and_labels():
    good = validate(read_raw(IBM_TINY)).good
    rows = _ibm_rows(IBM_TINY)
    assert good.schema == TRANSACTION_SCHEMA
    assert good.num_rows == len(rows)
    assert good["amount"].to_pylist() == [float(r[7]) for r in rows]  # Amount Paid
    assert good["amount_received"].to_pylist() == [float(r[5]) for r in rows]
    assert good["currency"].to_pylist() == [IBM_CURRENCY_CODES[r[8]] for r in rows]
    assert good["receiving_currency"].to_pylist() == [IBM_CURRENCY_CODES[r[6]] for r in rows]
    assert good["label"].to_pylist() == [int(r[10]) for r in rows]
    assert good["payment_format"].to_pylist() == [r[9] for r in rows]
    # every currency name of the mapping appears in the fixture
    seen = set(good["receiving_currency"].to_pylist()) | set(good["currency"].to_pylist())
    assert seen == set(IBM_CURRENCY_CODES.values())


def test_ibm_timestamps_are_utc():
    good = read_transactions(IBM_TINY)
    assert good["timestamp"][0].as_py() == datetime(2022, 9, 1, 0, 20, tzinfo=timezone.utc)
    assert good["timestamp"][-1].as_py() == datetime(2022, 9, 2, 0, 0, tzinfo=timezone.utc)


def test_ibm_format_is_detected_and_can_be_forced(tmp_path):
    forced = read_raw(IBM_TINY, fmt="ibm")
    assert forced.equals(read_raw(IBM_TINY))
    with pytest.raises(SchemaError, match="txn_id"):
        read_raw(IBM_TINY, fmt="canonical")  # an IBM file lacks the canonical columns


def test_ibm_unknown_currency_name_is_quarantined_not_crashing(tmp_path):
    text = IBM_TINY.read_text().splitlines()
    text[1] = text[1].replace("US Dollar,Reinvestment", "Peso Dollar,Reinvestment")
    f = tmp_path / "x_Trans.csv"
    f.write_text("\n".join(text) + "\n")
    result = validate(read_raw(f))
    assert result.counts == {"unknown_currency": 1}
    assert result.quarantine["row"].to_pylist() == [0]
    assert result.quarantine["currency"].to_pylist() == ["Peso Dollar"]


def test_ibm_pandas_written_header_is_accepted(tmp_path):
    text = IBM_TINY.read_text().replace("To Bank,Account,", "To Bank,Account.1,", 1)
    f = tmp_path / "p_Trans.csv"
    f.write_text(text)
    assert read_raw(f)["dst_account"].equals(read_raw(IBM_TINY)["dst_account"])


def test_ibm_header_missing_columns_is_a_schema_error_naming_them(tmp_path):
    f = tmp_path / "bad_Trans.csv"
    f.write_text("Timestamp,From Bank,Account,To Bank,Account,Amount Received\n")
    with pytest.raises(SchemaError, match="Is Laundering") as exc:
        read_raw(f, fmt="ibm")
    assert "2022" not in str(exc.value)


# --- canonical CSV and Parquet --------------------------------------------------------------

def test_canonical_csv_parses_iso_timestamps_and_defaults_optional_columns():
    result = read_validated(CANONICAL_CSV.encode(), bank_id=None)
    good = result.good
    assert result.counts == {}
    assert good.schema == TRANSACTION_SCHEMA
    assert good["src_bank"].to_pylist() == ["010", "020", "010"]
    assert good["timestamp"].to_pylist() == [
        datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc),
        datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc),
        datetime(2024, 3, 2, 0, 0, tzinfo=timezone.utc),
    ]
    assert good["amount_received"].to_pylist() == good["amount"].to_pylist()
    assert good["receiving_currency"].to_pylist() == good["currency"].to_pylist()
    assert good["label"].to_pylist() == [1, None, 0]


def test_canonical_csv_file_with_extra_and_reordered_columns(tmp_path):
    lines = CANONICAL_CSV.splitlines()
    header = lines[0].split(",")
    order = list(reversed(range(len(header))))
    text = ",".join(["note"] + [header[i] for i in order]) + "\n"
    for line in lines[1:]:
        cells = line.split(",")
        text += ",".join(["x"] + [cells[i] for i in order]) + "\n"
    f = tmp_path / "t.csv"
    f.write_text(text)
    raw = read_raw(f)
    assert "note" not in raw.column_names
    assert read_transactions(f).equals(read_transactions(CANONICAL_CSV.encode()))


def test_canonical_csv_missing_required_column_names_it():
    text = CANONICAL_CSV.replace("currency,", "curr,", 1)
    with pytest.raises(SchemaError, match="currency"):
        read_raw(text.encode())


def test_parquet_bytes_and_file_round_trip(tmp_path):
    good = read_transactions(IBM_TINY)
    buf = io.BytesIO()
    pq.write_table(good, buf)
    from_bytes = read_transactions(buf.getvalue())
    assert from_bytes.equals(good)
    path = tmp_path / "batch.parquet"
    pq.write_table(good, path)
    assert read_transactions(path).equals(good)


def test_parquet_with_loose_types_is_validated(tmp_path):
    table = pa.table(
        {
            "txn_id": ["a", "b", "c"],
            "timestamp": pa.array([0, 1_000_000, 2_000_000], pa.timestamp("ns")),  # naive: UTC
            "src_bank": ["1", "1", "2"], "src_account": ["x", "y", "z"],
            "dst_bank": ["2", "2", "1"], "dst_account": ["y", "x", "x"],
            "amount": pa.array([1, -1, 3], pa.int64()),
            "currency": pa.array(["USD", "USD", "EUR"]).dictionary_encode(),
            "payment_format": ["ACH", "ACH", "Wire"],
            "label": pa.array([1.0, None, 2.0]),
        }
    )
    path = tmp_path / "loose.parquet"
    pq.write_table(table, path)
    result = read_validated(path, bank_id="1")
    assert result.counts == {"bad_amount": 1, "bad_label": 1}
    assert result.good["txn_id"].to_pylist() == ["a"]
    assert result.good["label"].to_pylist() == [1]
    assert result.quarantine.schema.field("amount").type == pa.string()


def test_garbage_bytes_and_missing_files_are_clean_errors(tmp_path):
    with pytest.raises(SchemaError) as exc:
        read_raw(b"PAR1 this is not parquet \x00\x01 secret-account-123")
    assert "secret" not in str(exc.value)
    with pytest.raises(BadInputError, match="not found"):
        read_raw(tmp_path / "nope.csv")
    with pytest.raises(BadInputError, match="format"):
        read_raw(IBM_TINY, fmt="xml")


def test_csv_lines_with_wrong_field_count_keep_their_row_index(tmp_path):
    rows = IBM_TINY.read_text().splitlines()
    rows[3] = rows[3] + ",extra,fields"  # data row 2
    rows.insert(6, "")  # a blank line is not a data row
    rows[9] = "2022/09/01 00:20,010"  # data row 7 (after the blank line)
    f = tmp_path / "broken_Trans.csv"
    f.write_text("\n".join(rows) + "\n")
    raw = read_raw(f)
    assert raw.num_rows == len(_ibm_rows(IBM_TINY))
    assert MALFORMED_COLUMN in raw.column_names
    result = validate(raw)
    assert result.counts == {"malformed_row": 2}
    assert result.quarantine["row"].to_pylist() == [2, 7]
    # txn_ids of the other rows still follow the file's data row index
    assert "ibm-8" in result.good["txn_id"].to_pylist()
    assert read_raw(IBM_TINY)["src_account"][8] == result.good.filter(
        pa.compute.equal(result.good["txn_id"], "ibm-8"))["src_account"][0]


def test_columns_constant_is_the_canonical_order():
    assert read_transactions(IBM_TINY).column_names == COLUMNS


def test_invalid_utf8_in_one_cell_is_quarantined_not_fatal():
    data = CANONICAL_CSV.encode().replace(b",USD,", b",US\xff,")
    result = read_validated(data, bank_id=None)
    assert result.counts == {"unknown_currency": 1}
    assert result.quarantine["currency"].to_pylist() == ["US\ufffd"]
