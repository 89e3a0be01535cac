"""The Dask side of partitioned detection: a DaskTaskRunner that accepts enclave tasks only,
and a worker plugin that makes every Dask worker an enclave worker.

Imported only when partitioned detection is switched on (dask and distributed are heavy).
"""

from __future__ import annotations

import aml.operator.prefect_env  # noqa: F401  (project settings before prefect is imported)
from distributed.diagnostics.plugin import WorkerPlugin
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from aml.enclave.runner import in_enclave_worker, initialize_enclave_worker, is_enclave_task
from aml.core.errors import EnclaveBoundaryError


class EnclaveWorkerPlugin(WorkerPlugin):
    """Runs in every Dask worker process as it joins: the same set-up as the enclave worker
    (umask 077, stdout/stderr to /dev/null, the log allow-list on every logger, exit with the
    parent), so only allow-listed log lines leave it and enclave tasks may run there."""

    name = "aml-enclave-worker"

    def setup(self, worker) -> None:  # noqa: D102
        if not in_enclave_worker():  # a threads-only cluster runs in the enclave worker itself
            initialize_enclave_worker()


class EnclaveDaskTaskRunner(DaskTaskRunner):
    """prefect-dask's runner with the enclave runner's admission rule: it runs `@enclave_task`s
    only (no result persistence, no cache, no print logging, coded errors)."""

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # noqa: D102
        if not is_enclave_task(task):
            raise EnclaveBoundaryError(
                f"task {getattr(task, 'name', '?')} is not an enclave task; the enclave runner refuses it"
            )
        # Submit without the flow run's context: a Dask worker re-enters the context it is
        # sent, and with the flow's it would start the flow's own task runner (an enclave
        # process pool) inside every Dask worker, which as a daemon process may not even have
        # children. The parent task run (detect_and_seal) is still sent along.
        token = FlowRunContext.__var__.set(None)
        try:
            return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)
        finally:
            FlowRunContext.__var__.reset(token)

    def __enter__(self):
        super().__enter__()
        # Before the first task: every current and future worker becomes an enclave worker.
        self.client.register_plugin(EnclaveWorkerPlugin(), name=EnclaveWorkerPlugin.name)
        return self
