"""The enclave tasks: the only code that sees decrypted rows. Each runs in the enclave worker
(`EnclaveTaskRunner`), writes plaintext only inside the run's work area and returns paths,
hashes and counts, nothing else.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from aml.enclave.runner import enclave_keys, enclave_log, enclave_task, hand_over, sole_worker, take_over
from aml.errors import FormatError, MembershipError, ResourceExhaustedError
from aml.crypto.digest import sha256_file

from prefect import get_run_logger




def _millis(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


# Unsealed batches wait for the merge in the worker's memory when the runner has one worker
# (the default: every enclave task runs in that process), else in the work area in Arrow's IPC
# format, uncompressed: read back moments later, so encoding them (Parquet) cost more than it saved.
WORK_TABLE_SUFFIX = ".arrow"


def write_work_table(table, path: Path) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)


def read_work_table(path: str | Path):
    """A table written by `write_work_table`, memory-mapped (no copy until it is used)."""
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def _in_background(fn, *args):
    """Start `fn(*args)` in a thread of this worker; the future's result is (fn's result, ms)."""
    from concurrent.futures import ThreadPoolExecutor

    def timed():
        start = time.perf_counter()
        return fn(*args), _millis(start)

    pool = ThreadPoolExecutor(1, thread_name_prefix="enclave-background")
    future = pool.submit(timed)
    pool.shutdown(wait=False)  # the thread ends with its one job
    return future


def _unsealed(work: Path, path: str):
    """A batch's good rows as `unseal_batch` left them: in this worker's memory, else on disk."""
    table = take_over(work, path)
    return table if table is not None else read_work_table(path)


UNSEALING_DIR = "unsealing"
# Test hook (like the flow's AML_CRASH_AT): "memory:<batch_id>" raises MemoryError and
# "kill:<batch_id>" ends the worker process while it unseals that batch. Availability only:
# whoever sets the enclave's environment can stop the worker anyway.
UNSEAL_FAULT_ENV = "AML_TEST_UNSEAL_FAULT"


def unsealing_marker(work_dir: str | Path, batch_id: str) -> Path:
    """Present while a batch is being unsealed: left behind when the worker dies on it."""
    return Path(work_dir) / UNSEALING_DIR / batch_id


def _test_fault(batch_id: str) -> None:
    import os

    fault = os.environ.get(UNSEAL_FAULT_ENV, "")
    if fault == f"memory:{batch_id}":
        raise MemoryError
    if fault == f"kill:{batch_id}":
        os._exit(137)


@enclave_task
def unseal_batch(enclave_dir: str, batch_file: str, bank: str, batch_id: str, work_dir: str) -> dict:
    """Decrypt one bank's sealed batch, validate its rows and keep the good ones for the merge.
    Returns the work-area name of the good rows and counts (quarantine reasons by code).

    Running out of memory on a batch is the batch's fault (`resource_exhausted`); so is the
    worker dying on it, which the flow tells from the marker this task leaves while it works."""
    marker = unsealing_marker(work_dir, batch_id)
    marker.parent.mkdir(mode=0o700, exist_ok=True)
    marker.touch()
    try:
        _test_fault(batch_id)
        return _unseal(enclave_dir, batch_file, bank, batch_id, work_dir)
    except MemoryError:
        raise ResourceExhaustedError("the enclave worker ran out of memory unsealing this batch",
                                     batch_id=batch_id) from None
    finally:
        marker.unlink(missing_ok=True)


def _unseal(enclave_dir: str, batch_file: str, bank: str, batch_id: str, work_dir: str) -> dict:
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
    out = out_dir / f"{bank}-{batch_id}{WORK_TABLE_SUFFIX}"
    if sole_worker():  # the merge runs in this process too: hand the rows over in memory
        hand_over(work_dir, str(out), result.good)
    else:
        write_work_table(result.good, out)
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
    from aml.detect.alerts import alert_key
    from aml.detect.config import DetectionConfig
    from aml.detect.pipeline import run_detection
    from aml.enclave.history import read_history, trim_to_window, write_history
    from aml.enclave.alert_files import seal_run_alerts
    from aml.enclave.identity import load_members
    from aml.enclave.merge import merge_batches

    logger = get_run_logger()
    keys = enclave_keys(enclave_dir)
    members = load_members(Path(enclave_dir))
    work = Path(work_dir)
    millis: dict[str, int] = {}

    start = time.perf_counter()
    history = read_history(Path(history_file) if history_file else None, keys.storage_key, history_run_id)
    history_rows = history.num_rows
    new = [(b["bank"], _unsealed(work, b["path"])) for b in batches]
    merged = merge_batches(new, history)
    del new, history  # the merged table holds every row now; detection needs the memory
    in_window = trim_to_window(merged.merged, window_days, keep=merged.merged.column("is_new"))
    merge_counts = merged.counts
    merged_conflicts, merged_foreign = merged.conflicts_by_bank, merged.foreign_by_bank
    enclave_log(logger, "history_loaded", rows=history_rows, kept=max(0, in_window.num_rows - merge_counts["new_rows"]))
    enclave_log(logger, "merged", batches=len(batches), rows=in_window.num_rows,
                cross_bank=merge_counts["cross_bank"], conflicts=merge_counts["conflicts"])
    millis["merge"] = _millis(start)

    # The new history (the same rows: no second copy) is encoded and encrypted in a background
    # thread while detection runs: Parquet's encoder and AES release the GIL, and detection
    # leaves a core idle part of the time. Only ciphertext reaches the work area, where it
    # stays until delivery, like the alert files.
    history_path = work / "history.aes"
    history_job = _in_background(write_history, trim_to_window(merged.history(), window_days), history_path,
                                 keys.storage_key, run_id)
    del merged

    start = time.perf_counter()
    config = DetectionConfig.load()
    # Partitioned on a Dask cluster of enclave workers when AML_DASK_WORKERS or
    # AML_DASK_SCHEDULER is set (aml/enclave/partitioned.py); same alerts either way.
    from aml.enclave.partitioned import DaskPartitionMap, dask_settings

    dask = dask_settings()
    # Alert ids are a MAC under a key only this enclave identity holds (stable across reruns).
    id_key = alert_key(keys.storage_key)
    if dask is None:
        result = run_detection(in_window, config, members=sorted(members), alert_key=id_key)
    else:
        result = run_detection(in_window, config, members=sorted(members), alert_key=id_key,
                               partitions=dask.partitions,
                               map_partitions=DaskPartitionMap(enclave_dir, work_dir, run_id, dask))
    n_alerts = sum(result.counts.values())
    enclave_log(logger, "detected", alerts=n_alerts, rows=in_window.num_rows)
    millis["detect"] = _millis(start)
    # Detection's own sub-stages (graph, each detector, model, alert cutting), when it reports them.
    millis.update({f"detect_{k}": int(v) for k, v in (getattr(result, "millis", None) or {}).items()})

    start = time.perf_counter()
    out_dir = work / "out"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    prov = dict(provenance, model_hash=result.model_hash, config_hash=result.config_hash)
    alerts = {}
    # Every member's file the same size, so a size cannot tell who got alerts.
    files = seal_run_alerts({bank: result.alerts_for(bank) for bank in members}, members, keys,
                            run_id, run_sequence, prov)
    for bank, sealed in sorted(files.items()):
        path = out_dir / f"{bank}.amla"
        path.write_bytes(sealed)
        alerts[bank] = {"path": str(path), "sha256": hashlib.sha256(sealed).hexdigest()}
    enclave_log(logger, "sealed", files=len(alerts), run_id=run_id)
    millis["seal"] = _millis(start)
    kept, millis["history_background"] = history_job.result()

    return {
        "alerts": alerts,
        "patterns": {str(k): int(v) for k, v in sorted(result.counts.items())},
        "merge": {k: int(v) for k, v in merge_counts.items()},
        # per submitting bank: copies kept apart as conflicts, copies dropped as not its payment
        "conflicts_by_bank": {str(b): int(n) for b, n in sorted(merged_conflicts.items())},
        "foreign_by_bank": {str(b): int(n) for b, n in sorted(merged_foreign.items())},
        "history": {"path": str(history_path), "sha256": sha256_file(history_path), "rows": int(kept)},
        "model_hash": str(result.model_hash),
        "config_hash": str(result.config_hash),
        "millis": millis,
    }
