"""`aml run` and `aml serve`: the consortium flow on Prefect, once or on a schedule."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from aml.core.errors import BadInputError, ConfigError


def _check_dirs(enclave_dir: Path, inbox: Path, outbox: Path) -> tuple[str, str, str]:
    if not (enclave_dir / "attestation.json").is_file():
        raise BadInputError(f"'{enclave_dir}' is not an initialised enclave directory (run `aml enclave init`)")
    if not inbox.is_dir():
        raise BadInputError(f"inbox '{inbox}' is not a directory")
    outbox.mkdir(parents=True, exist_ok=True)
    return str(enclave_dir.resolve()), str(inbox.resolve()), str(outbox.resolve())


def format_summary(summary: dict) -> str:
    """What `aml run` prints: counts, file names and reason codes, never data."""
    lines = []
    if summary.get("run_id"):
        lines.append(
            f"run {summary['run_id']}: {summary['accepted']} batches accepted, {summary['rejected']} rejected, "
            f"{summary['skipped']} skipped (already processed); {summary['rows']} rows "
            f"({summary['rows_quarantined']} rows quarantined); {summary['alerts']} alerts"
        )
        if summary.get("patterns"):
            lines.append("alerts per typology: " + ", ".join(f"{p} {n}" for p, n in sorted(summary["patterns"].items())))
        for key, what in (("conflicts_by_bank", "copies disagreeing with the other bank's (kept apart)"),
                          ("foreign_by_bank", "copies of payments between other banks (dropped)")):
            if summary.get(key):
                lines.append(f"{what}, per sending bank: "
                             + ", ".join(f"{b} {n}" for b, n in sorted(summary[key].items())))
        for bank, path in sorted(summary.get("outbox", {}).items()):
            lines.append(f"  {bank}: {path}")
    else:
        lines.append(
            f"no new batches to process: {summary['rejected']} rejected, {summary['skipped']} skipped (already processed)"
        )
    if summary.get("refused_members"):
        lines.append("members refused (their key file differs from the attested membership; batches left in the "
                     "inbox): " + ", ".join(summary["refused_members"]))
    if summary.get("millis"):
        lines.append("stage durations (ms): " + ", ".join(f"{k} {v}" for k, v in summary["millis"].items()))
    for c in summary.get("batches", []):
        if c["status"] == "rejected":
            lines.append(f"rejected {c['file']}: {c['code']} (moved to quarantine/)")
    return "\n".join(lines)


# --- the temporary Prefect server of one `aml run` ------------------------------------------
# Without PREFECT_API_URL, Prefect starts its temporary server (uvicorn serving its API on
# SQLite in PREFECT_HOME) only when the flow first needs it, i.e. after this process has spent
# seconds importing Prefect and the flow, and then waits seconds more for it. We start the same
# server the same way, first thing, so the two start-ups run side by side on separate cores.
# The listening socket is made here and handed to uvicorn, so the URL is known (and in the
# environment, for Prefect's settings) before Prefect is imported, with no race for the port.

# Runs in the server process before uvicorn: end it when `aml run` dies, even by SIGKILL (a
# crash must not leave an orphaned server holding the database).
_SERVER_BOOT = (
    "import ctypes, os, runpy, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(0)\n"
    "sys.argv = ['uvicorn'] + sys.argv[2:]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def _start_server(sock: socket.socket) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    fd = sock.fileno()
    return subprocess.Popen(
        [sys.executable, "-c", _SERVER_BOOT, str(os.getpid()), "--factory", "prefect.server.api.server:create_app",
         "--fd", str(fd), "--log-level", "error", "--lifespan", "on"],
        env=env, stdin=subprocess.DEVNULL, pass_fds=(fd,),
    )


def _wait_until_healthy(proc: subprocess.Popen, url: str) -> None:
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"the temporary Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise ConfigError("the temporary Prefect server did not start in time "
                      "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def _flush_prefect() -> None:
    """Send Prefect's queued logs and events while the server is still there to take them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=10)


def _configured_api_url() -> bool:
    """Does Prefect's configuration name an API server? Checked without importing Prefect (which
    costs a second): the environment, a .env, prefect.toml or pyproject.toml here, the active profile."""
    import tomllib

    if os.environ.get("PREFECT_API_URL"):
        return True
    with contextlib.suppress(OSError):
        if any(line.strip().startswith("PREFECT_API_URL") for line in Path(".env").read_text().splitlines()):
            return True
    for path, keys in ((Path("prefect.toml"), ("api",)), (Path("pyproject.toml"), ("tool", "prefect", "api"))):
        with contextlib.suppress(OSError, ValueError):
            doc = tomllib.loads(path.read_text())
            for key in keys:
                doc = doc.get(key, {})
            if doc.get("url"):
                return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    with contextlib.suppress(OSError, ValueError):
        doc = tomllib.loads(profiles.read_text())
        active = os.environ.get("PREFECT_PROFILE") or doc.get("active", "ephemeral")
        if doc.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"):
            return True
    return False


@contextlib.contextmanager
def prefect_api() -> Iterator[Callable[[], None]]:
    """The run's Prefect API: PREFECT_API_URL when set, else a temporary local server, started
    now and stopped at the end. Yields a function that waits until the API answers."""
    import aml.operator.prefect_env  # noqa: F401  (the project's settings, also for the server)

    if "prefect" in sys.modules or _configured_api_url():
        # A server to use, or Prefect already set up in this process (then its settings are
        # fixed already, and Prefect starts its own temporary server as it needs it).
        yield lambda: None
        return
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    proc = _start_server(sock)
    os.environ["PREFECT_API_URL"] = url
    try:
        yield lambda: _wait_until_healthy(proc, url)
    finally:
        if "prefect" in sys.modules and proc.poll() is None:
            _flush_prefect()
        os.environ.pop("PREFECT_API_URL", None)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sock.close()


def run_consortium(enclave_dir: Path, inbox: Path, outbox: Path) -> str:
    """Run the consortium flow once (a temporary local Prefect server unless PREFECT_API_URL is set)."""
    args = _check_dirs(Path(enclave_dir), Path(inbox), Path(outbox))
    with prefect_api() as ready:
        from flows.consortium import consortium_run  # imports Prefect while the server starts

        ready()
        return format_summary(consortium_run(*args))


def build_deployment(enclave_dir: Path, inbox: Path, outbox: Path, cron: str, name: str):
    """The nightly deployment: its parameters are the three directory paths and nothing else."""
    args = _check_dirs(Path(enclave_dir), Path(inbox), Path(outbox))
    import aml.operator.prefect_env  # noqa: F401  (before prefect)
    from flows.consortium import consortium_run

    return consortium_run.to_deployment(
        name=name, cron=cron,
        parameters={"enclave_dir": args[0], "inbox": args[1], "outbox": args[2]},
        description="Nightly consortium run over the sealed batches in the inbox.",
    )


def serve(enclave_dir: Path, inbox: Path, outbox: Path, cron: str, name: str) -> int:
    """Serve the flow as a scheduled deployment (needs a Prefect server: PREFECT_API_URL)."""
    deployment = build_deployment(enclave_dir, inbox, outbox, cron, name)
    from prefect import serve as prefect_serve

    prefect_serve(deployment)
    return 0
