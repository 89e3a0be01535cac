"""`aml open`: verify and decrypt the enclave's sealed alert files for one bank.

Runs at the bank. Imports no Prefect. Every file is verified (attestation, the enclave's
signature, recipient, expiry, every chunk) before anything is written; the output appears
only after all files verified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aml.bank.seal import load_member_key, verified_enclave
from aml.crypto.container import ENCLAVE, open_bytes, parquet_to_table, read_header
from aml.errors import BadInputError, FormatError

OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")


def _json_rows(table) -> list[str]:
    rows = table.to_pylist()
    for row in rows:
        for name in ("start", "end"):
            row[name] = row[name].isoformat().replace("+00:00", "Z")
    return [json.dumps(row, ensure_ascii=False) for row in rows]


def _write(table, tmp: Path, suffix: str) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if suffix == ".parquet":
        pq.write_table(table, tmp)
    elif suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in _json_rows(table))
    else:  # CSV has no lists: list cells hold a JSON array
        lists = [n for n in table.column_names if pa.types.is_list(table.schema.field(n).type)]
        for name in lists:
            cells = [json.dumps(v, ensure_ascii=False) for v in table[name].to_pylist()]
            table = table.set_column(table.schema.get_field_index(name), name, pa.array(cells, pa.string()))
        pacsv.write_csv(table, tmp)


def open_alerts(bank: str, key: Path, attestation: Path, sealed: list[Path], out: Path,
                policy: Path | None = None, show: bool = False) -> int:
    """Verify and decrypt `sealed` alert files for `bank` into OUT; returns the alert count."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from aml.schema import ALERT_SCHEMA

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise BadInputError(f"output '{out.name}' must end in {', '.join(OUTPUT_FORMATS)}")
    if not sealed:
        raise BadInputError("no sealed files given")
    enclave = verified_enclave(attestation, policy)
    pair = load_member_key(bank, key, enclave)

    tables = []
    for path in sealed:
        claimed = read_header(Path(path))  # unauthenticated: only to refuse the wrong kind of file clearly
        if claimed.kind != "alerts" or claimed.sender != ENCLAVE:
            raise FormatError(f"'{Path(path).name}' is not an alerts file from the enclave "
                              f"(kind '{claimed.kind}', sender '{claimed.sender}')", batch_id=claimed.batch_id)
        header, payload = open_bytes(Path(path), pair, enclave.ed25519_public, expected_recipient=bank)
        table = parquet_to_table(payload, ALERT_SCHEMA)
        if header.row_count != 0:  # alert counts never travel in clear (see seal_alerts)
            raise FormatError(f"'{Path(path).name}': alert file header carries a row count", batch_id=header.batch_id)
        if table.num_rows and not pc.all(pc.equal(table["bank"], bank)).as_py():
            raise FormatError(f"'{Path(path).name}' holds alerts addressed to another bank", batch_id=header.batch_id)
        tables.append(table)
    alerts = pa.concat_tables(tables)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _write(alerts, tmp, suffix)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if show:
        for line in _json_rows(alerts):
            print(line)
    return alerts.num_rows
