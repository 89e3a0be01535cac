"""Issue 14, finding 4 through the real flow: one member's batch cannot stop the run.

A decompression bomb is quarantined as `too_large` before it is decoded; a batch on which the
enclave worker runs out of memory is quarantined as `resource_exhausted`; a batch on which the
worker dies is quarantined so the next run goes on. The other banks' batches are processed."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from conftest import E2E_BANKS, aml_cli, build_consortium
from test_payload_limits import dictionary_bomb

pytestmark = pytest.mark.slow


def _run(p, env, **extra):
    return aml_cli("run", "--enclave", p["enclave"], "--inbox", p["inbox"], "--outbox", p["outbox"],
                   env={**env, **extra})


def _seal(p, bank: str, sequence: int, payload: bytes, rows: int, batch_id: str):
    """A correctly signed batch sealed to the enclave with the container API (any bank could)."""
    from aml.core.crypto.container import ENCLAVE, Header, seal_bytes
    from aml.core.crypto.keys import load_keypair
    from aml.enclave.identity import load_enclave_keys

    enclave = load_enclave_keys(p["enclave"]).public
    pair = load_keypair(p["keys"] / f"{bank}.key")
    now = int(time.time())
    header = Header(kind="batch", sender=bank, recipient=ENCLAVE, batch_id=batch_id, sequence=sequence,
                    created=now, expires=now + 3600, schema_version=1, row_count=rows,
                    recipient_key_id=enclave.key_id, sender_key_id=pair.key_id)
    out = p["inbox"] / f"{bank}-{sequence:08d}-{batch_id}.amlb"
    out.write_bytes(seal_bytes(payload, header, enclave, pair))
    return out


def _genuine(p, bank: str, sequence: int, batch_id: str):
    from aml.core.crypto.container import table_to_parquet
    from aml.core.schema import TRANSACTION_SCHEMA
    import pyarrow.parquet as pq

    table = pq.read_table(p["banks"] / f"{bank}.parquet").slice(0, 50)
    return _seal(p, bank, sequence, table_to_parquet(table, TRANSACTION_SCHEMA), 50, batch_id)


def _reason(p, file) -> dict:
    return json.loads((p["inbox"] / "quarantine" / f"{file.name}.reason.json").read_text())


def _ledger(p) -> set[str]:
    with sqlite3.connect(p["enclave"] / "state" / "ledger.sqlite") as db:
        return {r[0] for r in db.execute("SELECT batch_id FROM batches")}


@pytest.fixture(scope="module")
def consortium(tmp_path_factory, small_table, prefect_server):
    p = build_consortium(small_table, tmp_path_factory.mktemp("poison"))
    env = {"PREFECT_API_URL": prefect_server[0], "PREFECT_HOME": str(prefect_server[1])}
    return p, env


def test_bomb_and_out_of_memory_batches_are_quarantined_and_the_run_goes_on(consortium):
    p, env = consortium
    bomb = _seal(p, "B03", 2, dictionary_bomb(), 8192, "bomb")
    assert bomb.stat().st_size < 64 << 10  # a few dozen KiB that would decode to 512 MiB
    oom = _genuine(p, "B02", 2, "oom")
    r = _run(p, env, AML_TEST_UNSEAL_FAULT="memory:oom")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 batches accepted, 2 rejected" in r.stdout
    assert _reason(p, bomb)["code"] == "too_large"
    assert _reason(p, oom)["code"] == "resource_exhausted"
    assert not bomb.exists() and not oom.exists()
    assert len(_ledger(p)) == 3 and not {"bomb", "oom"} & _ledger(p)
    for bank in E2E_BANKS:
        assert len(list((p["outbox"] / bank).glob("*.amla"))) == 1


def test_a_batch_the_worker_dies_on_is_quarantined_and_the_next_run_processes_the_others(consortium):
    p, env = consortium
    killer = _genuine(p, "B01", 3, "killer")
    other = _genuine(p, "B02", 3, "other")
    r = _run(p, env, AML_TEST_UNSEAL_FAULT="kill:killer")
    assert r.returncode != 0
    assert "enclave worker died while unsealing batch killer" in r.stderr
    assert _reason(p, killer)["code"] == "resource_exhausted"
    assert other.exists() and "other" not in _ledger(p)
    again = _run(p, env)  # the poison is out of the inbox: the next run is not stopped by it
    assert again.returncode == 0, again.stderr[-3000:]
    assert "other" in _ledger(p) and "killer" not in _ledger(p)
