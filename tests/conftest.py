"""Shared fixtures: one real Prefect server for the whole test session.

Starting Prefect's server costs 15-20 s, so tests that run flows share one, started here with
its own PREFECT_HOME in a temporary directory (its database, logs and storage are what the
leak test searches). CLI subprocesses inherit PREFECT_API_URL and PREFECT_HOME from
`prefect_env_vars`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A Prefect server on a free local port; yields (api_url, prefect_home)."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    log = open(home / "server.out", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start",
         "--host", "127.0.0.1", "--port", str(port), "--no-services"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the test Prefect server did not start; see " + str(home / "server.out"))
        time.sleep(0.5)
    try:
        yield url, home
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def prefect_env_vars(prefect_server, monkeypatch):
    """Point this process (and the CLI subprocesses it starts) at the session's server."""
    url, home = prefect_server
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    return {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
