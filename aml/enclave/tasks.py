"""The enclave tasks: the only code that sees decrypted rows. Each runs in the enclave worker
(`EnclaveTaskRunner`), writes plaintext only inside the run's work area and returns paths,
hashes and counts, nothing else.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from aml.enclave.runner import enclave_keys, enclave_log, enclave_task, hand_over, sole_worker, take_over
from aml.core.errors import FormatError, MembershipError, ResourceExhaustedError, RollbackError
from aml.core.crypto.digest import sha256_file

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


def _state_and_members(enclave_dir: str, keys, full: bool):
    """The enclave's sealed state (checked against the ledger when `full`) and the attested
    member table, with the members whose key file differs from it (refused)."""
    from aml.enclave.state import attested_members, load_state, verified_state

    edir = Path(enclave_dir)
    state = verified_state(edir, keys) if full else load_state(edir, keys.storage_key, keys.key_id)
    members, refused = attested_members(edir, keys, state)
    return state, members, refused


@enclave_task
def check_state(enclave_dir: str, window_days: float) -> dict:
    """At the start of every run: the ledger and history chain to the enclave's sealed state, the
    window does not narrow the committed history, the membership is the attested one. Returns
    the members refused (their key file differs from the attested table) and the pending
    attempt's batch hashes; no counts."""
    from aml.enclave.state import check_window

    state, _, refused = _state_and_members(enclave_dir, enclave_keys(enclave_dir), full=True)
    check_window(state, window_days)
    return {"refused": sorted(refused), "pending": list((state["pending"] or {}).get("batches", [])),
            "withdrawn": list(state["withdrawn"])}


@enclave_task
def unseal_batch(enclave_dir: str, batch_file: str, bank: str, batch_id: str, work_dir: str,
                 sha256: str) -> dict:
    """Decrypt one bank's sealed batch, validate its rows and keep the good ones for the merge.
    Returns the work-area name of the good rows and counts (quarantine reasons by code): counts
    of this batch alone, which no other batch changes.

    Running out of memory on a batch is the batch's fault (`resource_exhausted`); so is the
    worker dying on it, which the flow tells from the marker this task leaves while it works."""
    marker = unsealing_marker(work_dir, batch_id)
    marker.parent.mkdir(mode=0o700, exist_ok=True)
    marker.touch()
    try:
        _test_fault(batch_id)
        return _unseal(enclave_dir, batch_file, bank, batch_id, work_dir, sha256)
    except MemoryError:
        raise ResourceExhaustedError("the enclave worker ran out of memory unsealing this batch",
                                     batch_id=batch_id) from None
    finally:
        marker.unlink(missing_ok=True)


def _unseal(enclave_dir: str, batch_file: str, bank: str, batch_id: str, work_dir: str, sha256: str) -> dict:
    from aml.enclave.identity import open_batch
    from aml.core.errors import ReplayError
    from aml.core.schema import validate

    start = time.perf_counter()
    keys = enclave_keys(enclave_dir)
    state, members, refused = _state_and_members(enclave_dir, keys, full=False)
    if bank not in members:
        raise MembershipError(f"bank {bank} is not an attested member", batch_id=batch_id)
    if bank in refused:
        raise MembershipError(f"member {bank} is refused: {refused[bank]}", batch_id=batch_id)
    if sha256_file(Path(batch_file)) != sha256:
        raise FormatError("the batch file changed between the outside check and unsealing", batch_id=batch_id)
    if sha256 in state["withdrawn"]:
        raise ReplayError("this batch was withdrawn from an interrupted run", batch_id=batch_id)
    header, table = open_batch(Path(batch_file), keys, members[bank])
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
            "quarantined": result.quarantine.num_rows, "reasons": reasons, "sha256": sha256,
            "millis": _millis(start)}


@enclave_task
def detect_and_seal(enclave_dir: str, work_dir: str, run_id: str, batches: list[dict], withdrawn: list[str],
                    window_days: float, window_source: str, provenance: dict) -> dict:
    """Merge the run's batches with history, detect, and seal one alert file per member bank.

    `batches`: {bank, batch_id, path, sequence, sha256, rows} per batch, as the ledger will
    record them. First the attempt is recorded in the enclave's sealed state (refused when it
    leaves out batches of an interrupted attempt that were not quarantined: `withdrawn`).
    Writes, in the work area: out/<bank>.amla (sealed, padded; one per member even when empty),
    history.aes (the new history, encrypted) and counts.aes (this run's counts, encrypted until
    the ledger commit, `release_counts`). Returns paths, hashes, the run's sequence number and
    MAC chain head for the ledger, and stage durations: no counts."""
    from aml.enclave.detect.alerts import alert_key
    from aml.enclave.detect.config import DetectionConfig
    from aml.enclave.detect.pipeline import run_detection
    from aml.enclave.alert_files import seal_run_alerts
    from aml.enclave.history import history_file_name, read_history, trim_to_window, write_history
    from aml.enclave.merge import merge_batches
    from aml.enclave.state import COUNTS_FILE, begin_attempt, check_window, seal_counts
    from aml.operator.ledger import state_dir

    keys = enclave_keys(enclave_dir)
    state, members, refused = _state_and_members(enclave_dir, keys, full=True)
    if any(b["bank"] not in members or b["bank"] in refused for b in batches):
        raise MembershipError("a batch of this run is from a bank that is not an attested, unrefused member")
    check_window(state, window_days)
    run_sequence, head = begin_attempt(Path(enclave_dir), keys, state, run_id, history_file_name(run_id),
                                       window_days, batches, withdrawn)
    work = Path(work_dir)
    millis: dict[str, int] = {}

    start = time.perf_counter()
    # The history the enclave committed last, by its own state (not by the caller's say-so).
    committed = state["history"]
    history = read_history(state_dir(Path(enclave_dir)) / committed if committed else None, keys.storage_key,
                           committed[len("history-"):-len(".aes")] if committed else None)
    history_rows = history.num_rows
    new = [(b["bank"], _unsealed(work, b["path"])) for b in batches]
    merged = merge_batches(new, history)
    del new, history  # the merged table holds every row now; detection needs the memory
    in_window = trim_to_window(merged.merged, window_days, keep=merged.merged.column("is_new"))
    merge_counts = merged.counts
    merged_conflicts, merged_foreign = merged.conflicts_by_bank, merged.foreign_by_bank
    # No counts leave before the ledger commit (`release_counts` logs them then): a run killed
    # before its commit must not have told anyone how its batches combined.
    in_window_rows = in_window.num_rows
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
    millis["detect"] = _millis(start)
    # Detection's own sub-stages (graph, each detector, model, alert cutting), when it reports them.
    millis.update({f"detect_{k}": int(v) for k, v in (getattr(result, "millis", None) or {}).items()})

    start = time.perf_counter()
    out_dir = work / "out"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    # Set here, not by the caller: every bank sees the run's window and where it came from.
    prov = dict(provenance, model_hash=result.model_hash, config_hash=result.config_hash,
                window_days=float(window_days), window_source=str(window_source), run_sequence=run_sequence)
    alerts = {}
    # Every member's file the same size, so a size cannot tell who got alerts; a refused
    # member (its key file differs from the attested table) gets none.
    active = {bank: members[bank] for bank in sorted(set(members) - set(refused))}
    files = seal_run_alerts({bank: result.alerts_for(bank) for bank in active}, active, keys,
                            run_id, run_sequence, prov)
    for bank, sealed in sorted(files.items()):
        path = out_dir / f"{bank}.amla"
        path.write_bytes(sealed)
        alerts[bank] = {"path": str(path), "sha256": hashlib.sha256(sealed).hexdigest()}
    millis["seal"] = _millis(start)
    kept, millis["history_background"] = history_job.result()
    seal_counts(keys.storage_key, run_id, {
        "patterns": {str(k): int(v) for k, v in sorted(result.counts.items())},
        "merge": {k: int(v) for k, v in merge_counts.items()},
        "history": {"rows": int(kept), "loaded": int(history_rows)},
        "rows_in_window": int(in_window_rows), "batches": len(batches),
        # per submitting bank: copies kept apart as conflicts, copies dropped as not its payment
        "conflicts_by_bank": {str(b): int(n) for b, n in sorted(merged_conflicts.items())},
        "foreign_by_bank": {str(b): int(n) for b, n in sorted(merged_foreign.items())},
    }, work / COUNTS_FILE)

    return {
        "alerts": alerts,
        "history": {"path": str(history_path), "sha256": sha256_file(history_path)},
        "model_hash": str(result.model_hash),
        "config_hash": str(result.config_hash),
        "run_sequence": run_sequence,
        "head": head,
        "millis": millis,
    }


@enclave_task
def release_counts(enclave_dir: str, work_dir: str, run_id: str) -> dict:
    """After the ledger commit: the enclave checks that the ledger now holds this run (its state
    moves on to it) and only then lets the run's counts out, in logs and in its result."""
    from aml.enclave.state import COUNTS_FILE, open_counts

    keys = enclave_keys(enclave_dir)
    state, _, _ = _state_and_members(enclave_dir, keys, full=True)
    if state["pending"] is not None or state["history"] != f"history-{run_id}.aes":
        raise RollbackError("the ledger has not committed this run; its counts stay sealed")
    counts = open_counts(keys.storage_key, run_id, Path(work_dir) / COUNTS_FILE)
    logger = get_run_logger()
    merge = counts["merge"]
    enclave_log(logger, "history_loaded", rows=counts["history"]["loaded"],
                kept=max(0, counts["rows_in_window"] - merge["new_rows"]))
    enclave_log(logger, "merged", batches=counts["batches"], rows=counts["rows_in_window"],
                cross_bank=merge["cross_bank"], conflicts=merge["conflicts"])
    enclave_log(logger, "detected", alerts=sum(counts["patterns"].values()), rows=counts["rows_in_window"])
    return counts
