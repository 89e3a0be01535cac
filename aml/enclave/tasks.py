"""The enclave tasks: the only code that sees decrypted rows. Each runs in the enclave worker
(`EnclaveTaskRunner`), writes plaintext only inside the run's work area and returns paths,
hashes and counts, nothing else.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from aml.enclave.runner import enclave_keys, enclave_log, enclave_task
from aml.errors import FormatError, MembershipError
from aml.crypto.digest import sha256_file

from prefect import get_run_logger




def _millis(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


@enclave_task
def unseal_batch(enclave_dir: str, batch_file: str, bank: str, batch_id: str, work_dir: str) -> dict:
    """Decrypt one bank's sealed batch, validate its rows and keep the good ones in the work area.
    Returns the work-area path of the good rows and counts (quarantine reasons by code)."""
    import pyarrow.parquet as pq

    from aml.enclave.identity import load_members, open_batch
    from aml.schema import validate

    start = time.perf_counter()
    members = load_members(Path(enclave_dir))
    if bank not in members:
        raise MembershipError(f"bank {bank} is not a member", batch_id=batch_id)
    header, table = open_batch(Path(batch_file), enclave_keys(enclave_dir), members[bank])
    if header.sender != bank or header.batch_id != batch_id:
        raise FormatError("header changed between the outside check and unsealing", batch_id=batch_id)
    result = validate(table, bank_id=bank)
    out_dir = Path(work_dir) / "batches"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    out = out_dir / f"{bank}-{batch_id}.parquet"
    pq.write_table(result.good, out)
    reasons = {str(code): int(n) for code, n in result.counts.items() if int(n) and code != "good"}
    enclave_log(get_run_logger(), "batch_unsealed", batch_id=batch_id, bank=bank,
                rows=result.good.num_rows, quarantined=result.quarantine.num_rows)
    return {"bank": bank, "batch_id": batch_id, "path": str(out), "rows": result.good.num_rows,
            "quarantined": result.quarantine.num_rows, "reasons": reasons, "millis": _millis(start)}


@enclave_task
def detect_and_seal(enclave_dir: str, work_dir: str, run_id: str, run_sequence: int,
                    batches: list[dict], history_file: str | None, history_run_id: str | None,
                    window_days: float, provenance: dict) -> dict:
    """Merge the run's batches with history, detect, and seal one alert file per member bank.

    Writes, in the work area: out/<bank>.amla (sealed, padded; one per member even when empty)
    and history.aes (the new history, encrypted). Returns their paths and hashes, the alert
    count per typology (totals over all banks, never per bank) and stage durations."""
    import pyarrow.parquet as pq

    from aml.detect.config import DetectionConfig
    from aml.detect.pipeline import run_detection
    from aml.enclave.history import read_history, trim_to_window, write_history
    from aml.enclave.identity import load_members, seal_alerts
    from aml.enclave.merge import merge_batches

    logger = get_run_logger()
    keys = enclave_keys(enclave_dir)
    members = load_members(Path(enclave_dir))
    work = Path(work_dir)
    millis: dict[str, int] = {}

    start = time.perf_counter()
    history = read_history(Path(history_file) if history_file else None, keys.storage_key, history_run_id)
    new = [(b["bank"], pq.read_table(b["path"])) for b in batches]
    merged = merge_batches(new, history)
    in_window = trim_to_window(merged.merged, window_days, keep=merged.merged.column("is_new"))
    enclave_log(logger, "history_loaded", rows=history.num_rows, kept=max(0, in_window.num_rows - merged.counts["new_rows"]))
    enclave_log(logger, "merged", batches=len(batches), rows=in_window.num_rows,
                cross_bank=merged.counts["cross_bank"], conflicts=merged.counts["conflicts"])
    millis["merge"] = _millis(start)

    start = time.perf_counter()
    config = DetectionConfig.load()
    result = run_detection(in_window, config, members=sorted(members))
    n_alerts = sum(result.counts.values())
    enclave_log(logger, "detected", alerts=n_alerts, rows=in_window.num_rows)
    millis["detect"] = _millis(start)

    start = time.perf_counter()
    out_dir = work / "out"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    prov = dict(provenance, model_hash=result.model_hash, config_hash=result.config_hash)
    alerts = {}
    for bank in sorted(members):
        sealed = seal_alerts(result.alerts_for(bank), bank, members[bank], keys, run_id, run_sequence, prov)
        path = out_dir / f"{bank}.amla"
        path.write_bytes(sealed)
        alerts[bank] = {"path": str(path), "sha256": hashlib.sha256(sealed).hexdigest()}
    enclave_log(logger, "sealed", files=len(alerts), run_id=run_id)

    history_path = work / "history.aes"
    kept = write_history(trim_to_window(merged.history(), window_days), history_path, keys.storage_key, run_id)
    millis["seal"] = _millis(start)

    return {
        "alerts": alerts,
        "patterns": {str(k): int(v) for k, v in sorted(result.counts.items())},
        "merge": {k: int(v) for k, v in merged.counts.items()},
        "history": {"path": str(history_path), "sha256": sha256_file(history_path), "rows": int(kept)},
        "model_hash": str(result.model_hash),
        "config_hash": str(result.config_hash),
        "millis": millis,
    }
