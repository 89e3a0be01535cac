"""The consortium ledger: which sealed batches were processed, by which run, and which history
file is current. Runs outside the enclave and holds no transaction data, only what sealed
headers already show (bank ids, batch ids, sequence numbers, row counts) and file hashes.

SQLite at ENCLAVE_DIR/state/ledger.sqlite. Unique constraints on batch id, file hash and
(bank, sequence) mean a batch can be recorded once only, whatever two runs try; a run records
all its batches and its new history file in one transaction, so after a crash either all of a
run counts or none of it does.

The ledger itself is not trusted: each run row carries `head`, a MAC chained over every
committed run (its batches, history file and window) under a key only the enclave holds, and
the enclave keeps the head and a run counter in its own sealed state (`aml.enclave.state`).
An older copy of this file, or an edited one, no longer matches and the next run refuses.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from aml.core.errors import RollbackError, RunBusyError

STATE_DIR_NAME = "state"
LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "run.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id   TEXT PRIMARY KEY,
    bank       TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    sha256     TEXT NOT NULL UNIQUE,
    rows       INTEGER NOT NULL,
    run_id     TEXT NOT NULL,
    recorded   INTEGER NOT NULL,
    UNIQUE (bank, sequence)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL UNIQUE,
    history    TEXT NOT NULL,
    finished   INTEGER NOT NULL,
    summary    TEXT NOT NULL,
    head       TEXT,
    window_days REAL
);
CREATE TABLE IF NOT EXISTS rejections (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    file       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    bank       TEXT,
    code       TEXT NOT NULL,
    recorded   INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    bank: str
    sequence: int
    sha256: str
    rows: int


def state_dir(enclave_dir: Path) -> Path:
    return Path(enclave_dir) / STATE_DIR_NAME


@contextmanager
def run_lock(enclave_dir: Path) -> Iterator[None]:
    """Hold the enclave's run lock: one consortium run at a time. Refuses, never waits."""
    d = state_dir(enclave_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError("another consortium run holds the run lock; try again when it has finished") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Ledger:
    """A small SQLite ledger; open with `Ledger(enclave_dir)`, close with `.close()` or `with`."""

    def __init__(self, enclave_dir: Path):
        d = state_dir(enclave_dir)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = d / LEDGER_FILE
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        for name, kind in (("head", "TEXT"), ("window_days", "REAL")):  # ledgers from before the MAC chain
            if name not in columns:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------------
    def batch_by_id(self, batch_id: str) -> BatchRecord | None:
        row = self._db.execute(
            "SELECT batch_id, bank, sequence, sha256, rows FROM batches WHERE batch_id = ?", (batch_id,)
        ).fetchone()
        return BatchRecord(*row) if row else None

    def has_hash(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM batches WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def last_sequence(self, bank: str) -> int | None:
        row = self._db.execute("SELECT MAX(sequence) FROM batches WHERE bank = ?", (bank,)).fetchone()
        return row[0] if row and row[0] is not None else None

    def batch_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]

    def next_run_sequence(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM runs").fetchone()
        return (row[0] or 0) + 1

    def current_history(self) -> str | None:
        """File name (in the state directory) of the committed history, or None before the first run."""
        row = self._db.execute("SELECT history FROM runs ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row and row[0] else None

    def chain_runs(self) -> list[dict]:
        """Every committed run in order, with what the enclave's MAC chain covers."""
        runs = [dict(zip(("run_id", "seq", "history", "window_days", "head"), r)) for r in self._db.execute(
            "SELECT run_id, seq, history, window_days, head FROM runs ORDER BY seq")]
        batches: dict[str, list[dict]] = {}
        for b in self._db.execute("SELECT batch_id, bank, sequence, sha256, rows, run_id FROM batches"):
            batches.setdefault(b[5], []).append(dict(zip(("batch_id", "bank", "sequence", "sha256", "rows"), b[:5])))
        for r in runs:
            r["batches"] = batches.get(r["run_id"], [])
        return runs

    def run_exists(self, run_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    # --- writing ------------------------------------------------------------------------
    def record_rejection(self, file: str, sha256: str, bank: str | None, code: str) -> None:
        self._db.execute(
            "INSERT INTO rejections (file, sha256, bank, code, recorded) VALUES (?, ?, ?, ?, ?)",
            (file, sha256, bank, code, int(time.time())),
        )

    def commit_run(self, run_id: str, batches: list[BatchRecord], history: str, summary: dict,
                   head: str | None = None, window_days: float | None = None, seq: int | None = None) -> int:
        """Record a finished run and every batch it processed, all or nothing.

        Raises sqlite3.IntegrityError (and records nothing) if any batch, hash or (bank,
        sequence) was already recorded, so no batch is ever counted twice. `head` and `seq`
        come from the enclave (its MAC chain and run counter); a `seq` that is not the next
        one means the ledger moved under the run: nothing is recorded. Returns the run's
        sequence number."""
        now = int(time.time())
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            next_seq = (db.execute("SELECT MAX(seq) FROM runs").fetchone()[0] or 0) + 1
            if seq is not None and seq != next_seq:
                raise RollbackError(f"the enclave sealed run {seq} but the ledger's next run is {next_seq}")
            seq = next_seq
            db.execute(
                "INSERT INTO runs (run_id, seq, history, finished, summary, head, window_days) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, seq, history, now, json.dumps(summary, sort_keys=True), head, window_days),
            )
            db.executemany(
                "INSERT INTO batches (batch_id, bank, sequence, sha256, rows, run_id, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(b.batch_id, b.bank, b.sequence, b.sha256, b.rows, run_id, now) for b in batches],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return seq

    def set_summary(self, run_id: str, summary: dict) -> None:
        """The run's counts, released by the enclave only after the commit."""
        self._db.execute("UPDATE runs SET summary = ? WHERE run_id = ?", (json.dumps(summary, sort_keys=True), run_id))
