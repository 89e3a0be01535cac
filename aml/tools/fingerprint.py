"""A fingerprint of detection's output, for refactors that must not change it.

    python -m aml.tools.fingerprint sample_data [more data dirs...]

Runs detection on each data set exactly as `aml evaluate` splits it (history = first 60% by
time, members = the 8 largest banks), with fixed alert and placeholder keys, and prints one line
per data set: the sha256 of every bank's alert table (Arrow IPC bytes, banks in order), of the
model's scores, and the alert counts. Two trees whose lines match detect identically.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from aml.tools.evaluate import _detection_input, _read_data, time_split

FIXED_KEY = b"fingerprint-alert-key-0123456789"
FIXED_PLACEHOLDER_KEY = b"fingerprint-placeholder-key-0123"


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def fingerprint(data_dir: Path) -> str:
    from aml.enclave.detect.config import DetectionConfig
    from aml.enclave.detect.pipeline import run_detection

    transactions, _ = _read_data(Path(data_dir))
    table, is_new, members, _ = time_split(transactions)
    result = run_detection(_detection_input(table, is_new, members), DetectionConfig.load(),
                           members=members, alert_key=FIXED_KEY, placeholder_key=FIXED_PLACEHOLDER_KEY)
    alerts = hashlib.sha256()
    for bank in result.banks:
        alerts.update(bank.encode() + b"\0" + _ipc_bytes(result.alerts_for(bank)))
    scores = hashlib.sha256()
    if result.edge_scores is not None:
        scores.update(np.ascontiguousarray(result.edge_scores, dtype=np.float64).tobytes())
    counts = ",".join(f"{k}={v}" for k, v in sorted(result.counts.items()))
    return f"{data_dir}: alerts {alerts.hexdigest()[:16]} scores {scores.hexdigest()[:16]} {counts}"


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["sample_data"]:
        print(fingerprint(Path(arg)), flush=True)
