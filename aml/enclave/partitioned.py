"""Typology detection split by time window, run as enclave tasks on a Dask cluster.

Switched on by the environment of the enclave (default off: one process, as before):

- AML_DASK_WORKERS=N: a LocalCluster of N worker processes (one thread each) started inside
  the enclave for the detection step and stopped after it;
- AML_DASK_SCHEDULER=tls://host:port: use an existing cluster of enclave workers instead
  (TLS only; certificates from ENCLAVE_DIR/dask/, see docs/scaling.md);
- AML_DASK_PARTITIONS=P: time partitions (default: the number of workers, at least 2).

The boundary holds for Dask workers as for the enclave worker: tasks are `@enclave_task`s
(no persisted results, no cache, coded errors only), their parameters are work-area paths, a
run id and a partition number; every worker is set up as an enclave worker (allow-listed
logs, /dev/null stdio, umask 077); partition inputs and outputs are files in the run's work
area sealed with the enclave's storage key (AES-256-GCM, bound to run, partition and role),
so nothing in plaintext sits where a worker on another machine would fetch it from; Dask's
own spill directory is the work area.
"""

from __future__ import annotations

import os
import pickle
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from aml.enclave.runner import enclave_keys, enclave_task
from aml.core.errors import ConfigError, TamperedError

WORKERS_ENV = "AML_DASK_WORKERS"
SCHEDULER_ENV = "AML_DASK_SCHEDULER"
PARTITIONS_ENV = "AML_DASK_PARTITIONS"
_MAGIC = b"AMLPART1"
_NONCE = 12


@dataclass(frozen=True)
class DaskSettings:
    workers: int
    partitions: int
    scheduler: str | None = None


def _int_env(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number")
    return int(raw)


def dask_settings(env: Mapping[str, str] | None = None) -> DaskSettings | None:
    """The partitioned-detection settings from the environment, or None when it is off."""
    env = os.environ if env is None else env
    workers = _int_env(env, WORKERS_ENV)
    scheduler = env.get(SCHEDULER_ENV, "").strip() or None
    if scheduler is not None and not scheduler.startswith("tls://"):
        raise ConfigError(f"{SCHEDULER_ENV} must be a tls:// address: workers are enclaves")
    if workers == 0 and scheduler is None:
        return None
    partitions = _int_env(env, PARTITIONS_ENV) or max(workers, 2)
    return DaskSettings(workers=workers, partitions=partitions, scheduler=scheduler)


# --- sealed partition files -------------------------------------------------------------
def _aad(run_id: str, index: int, role: str) -> bytes:
    return b"aml-partition\x00" + f"{run_id}\x00{index}\x00{role}".encode()


def _part_dir(work_dir: str | Path) -> Path:
    d = Path(work_dir) / "partitions"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _seal(obj, path: Path, key: bytes, aad: bytes) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(_NONCE)
    path.write_bytes(_MAGIC + nonce + AESGCM(key).encrypt(nonce, pickle.dumps(obj, protocol=5), aad))


def _unseal(path: Path, key: bytes, aad: bytes):
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = path.read_bytes()
    if not blob.startswith(_MAGIC):
        raise TamperedError("partition file is not a sealed partition file")
    try:
        plain = AESGCM(key).decrypt(blob[len(_MAGIC):len(_MAGIC) + _NONCE], blob[len(_MAGIC) + _NONCE:], aad)
    except InvalidTag:
        raise TamperedError("partition file failed authentication") from None
    # Unpickling is safe here: the bytes authenticated under the enclave's own storage key.
    return pickle.loads(plain)


@enclave_task(name="detect_partition")
def detect_partition(enclave_dir: str, work_dir: str, run_id: str, index: int) -> int:
    """Run the time-local detectors on one sealed partition; seal what it owns next to it.
    Returns the partition number (nothing about the data)."""
    from aml.enclave.detect.partition import run_partition

    key = enclave_keys(enclave_dir).storage_key
    d = _part_dir(work_dir)
    job = _unseal(d / f"job-{index}.sealed", key, _aad(run_id, index, "job"))
    _seal(run_partition(job), d / f"found-{index}.sealed", key, _aad(run_id, index, "found"))
    return index


class DaskPartitionMap:
    """A `map_partitions` for `run_detection`: ships each partition job (sealed, via the work
    area) to an enclave task on a Dask cluster and returns the results in order.

    The cluster is started when detection reaches the typologies and stopped right after, so
    idle workers do not hold memory while the graph, features and model are built."""

    def __init__(self, enclave_dir: str, work_dir: str, run_id: str, settings: DaskSettings):
        self.enclave_dir, self.work_dir, self.run_id = enclave_dir, work_dir, run_id
        self.settings = settings

    def _runner(self):
        from aml.enclave.dask_workers import EnclaveDaskTaskRunner

        if self.settings.scheduler:
            return EnclaveDaskTaskRunner(address=self.settings.scheduler,
                                         client_kwargs={"security": self._security()})
        spill = Path(self.work_dir) / "dask"
        spill.mkdir(mode=0o700, exist_ok=True)
        return EnclaveDaskTaskRunner(cluster_kwargs={
            "n_workers": self.settings.workers, "processes": True, "threads_per_worker": 1,
            "dashboard_address": None, "local_directory": str(spill),
            "scheduler_kwargs": {"host": "127.0.0.1", "dashboard": False},
        })

    def _security(self):
        """Mutual TLS with the certificates provisioned to attested enclaves only."""
        from distributed.security import Security

        d = Path(self.enclave_dir) / "dask"
        files = {n: d / n for n in ("ca.pem", "cert.pem", "key.pem")}
        if not all(p.is_file() for p in files.values()):
            raise ConfigError("remote Dask scheduler needs ENCLAVE_DIR/dask/{ca,cert,key}.pem")
        return Security(tls_ca_file=str(files["ca.pem"]), tls_client_cert=str(files["cert.pem"]),
                        tls_client_key=str(files["key.pem"]), require_encryption=True)

    def __call__(self, jobs: Iterable) -> list:
        key = enclave_keys(self.enclave_dir).storage_key
        d = _part_dir(self.work_dir)
        with self._runner() as runner:
            futures = []
            for job in jobs:  # built one at a time: only one unsealed slice in memory here
                i = int(job.partition.index)
                _seal(job, d / f"job-{i}.sealed", key, _aad(self.run_id, i, "job"))
                params = {"enclave_dir": self.enclave_dir, "work_dir": self.work_dir,
                          "run_id": self.run_id, "index": i}
                futures.append((i, runner.submit(detect_partition, params)))
            results = []
            for i, future in futures:
                future.result()  # re-raises the task's coded EnclaveTaskError, nothing more
                found = d / f"found-{i}.sealed"
                results.append(_unseal(found, key, _aad(self.run_id, i, "found")))
                found.unlink()
                (d / f"job-{i}.sealed").unlink()
        return results
