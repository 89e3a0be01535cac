"""Row validation and quarantine (aml/core/schema.py `validate`)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.core.errors import SchemaError
from aml.core.schema import COLUMNS, REASONS, TRANSACTION_SCHEMA, read_raw, validate

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)

GOOD = {
    "txn_id": "t0",
    "timestamp": "2024-05-31T09:15:00Z",
    "src_bank": "010",
    "src_account": "A1",
    "dst_bank": "020",
    "dst_account": "B1",
    "amount": "120.50",
    "currency": "USD",
    "amount_received": "110.00",
    "receiving_currency": "EUR",
    "payment_format": "Wire",
    "label": "",
}


def row(i: int = 0, **changes) -> dict:
    r = dict(GOOD, txn_id=f"t{i}")
    r.update(changes)
    return r


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in COLUMNS]))


def check(rows: list[dict], bank_id: str | None = None):
    result = validate(table(rows), bank_id=bank_id, now=NOW)
    # the invariant, on every call: each input row exactly once, in good or in quarantine
    assert result.good.num_rows + result.quarantine.num_rows == len(rows)
    assert sum(result.counts.values()) == result.quarantine.num_rows
    assert result.good.schema == TRANSACTION_SCHEMA
    return result


def reasons_of(result) -> dict[int, str]:
    q = result.quarantine
    return dict(zip(q["row"].to_pylist(), q["reason"].to_pylist()))


def test_good_rows_pass_and_are_typed():
    result = check([row(0), row(1, label="1", amount_received="", receiving_currency="")])
    assert result.counts == {}
    good = result.good
    assert good["amount"].to_pylist() == [120.5, 120.5]
    # optional columns default to amount/currency when empty
    assert good["amount_received"].to_pylist() == [110.0, 120.5]
    assert good["receiving_currency"].to_pylist() == ["EUR", "USD"]
    assert good["label"].to_pylist() == [None, 1]


@pytest.mark.parametrize("column", ["txn_id", "timestamp", "src_bank", "src_account", "dst_bank",
                                    "dst_account", "amount", "currency", "payment_format"])
@pytest.mark.parametrize("empty", [None, "", "   "])
def test_missing_field(column, empty):
    result = check([row(0), row(1, **{column: empty})])
    assert reasons_of(result) == {1: "missing_field"}


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "2024/02/30 10:00", "12:00"])
def test_bad_timestamp(value):
    assert reasons_of(check([row(0, timestamp=value), row(1)])) == {0: "bad_timestamp"}


def test_future_timestamp_allows_one_day_of_skew():
    soon = (NOW + timedelta(hours=23)).isoformat()
    later = (NOW + timedelta(days=1, minutes=1)).isoformat()
    result = check([row(0, timestamp=soon), row(1, timestamp=later)])
    assert reasons_of(result) == {1: "future_timestamp"}


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "NaN", "inf", "1e400", "1,000", "0x10"])
def test_bad_amount(value):
    assert reasons_of(check([row(0), row(1, amount=value)])) == {1: "bad_amount"}


@pytest.mark.parametrize("value", ["abc", "-1", "0", "inf"])
def test_bad_amount_received_when_given(value):
    assert reasons_of(check([row(0, amount_received=value)])) == {0: "bad_amount"}


@pytest.mark.parametrize("changes", [{"currency": "XXX"}, {"currency": "Euro"},
                                     {"receiving_currency": "usd"}])
def test_unknown_currency(changes):
    assert reasons_of(check([row(0), row(1, **changes)])) == {1: "unknown_currency"}


@pytest.mark.parametrize("value", ["2", "-1", "yes", "0.5", "true"])
def test_bad_label(value):
    assert reasons_of(check([row(0, label=value), row(1, label="0")])) == {0: "bad_label"}


def test_foreign_row_only_with_bank_id():
    rows = [row(0), row(1, src_bank="030", dst_bank="040"), row(2, src_bank="040", dst_bank="010")]
    assert reasons_of(check(rows, bank_id="010")) == {1: "foreign_row"}
    assert reasons_of(check(rows)) == {}
    # bank ids compare as written: "10" is not "010"
    assert reasons_of(check([row(0)], bank_id="10")) == {0: "foreign_row"}


def test_duplicate_keeps_the_first_copy():
    result = check([row(5), row(6), row(5), row(5)])
    assert reasons_of(result) == {2: "duplicate", 3: "duplicate"}
    assert result.good["txn_id"].to_pylist() == ["t5", "t6"]


def test_duplicate_compares_parsed_values():
    same_instant = row(1, timestamp="2024-05-31 11:15:00+02:00", amount="120.5")
    assert reasons_of(check([row(1), same_instant])) == {1: "duplicate"}


def test_duplicate_conflict_quarantines_every_copy():
    rows = [row(1), row(2), row(1, amount="99"), row(1), row(3)]
    result = check(rows)
    assert reasons_of(result) == {0: "duplicate_conflict", 2: "duplicate_conflict",
                                  3: "duplicate_conflict"}
    assert result.counts == {"duplicate_conflict": 3}
    assert result.good["txn_id"].to_pylist() == ["t2", "t3"]


def test_rows_failing_earlier_checks_do_not_make_duplicates():
    result = check([row(1, amount="-3"), row(1)])
    assert reasons_of(result) == {0: "bad_amount"}


def test_first_failing_check_wins():
    r = row(0, timestamp="nope", amount="-1", currency="XXX", label="7", src_bank="999")
    assert reasons_of(check([r], bank_id="010")) == {0: "bad_timestamp"}
    r = row(0, amount="-1", currency="XXX", label="7")
    assert reasons_of(check([r], bank_id="010")) == {0: "bad_amount"}
    r = row(0, currency="XXX", label="7", src_bank="999", dst_bank="998")
    assert reasons_of(check([r], bank_id="010")) == {0: "unknown_currency"}


def test_counts_and_quarantine_columns():
    rows = [row(0), row(1, amount="x"), row(2, amount="y"), row(3, label="9")]
    result = check(rows)
    assert result.counts == {"bad_amount": 2, "bad_label": 1}
    q = result.quarantine
    assert q.column_names[:2] == ["row", "reason"]
    assert q.schema.field("row").type == pa.int64()
    assert set(q.column_names[2:]) == set(COLUMNS)
    assert q["amount"].to_pylist() == ["x", "y", "120.50"]
    assert set(result.counts) <= set(REASONS)


def test_missing_required_columns_raise_schema_error_naming_them():
    t = table([row(0)]).drop_columns(["amount", "currency"])
    with pytest.raises(SchemaError, match="amount, currency"):
        validate(t)


def test_empty_table():
    result = check([])
    assert result.good.num_rows == 0 and result.counts == {}


def test_reason_codes_are_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for code in REASONS:
        assert f"`{code}`" in doc


# --- property: arbitrary garbage never crashes, never loses or doubles a row -------------------

junk = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["", " ", "nan", "-inf", "1e999", "-0", "0", "1", "2", "USD", "Euro",
                     "2024-02-30", "9999-99-99", "2024/01/01 25:61", "99999999999999999999999",
                     "-1e-320", "1_0", "\x00", "010", "t1"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat()),
)


@st.composite
def mixed_rows(draw):
    n = draw(st.integers(min_value=0, max_value=25))
    rows = []
    for i in range(n):
        r = row(draw(st.integers(0, 8)))  # small id space: duplicates and conflicts happen
        for col in draw(st.lists(st.sampled_from(COLUMNS), max_size=4)):
            r[col] = draw(junk)
        rows.append(r)
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=mixed_rows(), bank=st.sampled_from([None, "010", "020", "999"]))
def test_property_every_row_lands_exactly_once(rows, bank):
    result = validate(table(rows), bank_id=bank, now=NOW)
    q_rows = result.quarantine["row"].to_pylist()
    assert len(set(q_rows)) == len(q_rows)
    assert result.good.num_rows + len(q_rows) == len(rows)
    assert all(0 <= i < len(rows) for i in q_rows)
    assert set(result.quarantine["reason"].to_pylist()) <= set(REASONS)
    # quarantined rows carry their own input values
    assert result.quarantine["txn_id"].to_pylist() == [rows[i]["txn_id"] for i in q_rows]
    good = result.good
    assert good.schema == TRANSACTION_SCHEMA
    amounts = np.asarray(good["amount"].to_pylist() + good["amount_received"].to_pylist(), float)
    assert np.all(np.isfinite(amounts)) and np.all(amounts > 0)
    assert all(math.isfinite(a) for a in good["amount"].to_pylist())
    assert good["txn_id"].null_count == 0 and good["timestamp"].null_count == 0
    assert len(set(good["txn_id"].to_pylist())) == good.num_rows  # no txn_id twice
    if bank is not None:
        assert all(bank in (s, d) for s, d in zip(good["src_bank"].to_pylist(),
                                                   good["dst_bank"].to_pylist()))
    # good rows are the input rows not quarantined, in input order
    kept = [i for i in range(len(rows)) if i not in set(q_rows)]
    assert good["txn_id"].to_pylist() == [rows[i]["txn_id"] for i in kept]


@settings(max_examples=30, deadline=None)
@given(rows=mixed_rows())
def test_property_csv_round_trip_never_crashes(rows):
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        # CSV cannot carry NUL or bare newlines/CR inside unquoted-newline mode: strip them
        writer.writerow({k: (None if v is None else
                             v.replace("\x00", "").replace("\n", " ").replace("\r", " "))
                         for k, v in r.items()})
    result = validate(read_raw(buf.getvalue().encode()), now=NOW)
    assert result.good.num_rows + result.quarantine.num_rows == len(rows)
    q_rows = result.quarantine["row"].to_pylist()
    assert len(q_rows) == len(set(q_rows))
