"""`aml split` (aml/tools/split.py) through the library and through the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aml.cli import main
from aml.core.errors import BadInputError
from aml.core.schema import TRANSACTION_SCHEMA, read_transactions
from aml.tools.split import choose_members, read_members_file, split_file, split_table

IBM_TINY = Path(__file__).parent / "fixtures" / "HI-Tiny_Trans.csv"


def ibm_rows() -> list[list[str]]:
    with IBM_TINY.open(newline="") as f:
        return list(csv.reader(f))[1:]


def touching(rows: list[list[str]], bank: str) -> list[str]:
    """txn_ids (contract: "ibm-" + data row index) of rows whose From or To Bank is `bank`."""
    return [f"ibm-{i}" for i, r in enumerate(rows) if bank in (r[1], r[3])]


def expected_members(rows: list[list[str]], n: int) -> list[str]:
    counts = Counter()
    for r in rows:
        counts.update({r[1], r[3]})  # a payment inside one bank counts once
    return [b for b, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:n]


def test_cli_split_ibm_fixture(tmp_path, capsys):
    out = tmp_path / "batches"
    assert main(["split", str(IBM_TINY), "--out", str(out), "--members", "4"]) == 0
    rows = ibm_rows()
    members = expected_members(rows, 4)
    assert (out / "members.txt").read_text().splitlines() == members
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    for bank in members:
        batch = pq.read_table(out / f"{bank}.parquet")
        assert batch.schema == TRANSACTION_SCHEMA
        assert sorted(batch["txn_id"].to_pylist()) == sorted(touching(rows, bank))
        assert int(printed[bank]) == batch.num_rows
    assert pq.read_table(out / "quarantine.parquet").num_rows == 0


def test_cross_member_payment_lands_in_both_batches(tmp_path):
    out = tmp_path / "b"
    split_file(IBM_TINY, out, members=8)
    # ibm-4: bank 010 pays bank 1120
    a = pq.read_table(out / "010.parquet")["txn_id"].to_pylist()
    b = pq.read_table(out / "1120.parquet")["txn_id"].to_pylist()
    assert "ibm-4" in a and "ibm-4" in b


def test_members_file_with_comments_and_unknown_banks(tmp_path):
    mf = tmp_path / "members.cfg"
    mf.write_text("# consortium\n\n0012   # bank with leading zeros\n70\n0012\n555\n")
    assert read_members_file(mf) == ["0012", "70", "555"]
    out = tmp_path / "b"
    counts = split_file(IBM_TINY, out, members_file=mf)
    rows = ibm_rows()
    assert dict(counts) == {"0012": len(touching(rows, "0012")), "70": len(touching(rows, "70")),
                            "555": 0}
    assert (out / "members.txt").read_text() == "0012\n70\n555\n"
    assert not (out / "12.parquet").exists()


def test_members_file_errors(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        split_file(IBM_TINY, tmp_path / "o", members_file=tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n\n")
    with pytest.raises(BadInputError, match="no bank ids"):
        split_file(IBM_TINY, tmp_path / "o", members_file=empty)
    evil = tmp_path / "evil.txt"
    evil.write_text("../escape\n")
    with pytest.raises(BadInputError, match="file name"):
        split_file(IBM_TINY, tmp_path / "o", members_file=evil)
    assert not (tmp_path / "escape.parquet").exists()


def test_split_quarantines_bad_rows_and_loses_nothing(tmp_path, capsys):
    lines = IBM_TINY.read_text().splitlines()
    lines[2] = lines[2].replace("0.01,US Dollar,Cheque", "-4,US Dollar,Cheque")  # data row 1
    lines[5] = lines[5].replace("2022/09/01", "2022/19/01")  # data row 4
    f = tmp_path / "dirty_Trans.csv"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "b"
    assert main(["split", str(f), "--out", str(out), "--members", "3", "--format", "ibm"]) == 0
    stdout = capsys.readouterr().out
    assert "# quarantined 2 rows" in stdout and "bad_amount 1" in stdout
    q = pq.read_table(out / "quarantine.parquet")
    assert dict(zip(q["row"].to_pylist(), q["reason"].to_pylist())) == {
        1: "bad_amount", 4: "bad_timestamp"}
    written = set()
    for bank in (out / "members.txt").read_text().split():
        written |= set(pq.read_table(out / f"{bank}.parquet")["txn_id"].to_pylist())
    assert not written & {"ibm-1", "ibm-4"}


def test_choose_members_ties_by_bank_id():
    t = pa.table({"src_bank": ["b", "a", "c", "c"], "dst_bank": ["a", "b", "c", "d"]})
    # a: 2, b: 2, c: 2 (the c->c row counts once), d: 1
    assert choose_members(t, 3) == ["a", "b", "c"]
    assert choose_members(t, 10) == ["a", "b", "c", "d"]
    with pytest.raises(BadInputError):
        choose_members(t, 0)


def test_split_table_selects_rows_touching_each_member():
    good = read_transactions(IBM_TINY)
    parts = split_table(good, ["010", "70"])
    rows = ibm_rows()
    assert parts["010"]["txn_id"].to_pylist() == touching(rows, "010")
    assert parts["70"]["txn_id"].to_pylist() == touching(rows, "70")


def test_aml_split_subprocess_reports_errors_on_one_line(tmp_path):
    aml = Path(sys.executable).with_name("aml")
    done = subprocess.run([str(aml), "split", str(tmp_path / "none.csv"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "not found" in done.stderr


def test_split_refuses_a_file_without_valid_rows(tmp_path):
    lines = IBM_TINY.read_text().splitlines()[:3]
    f = tmp_path / "bad_Trans.csv"
    f.write_text("\n".join([lines[0]] + [ln.replace("US Dollar", "Doubloon") for ln in lines[1:]]))
    out = tmp_path / "o"
    with pytest.raises(BadInputError, match="no valid rows .*unknown_currency 2"):
        split_file(f, out)
    assert pq.read_table(out / "quarantine.parquet").num_rows == 2
