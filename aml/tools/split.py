"""`aml split`: one batch file per member bank.

A bank's batch holds every transaction that touches one of its accounts, so a payment between
two member banks lands in both batches with the same txn_id (contract.md, "Transactions").
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aml.core.errors import BadInputError
from aml.core.schema import read_raw, validate

MEMBERS_FILE = "members.txt"
QUARANTINE_FILE = "quarantine.parquet"

# Bank ids become file names: refuse anything that could escape DIR or clash with our files.
_SAFE_BANK_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_RESERVED_IDS = {"members", "quarantine"}


class SplitCounts(dict):
    """Rows written per member bank (bank id -> rows), plus `quarantined`: rows that failed
    validation and `reasons`: reason code -> rows (counts only)."""

    def __init__(self, rows: dict[str, int], quarantined: int, reasons: dict[str, int]):
        super().__init__(rows)
        self.quarantined = quarantined
        self.reasons = reasons


def bank_row_counts(table: pa.Table) -> dict[str, int]:
    """Rows touching each bank; a payment inside one bank counts once for it."""
    src, dst = table["src_bank"], table["dst_bank"]
    other_dst = dst.filter(pc.not_equal(src, dst))
    banks = pa.chunked_array(src.chunks + other_dst.chunks, type=pa.string())
    tally = pc.value_counts(banks)
    return dict(zip(tally.field("values").to_pylist(), tally.field("counts").to_pylist()))


def choose_members(table: pa.Table, n: int) -> list[str]:
    """The `n` banks touching the most rows, ties broken by bank id."""
    if n < 1:
        raise BadInputError("--members must be at least 1")
    counts = bank_row_counts(table)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [bank for bank, _ in ranked[:n]]


def split_table(table: pa.Table, members: list[str]) -> dict[str, pa.Table]:
    """Every row whose src_bank or dst_bank is the member, for each member."""
    return {
        bank: table.filter(
            pc.or_(pc.equal(table["src_bank"], bank), pc.equal(table["dst_bank"], bank))
        )
        for bank in members
    }


def read_members_file(path: Path) -> list[str]:
    """One bank id a line; blank lines and `#` comments are ignored; order kept, repeats dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputError(f"members file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read members file {path} ({type(exc).__name__})") from None
    members = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    members = list(dict.fromkeys(m for m in members if m))
    if not members:
        raise BadInputError(f"members file {path} lists no bank ids")
    return members


def _check_bank_ids(members: list[str]) -> None:
    for bank in members:
        if not _SAFE_BANK_ID.match(bank) or bank.lower() in _RESERVED_IDS:
            # the id is an identifier, not transaction data, but keep the message generic anyway
            raise BadInputError(
                "a member bank id cannot be used as a file name "
                "(allowed: letters, digits, '_', '-', '.'; not 'members' or 'quarantine')"
            )


def split_file(
    file: Path,
    out: Path,
    members: int = 8,
    members_file: Path | None = None,
    fmt: str | None = None,
) -> SplitCounts:
    """Write OUT/<bank_id>.parquet per member, OUT/members.txt and OUT/quarantine.parquet.

    Input is validated first (no bank filter); rows that fail go to quarantine.parquet with
    their reason, so nothing is lost silently. Returns rows written per member bank.
    """
    result = validate(read_raw(Path(file), fmt))
    good = result.good
    if members_file:
        chosen = read_members_file(Path(members_file))
    else:
        chosen = choose_members(good, members)
    _check_bank_ids(chosen)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if good.num_rows == 0:
        pq.write_table(result.quarantine, out / QUARANTINE_FILE)
        detail = ", ".join(f"{r} {k}" for r, k in result.counts.items()) or "the file has no rows"
        raise BadInputError(f"no valid rows to split ({detail}); see {out / QUARANTINE_FILE}")
    rows: dict[str, int] = {}
    for bank, batch in split_table(good, chosen).items():
        pq.write_table(batch, out / f"{bank}.parquet")
        rows[bank] = batch.num_rows
    (out / MEMBERS_FILE).write_text("".join(f"{bank}\n" for bank in chosen), encoding="utf-8")
    # Always written (maybe empty) so a stale file from an earlier run cannot mislead.
    pq.write_table(result.quarantine, out / QUARANTINE_FILE)
    return SplitCounts(rows, result.quarantine.num_rows, dict(result.counts))
