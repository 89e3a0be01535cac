"""The enclave's transaction history, encrypted at rest with the enclave's storage key.

History is every reconciled row of earlier runs within a time window (default 30 days), so
detectors see patterns that span nights. It lives in ENCLAVE_DIR/state/history-<run_id>.aes:
AES-256-GCM under the storage key (which only the enclave worker holds), with the file's
format label and run id bound as associated data, so a history file cannot be swapped for
another run's or altered unnoticed. Which file is current is recorded in the ledger together
with the batches of the run that wrote it, so a crash never leaves a half-committed history.

The window is measured back from the latest transaction time seen (not the wall clock), so a
rerun of the same inputs keeps exactly the same rows.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aml.core.errors import FormatError, TamperedError
from aml.core.schema import TRANSACTION_SCHEMA

DEFAULT_WINDOW_DAYS = 30
MAGIC = b"AMLHIST1"
NONCE_LEN = 12

HISTORY_SCHEMA = pa.schema(list(TRANSACTION_SCHEMA) + [pa.field("submitted_by", pa.list_(pa.string()), nullable=False)])


def history_file_name(run_id: str) -> str:
    return f"history-{run_id}.aes"


def _aad(run_id: str) -> bytes:
    return MAGIC + b"|" + run_id.encode("ascii")


def empty_history() -> pa.Table:
    return HISTORY_SCHEMA.empty_table()


def write_history(table: pa.Table, path: Path, storage_key: bytes, run_id: str) -> int:
    """Encrypt `table` (HISTORY_SCHEMA) to `path`; returns the row count."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.select(HISTORY_SCHEMA.names).cast(HISTORY_SCHEMA), sink, compression="zstd",
                   write_statistics=False)  # read whole, never filtered: statistics only cost time
    nonce = os.urandom(NONCE_LEN)
    blob = MAGIC + nonce + AESGCM(storage_key).encrypt(nonce, sink.getvalue().to_pybytes(), _aad(run_id))
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return table.num_rows


def read_history(path: Path | None, storage_key: bytes, run_id: str | None) -> pa.Table:
    """Decrypt a history file written by `write_history` for `run_id`; empty when `path` is None."""
    if path is None:
        return empty_history()
    blob = Path(path).read_bytes()
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_LEN + 16:
        raise FormatError("history file is not an enclave history file")
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_LEN]
    try:
        plain = AESGCM(storage_key).decrypt(nonce, blob[len(MAGIC) + NONCE_LEN:], _aad(run_id or ""))
    except InvalidTag:
        raise TamperedError("history file failed authentication (altered, or not the committed run's)") from None
    return pq.read_table(pa.BufferReader(plain)).cast(HISTORY_SCHEMA)


def trim_to_window(table: pa.Table, days: float, keep: pa.ChunkedArray | None = None) -> pa.Table:
    """Rows within `days` of the latest timestamp in `table` (plus rows where `keep` is true)."""
    if table.num_rows == 0:
        return table
    latest = pc.max(table.column("timestamp")).as_py()
    cutoff = pa.scalar(latest - timedelta(days=days), type=table.schema.field("timestamp").type)
    mask = pc.greater_equal(table.column("timestamp"), cutoff)
    if keep is not None:
        mask = pc.or_(mask, keep)
    if pc.all(mask).as_py():  # nothing to drop: no copy of a table that can be gigabytes
        return table
    return table.filter(mask)
