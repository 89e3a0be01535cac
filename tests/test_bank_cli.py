"""The bank's commands end to end: keygen -> enclave init -> seal -> (enclave) -> open."""

import json
import subprocess
import sys
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from aml.cli import main
from aml.core.crypto.container import read_header
from aml.core.crypto.keys import load_public
from aml.enclave.identity import load_enclave_keys, load_members, open_batch, seal_alerts
from aml.core.schema import ALERT_SCHEMA, TRANSACTION_SCHEMA


def transactions(n=4) -> pa.Table:
    ts = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    return pa.Table.from_pylist(
        [
            dict(txn_id=f"t{i}", timestamp=ts, src_bank="B01", src_account=f"A{i}", dst_bank="B02",
                 dst_account="C1", amount=100.0 + i, currency="USD", amount_received=100.0 + i,
                 receiving_currency="USD", payment_format="Wire", label=None)
            for i in range(n)
        ],
        schema=TRANSACTION_SCHEMA,
    )


def alerts(bank="B01", n=2) -> pa.Table:
    ts = datetime(2025, 1, 2, tzinfo=timezone.utc)
    return pa.Table.from_pylist(
        [
            dict(alert_id=f"al{i}", bank=bank, pattern="fan_out", score=0.5, accounts=["A1", "A2"],
                 txn_ids=["t1"], start=ts, end=ts, amount=10.0, institutions=2, hops=1,
                 explanation="an account paid many others")
            for i in range(n)
        ],
        schema=ALERT_SCHEMA,
    )


@pytest.fixture()
def world(tmp_path, monkeypatch):
    monkeypatch.setattr("aml.core.measure.measure_tree", lambda root: "ab" * 32)
    keys = tmp_path / "keys"
    for bank in ("B01", "B02"):
        assert main(["keygen", "--bank", bank, "--out", str(keys)]) == 0
    assert main(["enclave", "init", "--dir", str(tmp_path / "enc"), "--members", str(keys)]) == 0
    (tmp_path / "bank").mkdir()  # the banks' own folder: their pinned copy of the policy
    (tmp_path / "bank" / "policy.json").write_bytes((tmp_path / "enc" / "policy.json").read_bytes())
    batch = tmp_path / "b01.parquet"
    pq.write_table(transactions(), batch)
    return tmp_path


def policy_args(w, policy=None, simulated=True):
    return ["--attestation", str(w / "enc" / "attestation.json"), "--policy", str(policy or w / "bank" / "policy.json"),
            *(["--allow-simulated"] if simulated else [])]


def seal_args(w, bank="B01", *extra, policy=None, simulated=True):
    return ["seal", "--bank", bank, "--key", str(w / "keys" / f"{bank}.key"), *policy_args(w, policy, simulated),
            str(w / "b01.parquet"), "--out", str(w / "inbox"), *extra]


def open_args(w, out, *sealed, bank="B01", policy=None, simulated=True):
    return ["open", "--bank", bank, "--key", str(w / "keys" / f"{bank}.key"), *policy_args(w, policy, simulated),
            *map(str, sealed), "--out", str(out)]


def write_alert_file(w, bank="B01", n=2, sequence=1):
    data = seal_alerts(alerts(bank, n), bank, load_members(w / "enc")[bank], load_enclave_keys(w / "enc"),
                       run_id="run1", sequence=sequence, provenance={"run_id": "run1", "simulated": True})
    path = w / "outbox" / bank / f"{bank}-{sequence:08d}.amla"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_seal_then_enclave_opens(world, capsys):
    assert main(seal_args(world)) == 0
    assert "SIMULATED" in capsys.readouterr().err
    assert main(seal_args(world)) == 0
    files = sorted((world / "inbox").glob("*.amlb"))
    assert [f.name[:12] for f in files] == ["B01-00000001", "B01-00000002"]
    assert (world / "keys" / "B01.seq").read_text().strip() == "2"
    header = read_header(files[0])
    assert (header.kind, header.sender, header.recipient, header.row_count) == ("batch", "B01", "enclave", 4)
    assert header.batch_id in files[0].name
    got_header, table = open_batch(files[0], load_enclave_keys(world / "enc"), load_public(world / "keys" / "B01.pub"))
    assert got_header == header
    assert table.equals(transactions())


def test_seal_refuses_attestation_outside_policy(world, capsys):
    policy = world / "enc" / "policy.json"
    doc = json.loads(policy.read_text())
    doc["allowed_measurements"] = ["cd" * 32]
    pinned = world / "pinned.json"
    pinned.write_text(json.dumps(doc))
    assert main(seal_args(world, "B01", policy=pinned)) == 3
    err = capsys.readouterr().err
    assert "attestation" in err and "cd" * 32 in err
    assert not (world / "inbox").exists()


def test_seal_refuses_non_member(world, capsys):
    assert main(["keygen", "--bank", "B03", "--out", str(world / "keys")]) == 0
    assert main(seal_args(world, "B03")) == 3
    assert "not in the attested membership" in capsys.readouterr().err


def test_loose_key_permissions_exit_2(world, capsys):
    (world / "keys" / "B01.key").chmod(0o644)
    assert main(seal_args(world)) == 2
    assert "too open" in capsys.readouterr().err
    assert main(open_args(world, world / "a.jsonl", world / "x.amla")) == 2


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_open_alerts_all_formats(world, suffix, capsys):
    files = [write_alert_file(world, n=2, sequence=1), write_alert_file(world, n=1, sequence=2)]
    out = world / f"alerts{suffix}"
    assert main(open_args(world, out, *files)) == 0
    captured = capsys.readouterr()
    assert "wrote 3 alerts" in captured.out and "al0" not in captured.out
    if suffix == ".parquet":
        table = pq.read_table(out)
        assert table.num_rows == 3 and table.column("accounts").to_pylist()[0] == ["A1", "A2"]
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["alert_id"] for r in rows] == ["al0", "al1", "al0"]
        assert rows[0]["start"] == "2025-01-02T00:00:00Z" and rows[0]["txn_ids"] == ["t1"]
    else:
        table = pacsv.read_csv(out)
        assert table.num_rows == 3 and json.loads(table.column("accounts")[0].as_py()) == ["A1", "A2"]


def test_open_show_prints_alerts(world, capsys):
    f = write_alert_file(world)
    assert main(open_args(world, world / "a.jsonl", f) + ["--show"]) == 0
    assert "al0" in capsys.readouterr().out


def test_open_empty_alert_file(world):
    f = write_alert_file(world, n=0)
    out = world / "a.parquet"
    assert main(open_args(world, out, f)) == 0
    assert pq.read_table(out).num_rows == 0


def test_open_refuses_other_banks_file(world, capsys):
    f = write_alert_file(world, bank="B02")
    out = world / "a.jsonl"
    assert main(open_args(world, out, f, bank="B01")) == 3
    assert "not for 'B01'" in capsys.readouterr().err
    assert not out.exists()


def test_open_refuses_tampered_file_and_writes_nothing(world, capsys):
    good = write_alert_file(world, sequence=1)
    bad = write_alert_file(world, sequence=2)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    out = world / "a.jsonl"
    assert main(open_args(world, out, good, bad)) == 3
    assert "signature" in capsys.readouterr().err
    assert not out.exists() and not list(world.glob(".a.jsonl*"))


def test_open_bad_extension(world, capsys):
    f = write_alert_file(world)
    assert main(open_args(world, world / "alerts.xlsx", f)) == 2
    assert ".jsonl" in capsys.readouterr().err


def test_alert_files_are_padded(world):
    import struct

    from aml.core.crypto.container import table_to_parquet
    from aml.core.crypto.padding import padme

    for n in (0, 5, 17):
        data = write_alert_file(world, n=n, sequence=n + 1).read_bytes()
        (header_len,) = struct.unpack(">I", data[8:12])
        at = 12 + header_len + 2 + 80 + 32  # the payload_len field (docs/format.md)
        (payload_len,) = struct.unpack(">Q", data[at : at + 8])
        plain = 8 + len(table_to_parquet(alerts(n=n), ALERT_SCHEMA))
        assert payload_len == padme(plain) and payload_len >= plain


def test_bank_commands_do_not_import_prefect():
    code = (
        "import sys, aml.cli, aml.bank.keygen, aml.bank.seal, aml.bank.open, aml.core.crypto.container; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_refuses_alert_rows_for_another_bank(world, capsys):
    data = seal_alerts(alerts("B02", 1), "B01", load_members(world / "enc")["B01"], load_enclave_keys(world / "enc"),
                       run_id="run1", sequence=1, provenance={})
    path = world / "mixed.amla"
    path.write_bytes(data)
    assert main(open_args(world, world / "a.jsonl", path)) == 3
    assert "another bank" in capsys.readouterr().err


def test_explicit_sequence(world, capsys):
    assert main(seal_args(world, "B01", "--sequence", "7")) == 0
    assert (world / "keys" / "B01.seq").read_text().strip() == "7"
    assert main(seal_args(world, "B01", "--sequence", "3")) == 0
    assert "not above the last sealed 7" in capsys.readouterr().err
    assert (world / "keys" / "B01.seq").read_text().strip() == "7"
    assert main(seal_args(world)) == 0
    assert sorted(read_header(f).sequence for f in (world / "inbox").glob("*.amlb")) == [3, 7, 8]


def test_open_refuses_a_batch_file(world, capsys):
    assert main(seal_args(world)) == 0
    batch = next((world / "inbox").glob("*.amlb"))
    assert main(open_args(world, world / "a.jsonl", batch)) == 3
    assert "not an alerts file from the enclave (kind 'batch', sender 'B01')" in capsys.readouterr().err


def test_alert_header_hides_the_alert_count(world):
    from aml.core.crypto.container import read_header

    headers = [read_header(write_alert_file(world, n=n, sequence=n + 1)) for n in (0, 3, 12)]
    assert [h.row_count for h in headers] == [0, 0, 0]


# --- issue 14, finding 2: the bank's own pinned policy, never the operator's -----------------------
def test_seal_and_open_require_a_policy(world, capsys):
    argv = ["seal", "--bank", "B01", "--key", str(world / "keys" / "B01.key"), "--attestation",
            str(world / "enc" / "attestation.json"), "--allow-simulated", str(world / "b01.parquet"),
            "--out", str(world / "inbox")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--policy" in capsys.readouterr().err
    assert not (world / "inbox").exists()
    with pytest.raises(SystemExit):
        main(["open", "--bank", "B01", "--key", str(world / "keys" / "B01.key"), "--attestation",
              str(world / "enc" / "attestation.json"), str(write_alert_file(world)), "--out", str(world / "a.jsonl")])
    assert not (world / "a.jsonl").exists()


@pytest.mark.parametrize("how", ["same_file", "symlink_to_it", "copy_beside_it"])
def test_policy_in_the_attestations_folder_is_refused(world, capsys, how):
    operator_copy = world / "enc" / "policy.json"
    if how == "same_file":
        policy = operator_copy
    elif how == "symlink_to_it":  # a bank-local name that points into the operator's folder
        policy = world / "bank" / "link.json"
        policy.symlink_to(operator_copy)
    else:
        policy = world / "enc" / "bank-copy.json"
        policy.write_bytes(operator_copy.read_bytes())
    assert main(seal_args(world, policy=policy)) == 2
    err = capsys.readouterr().err
    assert "config" in err and "attestation's own folder" in err
    assert not (world / "inbox").exists()
    out = world / "a.jsonl"
    assert main(open_args(world, out, write_alert_file(world), policy=policy)) == 2
    assert "attestation's own folder" in capsys.readouterr().err and not out.exists()


def test_operator_reinitialised_enclave_is_refused_by_the_pinned_policy(world, capsys):
    """The review's scenario: the operator re-runs `aml enclave init`, publishing a new attestation
    and policy for its own keys; a bank with a pinned policy seals nothing to them."""
    assert main(["enclave", "init", "--dir", str(world / "enc"), "--members", str(world / "keys"), "--force"]) == 0
    assert main(seal_args(world)) == 3
    assert "attestation" in capsys.readouterr().err
    assert not (world / "inbox").exists()


def test_simulated_attestation_needs_allow_simulated(world, capsys):
    assert main(seal_args(world, simulated=False)) == 3
    err = capsys.readouterr().err
    assert "attestation" in err and "SIMULATED" in err and "--allow-simulated" in err
    assert not (world / "inbox").exists()
    out = world / "a.jsonl"
    assert main(open_args(world, out, write_alert_file(world), simulated=False)) == 3
    assert not out.exists()
    assert main(seal_args(world)) == 0
    assert "WARNING: SIMULATED" in capsys.readouterr().err


# --- issue 14, finding 10: old alert files handed over again are refused -------------------------
def test_older_alert_file_is_refused_after_a_newer_one(world, capsys):
    old, new = write_alert_file(world, n=1, sequence=3), write_alert_file(world, n=2, sequence=4)
    assert main(open_args(world, world / "new.jsonl", new)) == 0
    state = json.loads((world / "keys" / "B01.opened.json").read_text())
    assert [v["sequence"] for v in state["enclaves"].values()] == [4]
    assert main(open_args(world, world / "again.jsonl", new)) == 0  # the same file again: fine
    capsys.readouterr()
    out = world / "old.jsonl"
    assert main(open_args(world, out, old)) == 3
    err = capsys.readouterr().err
    assert "stale_alerts" in err and "run sequence 3" in err and "run 4" in err
    assert not out.exists()
    assert main(open_args(world, out, old) + ["--allow-older"]) == 0
    assert "WARNING" in capsys.readouterr().err
    state = json.loads((world / "keys" / "B01.opened.json").read_text())
    assert [v["sequence"] for v in state["enclaves"].values()] == [4]  # never lowered


def test_a_backlog_opened_together_is_fine_and_a_refused_open_records_nothing(world):
    files = [write_alert_file(world, n=1, sequence=s) for s in (1, 2, 3)]
    bad = world / "outbox" / "B01" / "bad.amla"
    data = bytearray(write_alert_file(world, n=1, sequence=9).read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    assert main(open_args(world, world / "x.jsonl", files[0], bad)) == 3
    assert not (world / "keys" / "B01.opened.json").exists()
    assert main(open_args(world, world / "all.jsonl", *reversed(files))) == 0
    assert len((world / "all.jsonl").read_text().splitlines()) == 3


def test_open_notes_when_alerts_do_not_cover_the_latest_sealed_batch(world, capsys):
    assert main(seal_args(world)) == 0
    latest = json.loads((world / "keys" / "B01.sealed.json").read_text())
    assert latest["sequence"] == 1 and latest["batch_id"] in next((world / "inbox").glob("*.amlb")).name
    members, keys = load_members(world / "enc"), load_enclave_keys(world / "enc")
    for name, batches in (("covers", [latest["batch_id"], "other"]), ("misses", ["older-batch"])):
        data = seal_alerts(alerts("B01", 1), "B01", members["B01"], keys, run_id="r" + name, sequence=5,
                           provenance={"run_id": "r" + name, "batches": batches})
        (world / f"{name}.amla").write_bytes(data)
        capsys.readouterr()
        assert main(open_args(world, world / f"{name}.jsonl", world / f"{name}.amla")) == 0
        err = capsys.readouterr().err
        assert ("do not cover your latest sealed batch" in err) == (name == "misses"), err


def test_property_open_refuses_exactly_the_files_older_than_the_newest_opened(world):
    """Any order of opens: a file opens iff its run is not older than every run opened before,
    and the remembered run is the highest opened so far (never lowered)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from aml.bank.open import open_alerts
    from aml.core.errors import StaleAlertsError

    files = {s: write_alert_file(world, n=1, sequence=s) for s in range(1, 7)}
    state = world / "keys" / "B01.opened.json"
    policy = world / "bank" / "policy.json"

    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    def check(order):
        state.unlink(missing_ok=True)
        newest = 0
        for s in order:
            try:
                open_alerts("B01", world / "keys" / "B01.key", world / "enc" / "attestation.json", [files[s]],
                            world / "out.jsonl", policy=policy, allow_simulated=True)
                opened = True
            except StaleAlertsError:
                opened = False
            assert opened == (s >= newest)
            newest = max(newest, s)
            assert json.loads(state.read_text())["enclaves"].popitem()[1]["sequence"] == newest

    check()


def test_a_damaged_opened_state_file_is_a_clear_error(world, capsys):
    (world / "keys" / "B01.opened.json").write_text('{"format": "aml-opened/1", "enclaves": {"k": {"sequence": "9"}}}')
    assert main(open_args(world, world / "a.jsonl", write_alert_file(world))) == 2
    assert "B01.opened.json" in capsys.readouterr().err and not (world / "a.jsonl").exists()
