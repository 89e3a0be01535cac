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


# --- a small consortium, built through the CLI (used by the end-to-end and leak tests) ------
E2E_BANKS = ["B01", "B02", "B03"]


def aml_cli(*args: str, env: dict | None = None, timeout: float = 300, unset: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
    """Run `aml ARGS...` in a fresh process, like an operator or a bank would."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run([sys.executable, "-m", "aml.cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="session")
def small_table():
    """The last 3 days of sample_data, the last 1.5 of them unlabelled (new): quick to detect on."""
    import datetime

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from aml.tools.demo import unlabel_recent

    path = ROOT / "sample_data" / "transactions.parquet"
    if not path.is_file():
        pytest.skip("sample_data/transactions.parquet is missing")
    t = pq.read_table(path)
    latest = pc.max(t["timestamp"]).as_py()
    cutoff = pa.scalar(latest - datetime.timedelta(days=3), t.schema.field("timestamp").type)
    return unlabel_recent(t.filter(pc.greater(t["timestamp"], cutoff)), 1.5)


def bank_policy_args(p: dict[str, Path]) -> list:
    """`--attestation ... --policy ... --allow-simulated` for `aml seal` / `aml open` in a test consortium."""
    return ["--attestation", p["enclave"] / "attestation.json", "--policy", p["banks"] / "policy.json",
            "--allow-simulated"]


def build_consortium(table, workdir: Path, banks: list[str] = E2E_BANKS) -> dict[str, Path]:
    """Bank keys, an initialised enclave and one sealed batch per bank, all through the CLI."""
    import pyarrow.parquet as pq

    from aml.tools.demo import pin_policy
    from aml.tools.split import split_table

    p = {n: workdir / n for n in ("keys", "banks", "enclave", "inbox", "outbox", "alerts")}
    for d in p.values():
        d.mkdir(parents=True, exist_ok=True)
    for bank in banks:
        r = aml_cli("keygen", "--bank", bank, "--out", p["keys"])
        assert r.returncode == 0, r.stderr
    r = aml_cli("enclave", "init", "--dir", p["enclave"], "--members", p["keys"])
    assert r.returncode == 0, r.stderr
    pin_policy(p["enclave"], p["banks"])  # the banks' pinned copy, banks/policy.json (one for all in tests)
    for bank, part in split_table(table, banks).items():
        pq.write_table(part, p["banks"] / f"{bank}.parquet")
        r = aml_cli("seal", "--bank", bank, "--key", p["keys"] / f"{bank}.key", *bank_policy_args(p),
                    p["banks"] / f"{bank}.parquet", "--out", p["inbox"])
        assert r.returncode == 0, r.stderr
    return p


def open_all(p: dict[str, Path], banks: list[str] = E2E_BANKS) -> dict:
    """Each bank opens every alert file in its outbox folder; returns bank -> alert rows."""
    import pyarrow.parquet as pq

    out = {}
    for bank in banks:
        sealed = sorted((p["outbox"] / bank).glob("*.amla"))
        assert sealed, f"no alert file for {bank}"
        dest = p["alerts"] / f"{bank}.parquet"
        r = aml_cli("open", "--bank", bank, "--key", p["keys"] / f"{bank}.key", *bank_policy_args(p),
                    *sealed, "--out", dest)
        assert r.returncode == 0, r.stderr
        out[bank] = pq.read_table(dest).to_pylist()
    return out


_BASE64_RUN = None


def canary_hits(data: bytes, canaries: list[bytes]) -> list[bytes]:
    """Canaries found in `data`, also inside base64 runs (Prefect stores pickled results and
    exceptions base64-encoded)."""
    import base64
    import binascii
    import re

    global _BASE64_RUN
    if _BASE64_RUN is None:
        _BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")
    views = [data]
    for m in _BASE64_RUN.finditer(data):
        chunk = m.group(0)
        try:
            views.append(base64.b64decode(chunk + b"=" * (-len(chunk) % 4)))
        except (binascii.Error, ValueError):
            continue
    return [c for c in canaries if any(c in v for v in views)]
