"""The enclave task runner: only enclave tasks run, nothing but codes and counts leave."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import aml.operator.prefect_env  # noqa: F401
from aml.enclave import runner
from conftest import canary_hits
from aml.enclave.runner import (
    EnclaveTaskRunner, enclave_log, enclave_task, is_allowed_log, is_enclave_task,
)
from aml.core.errors import EnclaveBoundaryError, EnclaveTaskError, TamperedError
from prefect import flow, task

CANARY = "CANARY-acct-7f3a9"


@enclave_task
def leaky(batch_id: str, secret: str) -> int:
    raise ValueError(f"row with account {secret} is broken")


@enclave_task
def tampered(batch_id: str) -> int:
    raise TamperedError(f"chunk 3 of account {CANARY} failed authentication")


@enclave_task
def count_rows(n: int) -> int:
    return n * 2


@task
def plain(n: int) -> int:
    return n


@pytest.fixture()
def inside_worker(monkeypatch):
    monkeypatch.setitem(runner._WORKER, "inside", True)


def test_enclave_task_refuses_to_run_outside_the_worker():
    with pytest.raises(EnclaveBoundaryError):
        count_rows.fn(n=2)


def test_unexpected_exception_is_replaced_by_code_and_batch_id(inside_worker):
    with pytest.raises(EnclaveTaskError) as info:
        leaky.fn(batch_id="b-123", secret=CANARY)
    err = info.value
    assert CANARY not in str(err) and CANARY not in repr(err.args)
    assert err.cause_code == "unexpected_ValueError" and err.batch_id == "b-123"
    assert err.__context__ is None and err.__cause__ is None


def test_aml_error_keeps_its_code_but_not_its_message(inside_worker):
    with pytest.raises(EnclaveTaskError) as info:
        tampered.fn(batch_id="b-9")
    assert info.value.cause_code == "tampered"
    assert CANARY not in str(info.value)
    import pickle

    again = pickle.loads(pickle.dumps(info.value))
    assert (again.task, again.cause_code, again.batch_id) == ("tampered", "tampered", "b-9")


def test_enclave_task_marks_and_switches():
    assert is_enclave_task(count_rows)
    assert not is_enclave_task(plain)
    # Switching persistence back on makes it no longer an enclave task.
    assert not is_enclave_task(count_rows.with_options(persist_result=True))


def test_log_allow_list():
    assert is_allowed_log("batch b-1 from B01: 10 rows accepted, 0 rows quarantined")
    assert not is_allowed_log("batch b-1 from B01: 10 rows accepted, 0 rows quarantined " + CANARY)
    assert not is_allowed_log(f"account {CANARY} moved 31337.1337")
    logger = logging.getLogger("test-enclave")
    with pytest.raises(EnclaveBoundaryError):
        enclave_log(logger, "detected", alerts="many", rows=3)
    with pytest.raises(EnclaveBoundaryError):
        enclave_log(logger, "batch_unsealed", batch_id="x y", bank="B01", rows=1, quarantined=0)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "detection: 3 alerts over 9 rows", None, None)
    assert runner.AllowListFilter().filter(record)
    record.msg = CANARY
    assert not runner.AllowListFilter().filter(record)


def test_parent_side_processor_drops_unlisted_logs():
    process = runner._allow_listed_messages()
    assert process("log", {"message": CANARY}) is None
    ok = {"message": "stage detect done in 12 ms"}
    assert process("log", ok) == ("log", ok)


def test_duplicate_keeps_the_boundary():
    dup = EnclaveTaskRunner(max_workers=1).duplicate()
    assert isinstance(dup, EnclaveTaskRunner)
    assert dup._initializer is runner.initialize_enclave_worker
    assert dup._initargs == (1,)  # the worker knows it is the only one (in-memory hand-over)


def test_hand_over_stays_in_the_worker_and_within_one_work_area(inside_worker, monkeypatch, tmp_path):
    monkeypatch.setitem(runner._WORKER, "handoff", {})
    monkeypatch.setitem(runner._WORKER, "workers", 1)
    assert runner.sole_worker()
    runner.hand_over(tmp_path / "run-a", "b1", "rows of b1")
    assert runner.take_over(str(tmp_path / "run-a"), "b1") == "rows of b1"
    assert runner.take_over(tmp_path / "run-a", "b1") is None  # taken once
    runner.hand_over(tmp_path / "run-a", "b2", "stale")
    runner.hand_over(tmp_path / "run-b", "b3", "fresh")  # a later run drops what an earlier one left
    assert runner._WORKER["handoff"] == {(str(tmp_path / "run-b"), "b3"): "fresh"}


def test_inside_the_worker_the_runner_starts_no_pool_and_takes_no_tasks(inside_worker):
    # Prefect re-enters the flow's runner in the worker for every task: nothing may start there.
    with EnclaveTaskRunner() as inner:
        assert inner._executor is None and inner._message_forwarding_thread is None
        with pytest.raises(RuntimeError):
            inner.submit(count_rows, {"n": 1})


def test_hand_over_refuses_outside_the_worker(tmp_path):
    with pytest.raises(EnclaveBoundaryError):
        runner.hand_over(tmp_path, "b1", "rows")
    with pytest.raises(EnclaveBoundaryError):
        runner.take_over(tmp_path, "b1")


@flow(task_runner=EnclaveTaskRunner(), persist_result=False)
def boundary_flow() -> dict:
    out = {"doubled": count_rows.submit(n=21).result()}
    try:
        plain.submit(n=1)
    except EnclaveBoundaryError:
        out["plain_refused"] = True
    fut = leaky.submit(batch_id="b-77", secret=CANARY)
    fut.wait()
    out["state_message"] = fut.state.message or ""
    try:
        fut.result()
    except Exception as exc:  # what the flow process sees
        out["seen"] = f"{type(exc).__name__}: {exc}"
    return out


@flow(task_runner=EnclaveTaskRunner(), persist_result=False)
def failing_flow() -> None:
    leaky.submit(batch_id="b-78", secret=CANARY).result()  # the flow fails with the task


@pytest.mark.slow
def test_real_prefect_run_refuses_plain_tasks_and_sanitises(prefect_env_vars):
    # A fresh process, so Prefect reads the session server's address from the environment.
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          env={**os.environ, **prefect_env_vars}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["doubled"] == 42
    assert out["plain_refused"] is True
    assert CANARY not in out["state_message"] and CANARY not in out["seen"]
    assert "unexpected_ValueError" in out["seen"] and "b-77" in out["seen"]
    assert "flow_failed" in out
    assert CANARY not in proc.stdout + proc.stderr
    # Nothing in Prefect's database, logs or result storage either.
    home = Path(prefect_env_vars["PREFECT_HOME"])
    files = [f for f in home.rglob("*") if f.is_file()]
    assert any(f.name.startswith("prefect.db") for f in files)
    assert any(f.parent.name == "storage" for f in files)  # the failed flow's pickled exception
    assert [f for f in files if canary_hits(f.read_bytes(), [CANARY.encode()])] == []


if __name__ == "__main__":
    import json

    result = boundary_flow()
    try:
        failing_flow()
    except EnclaveTaskError as exc:
        result["flow_failed"] = str(exc)
    print(json.dumps(result))


def test_an_enclave_task_leaves_the_temp_dir_as_it_found_it(tmp_path, monkeypatch):
    """While a task runs, temporary files go to the run's work area; afterwards TMPDIR is what
    it was (the work area is removed after the run, and nothing may keep writing there)."""
    import os
    import tempfile

    from aml.enclave import runner
    from aml.enclave.runner import enclave_task

    monkeypatch.setitem(runner._WORKER, "inside", True)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    work = tmp_path / "work"
    seen = {}

    @enclave_task
    def uses_temp(work_dir: str) -> None:
        seen["during"] = tempfile.gettempdir()

    uses_temp.fn(work_dir=str(work))
    assert seen["during"] == str(work / "tmp")
    assert os.environ["TMPDIR"] == str(tmp_path)
    assert tempfile.gettempdir() == str(tmp_path)
