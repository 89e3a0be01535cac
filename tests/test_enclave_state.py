"""The enclave's own state (issue 14, findings 3, 7 and 9): the attested membership is what the
enclave uses, a run's counts stay sealed until its commit, a rerun cannot pick a subset of an
interrupted run's batches, and the ledger and history cannot be rolled back unnoticed.

The first part calls the state functions directly (fast); the second runs `aml run` on the
session's Prefect server (slow: six runs)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings, strategies as st

from aml.core.crypto.container import ENCLAVE, Header, read_header, seal_bytes, table_to_parquet
from aml.core.crypto.keys import BankKeyPair, PublicKeys, load_keypair, load_public
from aml.core.errors import (
    ConfigError, PendingRunError, ReplayError, RollbackError, SignatureError, TamperedError,
)
from aml.operator.ledger import BatchRecord, Ledger
from aml.core.schema import SCHEMA_VERSION, TRANSACTION_SCHEMA
from conftest import aml_cli, build_consortium

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _table(n: int = 3) -> pa.Table:
    return pa.Table.from_pylist([
        {"txn_id": f"t{i}", "timestamp": T0, "src_bank": "B01", "src_account": "a1", "dst_bank": "B02",
         "dst_account": "b1", "amount": 10.0 + i, "currency": "USD", "amount_received": None,
         "receiving_currency": None, "payment_format": "Wire", "label": None} for i in range(n)],
        schema=TRANSACTION_SCHEMA)


def _hybrid(real: PublicKeys) -> PublicKeys:
    """The bank's real Ed25519 key with an X25519 key the operator holds."""
    return PublicKeys(X25519PrivateKey.generate().public_key(), real.ed25519, real.bank)


@pytest.fixture()
def world(tmp_path):
    from aml.bank.keygen import keygen
    from aml.enclave.identity import init_enclave, load_enclave_keys

    for bank in ("B01", "B02"):
        keygen(bank, tmp_path / "keys")
    init_enclave(tmp_path / "enclave", tmp_path / "keys")
    return {"dir": tmp_path, "enclave": tmp_path / "enclave", "keys": load_enclave_keys(tmp_path / "enclave")}


# --- finding 3: membership -------------------------------------------------------------------
def test_the_enclave_uses_the_attested_member_table_and_refuses_a_hybrid_key_file(world):
    from aml.enclave.state import attested_members, load_state

    edir, keys = world["enclave"], world["keys"]
    real = load_public(edir / "members" / "B02.pub")
    (edir / "members" / "B02.pub").write_text(json.dumps(_hybrid(real).to_json()))
    members, refused = attested_members(edir, keys, load_state(edir, keys.storage_key, keys.key_id))
    assert members["B02"] == real  # the attested keys, never the file's
    assert set(refused) == {"B02"} and "differs from the attested membership" in refused["B02"]


def test_a_sender_key_id_that_is_not_the_members_is_refused_inside_and_outside(world, tmp_path):
    from aml.core.crypto.attestation import verify_attestation
    from flows.consortium import verify_inbox
    from aml.enclave.identity import open_batch

    edir = world["enclave"]
    real = load_keypair(tmp_path / "keys" / "B01.key")
    # Signed with B01's real Ed25519 key (so the signature verifies) but naming another key id.
    signer = BankKeyPair(X25519PrivateKey.generate(), real.ed25519, "B01")
    att = verify_attestation(edir / "attestation.json", edir / "policy.json")
    enclave_pub = PublicKeys.from_raw(att.x25519_public, att.ed25519_public, ENCLAVE)
    now = int(time.time())
    header = Header(kind="batch", sender="B01", recipient=ENCLAVE, batch_id="mixed1", sequence=1, created=now,
                    expires=now + 3600, schema_version=SCHEMA_VERSION, row_count=3,
                    recipient_key_id=enclave_pub.key_id, sender_key_id=signer.key_id)
    data = seal_bytes(table_to_parquet(_table(), TRANSACTION_SCHEMA), header, enclave_pub.x25519, signer.ed25519)
    with pytest.raises(SignatureError, match="sender_key_id"):
        open_batch(data, world["keys"], real.public)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "B01-1.amlb").write_bytes(data)
    out = verify_inbox.fn(str(edir), str(inbox))
    assert [(c["status"], c["code"]) for c in out] == [("rejected", "bad_signature")]


def test_in_the_image_the_flow_ignores_path_parameters(monkeypatch, tmp_path):
    from aml.enclave import runner
    from aml.enclave.entrypoint import FIXED_ROOT_ENV
    from aml.core.errors import EnclaveBoundaryError
    from flows.consortium import _paths

    assert _paths("/a", "/b", "/c") == ("/a", "/b", "/c")
    monkeypatch.setenv(FIXED_ROOT_ENV, str(tmp_path / "root"))
    enc, inbox, outbox = _paths("/operator/enclave", "/operator/inbox", "/operator/outbox")
    assert (enc, inbox, outbox) == (str(tmp_path / "root" / "enclave"), str(tmp_path / "root" / "inbox"),
                                    str(tmp_path / "root" / "outbox"))
    monkeypatch.setitem(runner._WORKER, "inside", True)
    with pytest.raises(EnclaveBoundaryError, match="fixed"):
        runner.enclave_keys(tmp_path / "elsewhere")


def test_the_image_entrypoint_fixes_the_paths_whatever_the_contract_env_says(monkeypatch, tmp_path):
    import aml.operator.run
    from aml.enclave import entrypoint

    monkeypatch.setenv(entrypoint.FIXED_ROOT_ENV, str(tmp_path / "operator-chosen"))
    monkeypatch.setattr(entrypoint, "prepare", lambda *a: tmp_path / "attestation.json")
    seen = {}
    monkeypatch.setattr(aml.operator.run, "serve", lambda *a, **k: seen.update(layout=entrypoint.fixed_layout()) or 0)
    assert entrypoint.main([]) == 0
    assert seen["layout"] == entrypoint.layout(entrypoint.DATA_ROOT)


# --- findings 7 and 9: attempts, the MAC chain, the counter --------------------------------------
def _commit(world, run_id: str, batches: list[dict], withdrawn: list[str] = (), window: float = 30.0) -> None:
    """What a run does to the state and the ledger: attempt (inside), commit (outside), check (inside)."""
    from aml.enclave.state import begin_attempt, verified_state

    edir, keys = world["enclave"], world["keys"]
    state = verified_state(edir, keys)
    seq, head = begin_attempt(edir, keys, state, run_id, f"history-{run_id}.aes", window, batches, list(withdrawn))
    with Ledger(edir) as ledger:
        ledger.commit_run(run_id, [BatchRecord(**b) for b in batches], f"history-{run_id}.aes", {},
                          head=head, window_days=window, seq=seq)
    (edir / "state" / f"history-{run_id}.aes").write_bytes(b"sealed history stand-in")
    assert verified_state(edir, keys)["counter"] == seq


def _batch(i: int, bank: str = "B01") -> dict:
    return {"batch_id": f"b{i}", "bank": bank, "sequence": i, "sha256": f"{i:064x}", "rows": 5}


def test_a_rolled_back_or_edited_ledger_is_refused(world):
    from aml.enclave.state import verified_state

    edir, keys = world["enclave"], world["keys"]
    _commit(world, "run-1", [_batch(1)])
    ledger = edir / "state" / "ledger.sqlite"
    old = edir.parent / "ledger-after-run-1.sqlite"
    shutil.copy(ledger, old)
    _commit(world, "run-2", [_batch(2)])
    shutil.copy(old, ledger)  # the ledger as it was after run 1 (WAL checkpointed on close)
    with pytest.raises(RollbackError, match="1 runs, the enclave's sealed state 2"):
        verified_state(edir, keys)
    shutil.copy(old, ledger)
    with Ledger(edir) as lg:  # an edited ledger: a batch record dropped, so the batch could be replayed
        lg._db.execute("DELETE FROM batches WHERE batch_id = 'b1'")
    with pytest.raises(RollbackError, match="MAC chain"):
        verified_state(edir, keys)


def test_a_missing_or_edited_enclave_state_is_refused(world):
    from aml.enclave.state import verified_state

    edir, keys = world["enclave"], world["keys"]
    _commit(world, "run-1", [_batch(1)])
    path = edir / "state" / "enclave-state.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "counter": 0}))
    with pytest.raises(TamperedError):
        verified_state(edir, keys)
    path.unlink()
    with pytest.raises(RollbackError, match="missing"):
        verified_state(edir, keys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["counter", "head", "history", "window_days", "pending", "withdrawn", "attempts",
                              "membership_hash"]),
       value=st.one_of(st.integers(-5, 5), st.text(max_size=8), st.none(), st.lists(st.text(max_size=4), max_size=2)))
def test_property_any_change_to_the_sealed_state_is_refused(world, field, value):
    from aml.enclave.state import load_state

    edir, keys = world["enclave"], world["keys"]
    path = edir / "state" / "enclave-state.json"
    original = path.read_text()
    doc = json.loads(original)
    if doc[field] == value:
        return
    path.write_text(json.dumps({**doc, field: value}))
    try:
        with pytest.raises(TamperedError):
            load_state(edir, keys.storage_key, keys.key_id)
    finally:
        path.write_text(original)


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["batch_id", "bank", "sequence", "sha256", "rows"]), run_field=st.sampled_from(
    ["run_id", "seq", "history", "window_days", None]))
def test_property_any_change_to_a_committed_run_changes_the_chain(field, run_field):
    from aml.enclave.state import chain_entry, next_head

    key, head = b"k" * 32, "00" * 32
    run = {"run_id": "run-1", "seq": 1, "history": "history-run-1.aes", "window_days": 30.0,
           "batches": [_batch(1), _batch(2, "B02")]}
    base = next_head(key, head, chain_entry(run["run_id"], run["seq"], run["history"], run["window_days"],
                                            run["batches"]))
    changed = json.loads(json.dumps(run))
    b = changed["batches"][0]
    b[field] = b[field] + 1 if isinstance(b[field], int) else b[field] + "x"
    if run_field:
        changed[run_field] = changed[run_field] + 1 if isinstance(changed[run_field], (int, float)) \
            else changed[run_field] + "x"
    assert next_head(key, head, chain_entry(changed["run_id"], changed["seq"], changed["history"],
                                            changed["window_days"], changed["batches"])) != base


def test_a_rerun_may_leave_out_pending_batches_only_when_they_were_quarantined(world):
    from aml.enclave.state import begin_attempt, verified_state

    edir, keys = world["enclave"], world["keys"]
    a, b, c = _batch(1), _batch(2, "B02"), _batch(3, "B02")
    begin_attempt(edir, keys, verified_state(edir, keys), "run-ab", "history-run-ab.aes", 30.0, [a, b], [])
    # killed before its commit; the same batches again is the same run (crash recovery)
    begin_attempt(edir, keys, verified_state(edir, keys), "run-ab", "history-run-ab.aes", 30.0, [a, b], [])
    with pytest.raises(PendingRunError, match="1 of them are not in this run"):
        begin_attempt(edir, keys, verified_state(edir, keys), "run-a", "history-run-a.aes", 30.0, [a], [])
    with pytest.raises(PendingRunError):  # new batches do not make up for a missing one
        begin_attempt(edir, keys, verified_state(edir, keys), "run-ac", "history-run-ac.aes", 30.0, [a, c], [])
    _commit(world, "run-a", [a], withdrawn=[b["sha256"]])  # b quarantined first: allowed, b burned
    with pytest.raises(ReplayError, match="withdrawn"):
        begin_attempt(edir, keys, verified_state(edir, keys), "run-b", "history-run-b.aes", 30.0, [b], [])
    assert verified_state(edir, keys)["attempts"] == 3


def test_the_history_window_may_not_narrow(world):
    from aml.enclave.state import check_window, verified_state

    _commit(world, "run-1", [_batch(1)], window=30.0)
    state = verified_state(world["enclave"], world["keys"])
    check_window(state, 30.0)
    check_window(state, 45.0)
    with pytest.raises(ConfigError, match="narrower"):
        check_window(state, 1.0)


def test_a_crash_after_the_commit_is_picked_up_by_the_next_check(world):
    from aml.enclave.state import begin_attempt, verified_state

    edir, keys = world["enclave"], world["keys"]
    seq, head = begin_attempt(edir, keys, verified_state(edir, keys), "run-1", "history-run-1.aes", 30.0,
                              [_batch(1)], [])
    with Ledger(edir) as ledger:
        ledger.commit_run("run-1", [BatchRecord(**_batch(1))], "history-run-1.aes", {}, head=head,
                          window_days=30.0, seq=seq)
    (edir / "state" / "history-run-1.aes").write_bytes(b"sealed history stand-in")
    state = verified_state(edir, keys)  # the enclave never saw the commit happen: it catches up
    assert (state["counter"], state["pending"], state["history"]) == (1, None, "history-run-1.aes")
    (edir / "state" / "history-run-1.aes").unlink()  # the history deleted: refused, not started afresh
    with pytest.raises(RollbackError, match="history file is missing"):
        verified_state(edir, keys)


# --- through the real flow -------------------------------------------------------------------------
def _run(p: dict, env: dict, extra: dict | None = None):
    return aml_cli("run", "--enclave", p["enclave"], "--inbox", p["inbox"], "--outbox", p["outbox"],
                   env={**env, **(extra or {})})


def _logs_since(api: str, since: float) -> list[str]:
    """Every log message the Prefect server holds from `since` on."""
    body = json.dumps({"logs": {"timestamp": {"after_": datetime.fromtimestamp(since, timezone.utc).isoformat()}},
                       "limit": 200}).encode()
    out, offset = [], 0
    while True:
        req = urllib.request.Request(f"{api}/logs/filter", data=body.replace(b'"limit"', f'"offset": {offset}, "limit"'.encode()),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            page = json.loads(r.read())
        out += [log["message"] for log in page]
        if len(page) < 200:
            return out
        offset += 200


@pytest.fixture(scope="module")
def template(tmp_path_factory, small_table):
    return build_consortium(small_table, tmp_path_factory.mktemp("state-template") / "c")


def _copy(template: dict, dest: Path) -> dict:
    root = template["enclave"].parent
    shutil.copytree(root, dest)
    return {k: dest / v.relative_to(root) for k, v in template.items()}


def test_a_hybrid_member_file_gets_that_member_refused_and_nothing_sealed_to_the_operator(
        template, prefect_env_vars, tmp_path):
    p = _copy(template, tmp_path / "c")
    real = load_public(p["enclave"] / "members" / "B02.pub")
    hybrid = _hybrid(real)
    (p["enclave"] / "members" / "B02.pub").write_text(json.dumps(hybrid.to_json()))
    r = _run(p, prefect_env_vars)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "members refused" in r.stdout and "B02" in r.stdout
    assert sorted(x.name for x in p["inbox"].glob("B02-*.amlb"))  # left in the inbox, not quarantined
    sealed_to = {read_header(f).recipient_key_id for f in p["outbox"].rglob("*.amla")}
    assert sealed_to and hybrid.key_id not in sealed_to
    assert not (p["outbox"] / "B02").exists()


def test_counts_stay_sealed_until_commit_and_a_subset_rerun_is_refused(template, prefect_env_vars, tmp_path):
    api = prefect_env_vars["PREFECT_API_URL"]
    p = _copy(template, tmp_path / "c")
    since = time.time() - 1
    killed = _run(p, prefect_env_vars, {"AML_CRASH_AT": "detected"})  # after detection, before commit
    assert killed.returncode == 137
    time.sleep(2)  # let the server store what the run sent it
    before_commit = _logs_since(api, since) + (killed.stdout + killed.stderr).splitlines()
    assert any("rows accepted" in m for m in before_commit)  # the run did log (per batch)...
    assert not [m for m in before_commit if "cross-bank" in m or "detection:" in m or "alerts" in m]

    aside = tmp_path / "aside"
    aside.mkdir()
    for f in p["inbox"].glob("B03-*.amlb"):  # the operator picks a subset of the pending batches
        f.rename(aside / f.name)
    subset = _run(p, prefect_env_vars)
    assert subset.returncode != 0 and "pending_run" in subset.stderr, subset.stderr[-2000:]
    assert _ledger_runs(p) == 0

    for f in aside.iterdir():
        f.rename(p["inbox"] / f.name)
    since = time.time() - 1
    rerun = _run(p, prefect_env_vars)
    assert rerun.returncode == 0 and "3 batches accepted" in rerun.stdout, rerun.stderr[-3000:]
    time.sleep(2)
    assert any("cross-bank" in m for m in _logs_since(api, since))  # released after the commit

    # finding 9: the window and its source are in every alert file's provenance
    prov = read_header(next(p["outbox"].rglob("*.amla"))).provenance
    assert (prov["window_days"], prov["window_source"], prov["run_sequence"]) == (30.0, "default", 1)
    narrow = _run(p, prefect_env_vars, {"AML_HISTORY_DAYS": "1"})
    assert narrow.returncode != 0 and "config" in narrow.stderr and "narrow" in narrow.stderr

    # finding 9: the ledger rolled back to before the run: refused, nothing processed again
    ledger = p["enclave"] / "state" / "ledger.sqlite"
    for f in list(ledger.parent.glob("ledger.sqlite*")):
        f.unlink()
    rolled = _run(p, prefect_env_vars)
    assert rolled.returncode != 0 and "rollback" in rolled.stderr, rolled.stderr[-2000:]
    assert _ledger_runs(p) == 0


def _ledger_runs(p: dict) -> int:
    with Ledger(p["enclave"]) as ledger:
        return len(ledger.chain_runs())
