"""End to end through the CLI with real Prefect: keys, attestation, seal, run, open.

Covers the per-bank privacy scope of alerts, idempotency, quarantine of a tampered batch with
the rest processed, and a crash (SIGKILL-like exit) followed by a rerun giving the same alerts.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from conftest import E2E_BANKS, aml_cli, bank_policy_args, build_consortium, open_all

pytestmark = pytest.mark.slow


def _run(p, env, extra_env=None):
    return aml_cli("run", "--enclave", p["enclave"], "--inbox", p["inbox"], "--outbox", p["outbox"],
                   env={**env, **(extra_env or {})})


def _seal_payload(p, bank: str, sequence: int, payload: bytes):
    """A correctly signed and sealed batch whose payload is `payload` (a bank's software bug)."""
    import time

    from aml.bank.seal import load_member_key, verified_enclave
    from aml.core.crypto.container import ENCLAVE, Header, seal_bytes
    from aml.core.crypto.keys import PublicKeys

    enclave = verified_enclave(p["enclave"] / "attestation.json", p["banks"] / "policy.json", allow_simulated=True)
    pair = load_member_key(bank, p["keys"] / f"{bank}.key", enclave)
    enclave_pub = PublicKeys.from_raw(enclave.x25519_public, enclave.ed25519_public, ENCLAVE)
    now = int(time.time())
    header = Header(kind="batch", sender=bank, recipient=ENCLAVE, batch_id=f"bad{sequence}", sequence=sequence,
                    created=now, expires=now + 3600, schema_version=1, row_count=1,
                    recipient_key_id=enclave_pub.key_id, sender_key_id=pair.key_id)
    out = p["inbox"] / f"{bank}-{sequence:08d}-bad{sequence}.amlb"
    out.write_bytes(seal_bytes(payload, header, enclave_pub, pair))
    return out


def _ledger_batches(p) -> int:
    with sqlite3.connect(p["enclave"] / "state" / "ledger.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]


def _alert_ids(alerts: dict) -> dict:
    return {bank: sorted(a["alert_id"] for a in rows) for bank, rows in alerts.items()}


@pytest.fixture(scope="module")
def consortium(tmp_path_factory, small_table, prefect_server):
    work = tmp_path_factory.mktemp("e2e")
    p = build_consortium(small_table, work / "main")
    crash = {k: work / "crash" / v.name for k, v in p.items()}
    shutil.copytree(work / "main", work / "crash")  # untouched copy for the crash test
    env = {"PREFECT_API_URL": prefect_server[0], "PREFECT_HOME": str(prefect_server[1])}
    first = _run(p, env)
    assert first.returncode == 0, first.stderr[-3000:]
    return {"p": p, "crash": crash, "env": env, "first": first, "alerts": open_all(p)}


def test_run_gives_each_bank_alerts_about_its_own_accounts_only(consortium, small_table):
    p, alerts = consortium["p"], consortium["alerts"]
    assert "3 batches accepted" in consortium["first"].stdout
    rows = small_table.to_pydict()
    own_accounts = {b: set() for b in E2E_BANKS}
    own_txns = {b: set() for b in E2E_BANKS}
    for txn, sb, sa, db, da in zip(rows["txn_id"], rows["src_bank"], rows["src_account"],
                                   rows["dst_bank"], rows["dst_account"]):
        for bank, account in ((sb, sa), (db, da)):
            if bank in own_accounts:
                own_accounts[bank].add(account)
                own_txns[bank].add(txn)
    assert sum(len(a) for a in alerts.values()) > 0  # the scope check below must not be vacuous
    for bank, rows_ in alerts.items():
        assert len(list((p["outbox"] / bank).glob("*.amla"))) == 1
        for alert in rows_:
            assert alert["bank"] == bank
            assert set(alert["accounts"]) <= own_accounts[bank]
            assert set(alert["txn_ids"]) <= own_txns[bank]
    # One size for every member's file of the run, whatever each bank received.
    assert len({f.stat().st_size for bank in E2E_BANKS for f in (p["outbox"] / bank).glob("*.amla")}) == 1
    # Plaintext is gone, history and ledger committed once.
    assert list((p["enclave"] / "work").iterdir()) == []
    assert len(list((p["enclave"] / "state").glob("history-*.aes"))) == 1
    assert _ledger_batches(p) == 3


def test_alert_provenance_is_exactly_what_the_format_doc_names(consortium):
    """Issue 14, finding 11: docs/format.md named provenance fields the code never wrote."""
    import re

    from aml.core.crypto.container import read_header
    from conftest import ROOT

    row = next(line for line in (ROOT / "docs" / "format.md").read_text().splitlines()
               if line.startswith("| `provenance` |"))
    documented = set(re.findall(r"`([a-z_0-9]+)`", row.split("for alerts", 1)[1]))
    p = consortium["p"]
    for bank in E2E_BANKS:
        header = read_header(next((p["outbox"] / bank).glob("*.amla")))
        assert set(header.provenance) == documented
        assert len(header.provenance["batches"]) == 3 == len(header.provenance["batch_sha256"])


def test_second_run_on_the_same_inbox_counts_nothing_twice(consortium):
    p = consortium["p"]
    again = _run(p, consortium["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no new batches" in again.stdout and "3 skipped" in again.stdout
    assert _ledger_batches(p) == 3
    for bank in E2E_BANKS:
        assert len(list((p["outbox"] / bank).glob("*.amla"))) == 1


def test_tampered_batch_is_quarantined_and_the_others_processed(consortium):
    p, env = consortium["p"], consortium["env"]
    sealed = {}
    for bank in ("B01", "B02"):
        r = aml_cli("seal", "--bank", bank, "--key", p["keys"] / f"{bank}.key", *bank_policy_args(p),
                    p["banks"] / f"{bank}.parquet", "--out", p["inbox"])
        assert r.returncode == 0, r.stderr
        sealed[bank] = sorted(p["inbox"].glob(f"{bank}-00000002-*.amlb"))[0]
    data = bytearray(sealed["B02"].read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the ciphertext
    sealed["B02"].write_bytes(bytes(data))

    not_parquet = _seal_payload(p, "B03", 2, b"signed and sealed, but not a Parquet file")

    r = _run(p, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 batches accepted, 2 rejected" in r.stdout
    qdir = p["inbox"] / "quarantine"
    # B03's file passed every outside check; the enclave refused it, and only its code came out.
    assert json.loads((qdir / f"{not_parquet.name}.reason.json").read_text())["code"] == "format"
    assert (qdir / sealed["B02"].name).is_file() and not sealed["B02"].exists()
    reason = json.loads((qdir / f"{sealed['B02'].name}.reason.json").read_text())
    assert reason["code"] in ("bad_signature", "tampered")
    assert set(reason) == {"file", "sha256", "bank", "batch_id", "code", "message", "time"}
    assert _ledger_batches(p) == 4
    for bank in E2E_BANKS:  # every member gets a file every run, even with nothing in it
        assert len(list((p["outbox"] / bank).glob("*.amla"))) == 2


def test_crash_then_rerun_gives_the_same_alerts(consortium):
    p, env = consortium["crash"], consortium["env"]
    crashed = _run(p, env, {"AML_CRASH_AT": "delivered"})
    assert crashed.returncode == 137
    assert any((p["enclave"] / "work").iterdir())  # the kill left plaintext's work area behind
    assert _ledger_batches(p) == 0

    rerun = _run(p, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "3 batches accepted" in rerun.stdout
    assert list((p["enclave"] / "work").iterdir()) == []
    assert _ledger_batches(p) == 3
    assert len(list((p["enclave"] / "state").glob("history-*.aes"))) == 1
    assert _alert_ids(open_all(p)) == _alert_ids(consortium["alerts"])


def test_demo_runs_end_to_end_on_a_temporary_prefect_server(tmp_path):
    """`aml demo` (what `make demo` runs), with Prefect's temporary server: no PREFECT_API_URL."""
    r = aml_cli("demo", "--workdir", tmp_path / "demo", env={"PREFECT_HOME": str(tmp_path / "prefect_home")},
                unset=("PREFECT_API_URL",), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SIMULATED ATTESTATION" in r.stdout and "6 batches accepted" in r.stdout
    received = [line for line in r.stdout.splitlines() if " alerts (" in line]
    assert len(received) == 6
    assert (tmp_path / "prefect_home" / "prefect.db").is_file()  # the temporary server's database
    assert list((tmp_path / "demo" / "enclave" / "work").iterdir()) == []
    # the analysts' ending: each bank's cases and offline report, one goAML STR
    assert len(list((tmp_path / "demo" / "reports").glob("*.html"))) == 6
    assert len(list((tmp_path / "demo" / "cases").glob("*.sqlite"))) == 6
    assert len(list((tmp_path / "demo" / "goaml").glob("*/goaml-STR-*.xml"))) == 1
    assert "goAML STR" in r.stdout
