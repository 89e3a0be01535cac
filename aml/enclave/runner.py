"""The EnclaveTaskRunner: Prefect's process-pool runner with an enclave boundary around it.

What crosses the boundary, and how it is kept clean:

- Code: only functions declared with `@enclave_task` run in the enclave worker; `submit()`
  refuses every other task, and an enclave task called anywhere but in the worker refuses to run.
- Keys: the worker process alone loads the enclave's private keys (`enclave_keys()`, from
  ENCLAVE_DIR/keys, never from the environment); the flow process never holds them.
- Exceptions: whatever an enclave task raises is replaced, inside the worker, by an
  `EnclaveTaskError` carrying only the task name, the original error's `code` and the batch id.
  Prefect stores exception text in task states, logs and events, so the original never leaves.
- Logs: only messages built from `LOG_TEMPLATES` (ids and counts) leave the worker; a
  `logging.Filter` drops the rest in the worker and the same check runs again on every log
  record the parent receives from it. The worker's stdout and stderr go to /dev/null.
- Plaintext: enclave tasks write files only inside the run's work area
  (`aml.enclave.workarea`); `tempfile.tempdir` points there while a task runs.
- Results: enclave tasks return paths, hashes and counts; they are never persisted or cached
  (`persist_result=False`, `cache_policy=NO_CACHE`, `log_prints=False`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import aml.operator.prefect_env  # noqa: F401  (project settings before prefect is imported)
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from aml.core.errors import AmlError, EnclaveBoundaryError, EnclaveTaskError

ENCLAVE_TASK_MARK = "__aml_enclave_task__"

# --- the log allow-list ---------------------------------------------------------------------
# Every log line that may leave the worker, as a template. Placeholders are typed by name:
# ids (`batch_id`, `bank`, `run_id`, `stage`) match short identifiers, everything else is a count.
LOG_TEMPLATES: dict[str, str] = {
    "batch_unsealed": "batch {batch_id} from {bank}: {rows} rows accepted, {quarantined} rows quarantined",
    "merged": "merged {batches} batches: {rows} rows, {cross_bank} cross-bank payments, {conflicts} conflicting",
    "history_loaded": "history: {rows} rows loaded, {kept} rows in the window",
    "detected": "detection: {alerts} alerts over {rows} rows",
    "sealed": "sealed {files} alert files for run {run_id}",
    "stage_done": "stage {stage} done in {millis} ms",
}
_ID_FIELDS = {"batch_id", "bank", "run_id", "stage"}
_ID_PATTERN = r"[A-Za-z0-9_.-]{1,80}"
_COUNT_PATTERN = r"[0-9]{1,15}"


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        else:
            out.append(_ID_PATTERN if part in _ID_FIELDS else _COUNT_PATTERN)
    return re.compile("".join(out))


_ALLOWED = [_template_regex(t) for t in LOG_TEMPLATES.values()]


def is_allowed_log(message: object) -> bool:
    """True when `message` is exactly one of the allow-listed templates filled with ids/counts."""
    return isinstance(message, str) and any(p.fullmatch(message) for p in _ALLOWED)


def enclave_log(logger: logging.Logger | logging.LoggerAdapter, template: str, **fields: Any) -> None:
    """Log one allow-listed message. Refuses (raises) a field that is not an id or a count."""
    for name, value in fields.items():
        if name in _ID_FIELDS:
            ok = isinstance(value, str) and re.fullmatch(_ID_PATTERN, value)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not ok:
            raise EnclaveBoundaryError(f"log field {name} of template {template} is not an id or a count")
    logger.info(LOG_TEMPLATES[template].format(**fields))


class AllowListFilter(logging.Filter):
    """Passes only log records whose message is an allow-listed template."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return is_allowed_log(record.getMessage())
        except Exception:  # a record whose message cannot even be formatted is dropped
            return False


def _allow_listed_messages() -> Callable[[str, Any], tuple[str, Any] | None]:
    """Factory for the parent-side check of everything the worker sends back."""

    def process(message_type: str, payload: Any) -> tuple[str, Any] | None:
        if message_type == "log":
            if not isinstance(payload, dict) or not is_allowed_log(payload.get("message")):
                return None
        return message_type, payload

    return process


# --- the worker side ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {"inside": False, "keys": {}, "workers": 0, "handoff": {}}


def _redirect_std_streams() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the worker)
    sys.stderr = sys.stdout


def _install_log_filter() -> None:
    log_filter = AllowListFilter()
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        lg.addFilter(log_filter)
        for handler in lg.handlers:
            handler.addFilter(log_filter)


def _exit_with_parent(poll_seconds: float = 0.5) -> None:
    """End this worker as soon as the flow process is gone (killed, crashed): an orphaned
    worker would keep the keys in memory and hold its parent's pipes open."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(70)

    threading.Thread(target=watch, name="enclave-parent-watch", daemon=True).start()


def initialize_enclave_worker(workers: int = 0) -> None:
    """Runs once in each worker process, after Prefect's own worker setup. `workers`: how many
    worker processes the runner has (1: every enclave task of the run lands in this process)."""
    _exit_with_parent()
    os.umask(0o077)
    _redirect_std_streams()
    _install_log_filter()
    _WORKER["inside"] = True
    _WORKER["workers"] = int(workers)


def in_enclave_worker() -> bool:
    return bool(_WORKER["inside"])


def require_enclave_worker() -> None:
    if not in_enclave_worker():
        raise EnclaveBoundaryError("enclave code may only run inside the enclave worker process")


def enclave_keys(enclave_dir: str | Path):
    """The enclave's private keys, loaded once per worker from ENCLAVE_DIR/keys."""
    require_enclave_worker()
    cache_key = str(Path(enclave_dir).resolve())
    from aml.enclave.entrypoint import fixed_layout

    fixed = fixed_layout()
    if fixed is not None and cache_key != str(fixed["enclave"].resolve()):
        raise EnclaveBoundaryError("in the enclave image the enclave directory is fixed; refusing another one")
    if cache_key not in _WORKER["keys"]:
        from aml.enclave.identity import load_enclave_keys

        _WORKER["keys"][cache_key] = load_enclave_keys(Path(enclave_dir))
    return _WORKER["keys"][cache_key]


def sole_worker() -> bool:
    """True when this is the runner's only worker, so a later task of the run lands here too."""
    require_enclave_worker()
    return _WORKER["workers"] == 1


def hand_over(work_dir: str | Path, name: str, value: Any) -> None:
    """Keep `value` in this worker's memory for a later task of the same run (`take_over`).
    Entries of other work areas (an earlier run that failed) are dropped first."""
    require_enclave_worker()
    store, area = _WORKER["handoff"], str(Path(work_dir))
    for stale in [k for k in store if k[0] != area]:
        del store[stale]
    store[(area, name)] = value


def take_over(work_dir: str | Path, name: str) -> Any | None:
    """The value handed over under `name` in this run's work area (removed), or None."""
    require_enclave_worker()
    return _WORKER["handoff"].pop((str(Path(work_dir)), name), None)


def _enter_work_area(work_dir: str | Path) -> str | None:
    """Point this worker's temporary files into the run's work area; returns the TMPDIR before."""
    tmp = Path(work_dir) / "tmp"
    tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
    before = os.environ.get("TMPDIR")
    tempfile.tempdir = str(tmp)
    os.environ["TMPDIR"] = str(tmp)
    return before


def _leave_work_area(before: str | None) -> None:
    """Undo `_enter_work_area`: the work area is removed after the run, and a later task or
    library must not be pointed at a directory that no longer exists."""
    tempfile.tempdir = None
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before


# --- the decorator --------------------------------------------------------------------------
def enclave_task(fn: Callable | None = None, *, name: str | None = None):
    """Declare a function an enclave task: a Prefect task that runs only in the enclave worker,
    never persists or caches its result, never logs prints, and lets no exception text out.

    If the function has a `work_dir` parameter, temporary files go there while it runs; if it
    has a `batch_id` parameter, that id is reported with a failure.
    """
    if fn is None:
        return functools.partial(enclave_task, name=name)

    signature = inspect.signature(fn)
    task_name = name or fn.__name__

    @functools.wraps(fn)
    def run_inside(*args: Any, **kwargs: Any) -> Any:
        require_enclave_worker()
        bound = signature.bind_partial(*args, **kwargs).arguments
        batch_id = bound.get("batch_id")
        in_work_area = "work_dir" in bound
        tmp_before = _enter_work_area(bound["work_dir"]) if in_work_area else None
        failure: tuple[str, str | None] | None = None
        try:
            return fn(*args, **kwargs)
        except AmlError as exc:
            failure = (exc.code, exc.batch_id or batch_id)
        except Exception as exc:  # the type name is safe; the message may hold data
            failure = (f"unexpected_{type(exc).__name__}", batch_id)
        finally:
            if in_work_area:
                _leave_work_area(tmp_before)
            else:
                tempfile.tempdir = None
        # Raised outside the `except` block so the original is not even chained as context.
        raise EnclaveTaskError(task_name, failure[0], failure[1] if isinstance(failure[1], str) else None)

    setattr(run_inside, ENCLAVE_TASK_MARK, True)
    return task(
        run_inside,
        name=task_name,
        persist_result=False,
        cache_policy=NO_CACHE,
        log_prints=False,
        retries=0,
    )


def is_enclave_task(t: Any) -> bool:
    """True for a task made by `@enclave_task` whose safety switches are still in place."""
    fn = getattr(t, "fn", None)
    return (
        bool(getattr(fn, ENCLAVE_TASK_MARK, False))
        and getattr(t, "persist_result", None) is False
        and getattr(t, "cache_policy", None) is NO_CACHE
        and getattr(t, "log_prints", None) is False
        and getattr(t, "result_storage_key", None) is None
    )


# --- the runner -----------------------------------------------------------------------------
class EnclaveTaskRunner(ProcessPoolTaskRunner):
    """Runs `@enclave_task`s in spawned worker processes that hold the enclave keys.

    One worker by default: the keys live in one process and the machine's memory goes to one
    detection run. Tasks the flow runs outside the enclave are called directly (not submitted),
    so they run in the flow's own process and never reach this runner.
    """

    def __init__(self, max_workers: int = 1):
        super().__init__(
            max_workers=max_workers,
            subprocess_message_processor_factories=(_allow_listed_messages,),
            initializer=initialize_enclave_worker,
            initargs=(max_workers,),
        )

    def duplicate(self) -> "EnclaveTaskRunner":
        return type(self)(max_workers=self._max_workers)

    def __enter__(self) -> "EnclaveTaskRunner":
        if in_enclave_worker():
            # Prefect enters a copy of the flow's runner in the worker for every task it runs
            # there (rebuilding the flow-run context). Nothing is ever submitted from inside the
            # enclave, so no pool, queue or threads: they only cost time per task.
            TaskRunner.__enter__(self)
            return self
        super().__enter__()
        # Start the worker now rather than at the first submit: spawning it and importing
        # Prefect takes seconds, which then overlap with the flow's own work (checking the inbox).
        executor = self._executor
        if hasattr(executor, "_adjust_process_count") and hasattr(executor, "_start_executor_manager_thread"):
            executor._adjust_process_count()
            executor._start_executor_manager_thread()
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if in_enclave_worker():
            TaskRunner.__exit__(self, exc_type, exc_value, traceback)
            return
        super().__exit__(exc_type, exc_value, traceback)

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # noqa: D102
        if not is_enclave_task(task):
            raise EnclaveBoundaryError(
                f"task {getattr(task, 'name', '?')} is not an enclave task; the enclave runner refuses it"
            )
        return super().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    def __eq__(self, value: object) -> bool:
        return isinstance(value, EnclaveTaskRunner) and self._max_workers == value._max_workers

    __hash__ = None  # mutable, like its base
