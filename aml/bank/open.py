"""`aml open`: verify and decrypt the enclave's sealed alert files for one bank.

Runs at the bank. Imports no Prefect. Every file is verified (attestation, the enclave's
signature, recipient, expiry, every chunk) before anything is written; the output appears
only after all files verified.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from aml.bank.seal import (
    SEALED_FORMAT, latest_batch_path, load_member_key, read_state, verified_enclave, write_atomically,
)
from aml.core.crypto.container import ENCLAVE, open_bytes, parquet_to_table, read_header
from aml.core.crypto.keys import PublicKeys
from aml.core.errors import BadInputError, FormatError, StaleAlertsError

OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
OPENED_FORMAT = "aml-opened/1"


def opened_state_path(key: Path, bank: str) -> Path:
    """Beside the key (like <bank>.seq): the newest alert run sequence opened, per enclave key id."""
    return Path(key).parent / f"{bank}.opened.json"


def _check_not_older(headers: list, names: list[str], last: dict | None, key_id: str, allow_older: bool) -> None:
    """Refuse a file older than the newest this bank already opened from this enclave key.

    The enclave numbers its runs; an alert file with a lower run sequence than one already opened
    is an old file handed over again (replay). The same run again is fine: opening is idempotent."""
    newest = (last or {}).get(key_id, {}).get("sequence", 0)
    for header, name in zip(headers, names):
        if header.sequence >= newest:
            continue
        if not allow_older:
            raise StaleAlertsError(
                f"'{name}' is from run sequence {header.sequence}, older than run {newest} this bank already "
                f"opened from enclave key {key_id}: an old alert file handed over again (pass --allow-older "
                "to open it anyway)", batch_id=header.batch_id)
        print(f"aml: WARNING: '{name}' is older (run {header.sequence}) than run {newest} already opened "
              "(--allow-older)", file=sys.stderr)


def _note_latest_batch(headers: list, key: Path, bank: str, key_id: str) -> None:
    """Say on stderr when the newest alert file does not cover the bank's latest sealed batch.

    Not an error: the batch may have been sealed after that run, arrived late or been quarantined;
    but the analyst must know these alerts do not yet reflect it."""
    latest = read_state(latest_batch_path(key, bank), SEALED_FORMAT)
    if not latest or latest.get("enclave_key_id") != key_id:
        return
    newest = max(headers, key=lambda h: h.sequence)
    covered = any(latest.get("batch_id") in (h.provenance.get("batches") or []) for h in headers)
    if covered or "batches" not in newest.provenance:
        return
    why = ("it was not in that run (late or quarantined: ask the operator)" if newest.created >= latest.get("created", 0)
           else "that run happened before it was sealed")
    print(f"aml: note: these alerts do not cover your latest sealed batch (sequence {latest['sequence']}, "
          f"batch {latest['batch_id']}): {why}", file=sys.stderr)


def _record_opened(path: Path, last: dict | None, headers: list, key_id: str) -> None:
    newest = max(headers, key=lambda h: h.sequence)
    enclaves = dict((last or {}).get("enclaves", {}))
    if newest.sequence >= enclaves.get(key_id, {}).get("sequence", 0):
        enclaves[key_id] = {"sequence": newest.sequence, "run_id": newest.batch_id}
    doc = {"format": OPENED_FORMAT, "enclaves": enclaves}
    write_atomically(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


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


def open_alerts(bank: str, key: Path, attestation: Path, sealed: list[Path], out: Path, *,
                policy: Path, allow_simulated: bool = False, allow_older: bool = False, show: bool = False) -> int:
    """Verify and decrypt `sealed` alert files for `bank` into OUT; returns the alert count."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from aml.core.schema import ALERT_SCHEMA

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise BadInputError(f"output '{out.name}' must end in {', '.join(OUTPUT_FORMATS)}")
    if not sealed:
        raise BadInputError("no sealed files given")
    enclave = verified_enclave(attestation, policy, allow_simulated)
    pair = load_member_key(bank, key, enclave)
    key_id = PublicKeys.from_raw(enclave.x25519_public, enclave.ed25519_public, ENCLAVE).key_id
    state_path = opened_state_path(key, bank)
    state = read_state(state_path, OPENED_FORMAT)
    enclaves = (state or {}).get("enclaves", {})
    if not isinstance(enclaves, dict) or not all(
            isinstance(v, dict) and type(v.get("sequence")) is int for v in enclaves.values()):
        raise BadInputError(f"state file '{state_path}' is not an {OPENED_FORMAT} document")

    tables, headers = [], []
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
        headers.append(header)
    _check_not_older(headers, [Path(p).name for p in sealed], (state or {}).get("enclaves"), key_id, allow_older)
    _note_latest_batch(headers, Path(key), bank, key_id)
    alerts = pa.concat_tables(tables)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _write(alerts, tmp, suffix)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _record_opened(state_path, state, headers, key_id)  # only once everything verified and was written
    if show:
        for line in _json_rows(alerts):
            print(line)
    return alerts.num_rows
