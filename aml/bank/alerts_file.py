"""Read what `aml open` wrote (ALERTS .jsonl, .csv or .parquet) back into alert rows.

Runs at the bank. Every analyst command (cases, report, export) starts here, so the three
formats and their quirks (CSV list cells hold JSON arrays, JSONL times are ISO strings) are
handled once. Columns beyond the contract's are kept: they are provenance a newer enclave adds.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from aml.core.errors import BadInputError

ALERT_COLUMNS = ("alert_id", "bank", "pattern", "score", "accounts", "txn_ids", "start", "end",
                 "amount", "institutions", "hops", "explanation")
LIST_COLUMNS = ("accounts", "txn_ids")
TIME_COLUMNS = ("start", "end")


def _parse_time(value) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise BadInputError(f"'{path.name}' line {n} is not JSON") from None
        return rows
    if suffix == ".csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header}))
        rows = table.to_pylist()
        for row in rows:
            for name in LIST_COLUMNS:
                if isinstance(row.get(name), str):
                    try:
                        row[name] = json.loads(row[name])
                    except json.JSONDecodeError:
                        raise BadInputError(f"'{path.name}': column {name} is not a JSON list") from None
        return rows
    raise BadInputError(f"alerts file '{path.name}' must end in .jsonl, .csv or .parquet")


def read_alerts(paths: list[Path], bank: str | None = None) -> list[dict]:
    """Alert rows from every file, deduplicated by alert_id (first wins), in file order.

    With `bank`, an alert addressed to another bank is refused: an analyst's commands work on
    one bank's alerts only."""
    out: dict[str, dict] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise BadInputError(f"alerts file '{path}' does not exist")
        try:
            rows = _rows(path)
        except BadInputError:
            raise
        except Exception as exc:  # pyarrow / OS errors: say what failed, never the content
            raise BadInputError(f"cannot read alerts file '{path.name}' ({type(exc).__name__})") from None
        for row in rows:
            missing = [c for c in ALERT_COLUMNS if c not in row]
            if missing:
                raise BadInputError(f"'{path.name}' is not an alerts file: missing column(s) {', '.join(missing)}")
            try:
                for name in TIME_COLUMNS:
                    row[name] = _parse_time(row[name])
                for name in LIST_COLUMNS:
                    row[name] = [str(v) for v in row[name]]
                row["score"], row["amount"] = float(row["score"]), float(row["amount"])
                row["institutions"], row["hops"] = int(row["institutions"]), int(row["hops"])
            except (TypeError, ValueError):
                raise BadInputError(f"'{path.name}': an alert has a malformed value") from None
            if bank is not None and row["bank"] != bank:
                raise BadInputError(f"'{path.name}' holds alerts addressed to another bank, not {bank}")
            out.setdefault(str(row["alert_id"]), row)
    return list(out.values())


def read_own_transactions(path: Path, bank: str) -> dict[str, dict]:
    """The bank's own batch (the file it sealed), as txn_id -> row, for the per-payment detail
    (time, amount, format, which side is the bank's) that alerts do not carry. Rows that touch no
    account of `bank` are dropped: they cannot be the bank's own."""
    import pyarrow.compute as pc

    from aml.core.schema import read_raw, validate

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"transactions file '{path}' does not exist")
    table = validate(read_raw(path), bank_id=bank).good  # foreign and malformed rows: quarantined
    mine = pc.or_(pc.equal(table["src_bank"], bank), pc.equal(table["dst_bank"], bank))
    return {r["txn_id"]: r for r in table.filter(mine).to_pylist()}
