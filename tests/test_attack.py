"""The adversarial suite: its case generators (fast) and one `--quick` run of the whole
catalogue through the real CLI and flow (slow)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aml.core.crypto.container import ENCLAVE, Header, read_header, seal_bytes, verify_sender
from aml.core.crypto.keys import BankKeyPair

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `attacks/` is a tool beside the package, not installed with it
    sys.path.insert(0, str(ROOT))

from attacks import cases as C  # noqa: E402
from attacks.harness import Outcome  # noqa: E402
from attacks.payloads import malformed_payloads  # noqa: E402

SENDER = BankKeyPair.generate("B01")
ENCLAVE_KEYS = BankKeyPair.generate()
PAYLOAD = bytes(range(256)) * 20  # 5 KiB: five chunks of 1 KiB and a short one
VERIFICATION_CODES = {"format", "truncated", "trailing_data", "bad_signature", "tampered", "not_a_member"}


def sealed(chunk_size: int = 1024, **overrides) -> bytes:
    fields = dict(kind="batch", sender="B01", recipient=ENCLAVE, batch_id="b0123", sequence=7, created=1,
                  expires=4_000_000_000, schema_version=1, row_count=0, recipient_key_id=ENCLAVE_KEYS.key_id,
                  sender_key_id=SENDER.key_id, chunk_size=chunk_size)
    fields.update(overrides)
    return seal_bytes(PAYLOAD, Header(**fields), ENCLAVE_KEYS.public, SENDER)


FILE = sealed()


def outcome(data: bytes) -> str:
    """The container checks only (the payload is not Parquet, so decryption is the last step)."""
    from aml.core.crypto.container import open_bytes
    from aml.core.errors import AmlError

    try:
        header = read_header(data)
        if header.sender != "B01":
            return "not_a_member"
        verify_sender(data, SENDER.public, expected_recipient=ENCLAVE)
        open_bytes(data, ENCLAVE_KEYS, SENDER.public, ENCLAVE)
        return "accepted"
    except AmlError as exc:
        return exc.code


# --- the generators -----------------------------------------------------------------------------

def test_layout_accounts_for_every_byte():
    lay = C.layout(FILE)
    assert lay.signature[1] == len(FILE)
    assert len(lay.chunks) == 6
    assert lay.chunks[0][0] == lay.payload_len_at + 8
    assert all(a[1] == b[0] for a, b in zip(lay.chunks, lay.chunks[1:]))
    assert lay.wrapped[1] - lay.wrapped[0] == C.WRAPPED_LEN


def test_flip_bit_changes_exactly_one_bit():
    out = C.flip_bit(FILE, 100, 3)
    assert len(out) == len(FILE) and out != FILE
    diff = [i for i in range(len(FILE)) if out[i] != FILE[i]]
    assert diff == [100] and out[100] ^ FILE[100] == 8


def test_truncations_are_shorter_prefixes_and_expect_the_right_code():
    cases = C.truncations(FILE, random.Random(1), 10)
    assert len(cases) >= 10
    for case in cases:
        assert len(case.data) < len(FILE) and FILE.startswith(case.data)
        assert case.expected == ({"format"} if len(case.data) < C.MAGIC_LEN else {"truncated"})
        assert outcome(case.data) in case.expected


def test_header_field_flips_cover_every_scalar_field_and_keep_json_valid():
    cases = C.header_field_flips(FILE, {"B01"})
    fields = {c.name.split(":", 1)[1] for c in cases}
    doc = C.header_doc(FILE)
    assert fields == {k for k, v in doc.items() if not isinstance(v, dict)}
    for case in cases:
        assert C.header_doc(case.data) != doc  # still parses, but says something else
        assert outcome(case.data) in case.expected, case.note


def test_chunk_reorders_move_chunks_and_resigning_makes_the_signature_valid_again():
    cases = C.chunk_reorders(FILE)
    assert {c.name for c in cases} >= {"swap_0_1", "drop_last"}
    swap = next(c for c in cases if c.name == "swap_0_1")
    assert len(swap.data) == len(FILE) and swap.data != FILE
    assert sorted(swap.data) == sorted(FILE)  # same bytes, other order
    resigned = C.chunk_reorders(FILE, signer=SENDER)
    for case in resigned:
        verify_sender(case.data, SENDER.public, expected_recipient=ENCLAVE)  # the signature is good...
        assert outcome(case.data) == "tampered"  # ...and the STREAM construction still catches it


def test_extensions_are_longer_and_rejected_as_trailing_data():
    for case in C.extensions(FILE, random.Random(2)):
        assert case.data.startswith(FILE) and len(case.data) > len(FILE)
        assert outcome(case.data) == "trailing_data"


def test_header_swap_resigned_is_caught_by_the_header_bound_wrapped_key():
    other = sealed(batch_id="b9999", sequence=8)
    cases = C.header_swaps(FILE, other, signer=SENDER)
    assert [outcome(c.data) for c in cases] == ["bad_signature", "tampered"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(min_value=0, max_value=len(FILE) - 1), bit=st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_is_rejected_never_accepted(pos, bit):
    got = outcome(C.flip_bit(FILE, pos, bit))
    assert got in VERIFICATION_CODES


def test_malformed_payloads_are_deterministic_and_distinct():
    import pyarrow as pa

    from aml.tools.synth import generate

    table, _ = generate(banks=3, accounts=200, days=7, seed=3)
    table = table.filter(pa.compute.equal(table["src_bank"], "B01")).slice(0, 40)
    a = malformed_payloads(table, "B01", ["B02", "B03"], random.Random(5), "CANARYX")
    b = malformed_payloads(table, "B01", ["B02", "B03"], random.Random(5), "CANARYX")
    assert [p.data for p in a] == [p.data for p in b]
    assert len({(p.data, p.row_count, p.kind) for p in a}) == len(a)  # no two cases alike
    assert {p.name for p in a} >= {"random_bytes", "csv_not_parquet", "wrong_type_amount", "missing_columns",
                                   "null_flood_required", "extreme_values", "huge_strings", "foreign_rows"}


def test_outcome_matching_checks_row_counts_when_accepted():
    assert Outcome("accepted", {"foreign_row": 2}).matches(frozenset({"accepted"}), {"foreign_row": 2})
    assert not Outcome("accepted", {}).matches(frozenset({"accepted"}), {"foreign_row": 2})
    assert not Outcome("format").matches(frozenset({"accepted"}))


def test_leak_scan_finds_canaries_and_plaintext_parquet_but_not_in_the_banks_own_files(tmp_path):
    from attacks.flowrun import leak_scan

    home, work = tmp_path / "prefect_home", tmp_path / "work"
    (home / "storage").mkdir(parents=True)
    (work / "banks").mkdir(parents=True)
    (work / "tmp").mkdir()
    (home / "prefect.db").write_bytes(b"\x00row: CANARY1234 paid\x00")
    (work / "banks" / "night0.csv").write_text("CANARY1234,CANARY5678\n")  # a bank's own plaintext
    (work / "tmp" / "spill.bin").write_bytes(b"PAR1" + bytes(20) + b"PAR1")
    (work / "clean.txt").write_text("nothing here")
    leaks = leak_scan(work, home, ["CANARY1234", "CANARY5678"], lambda *a, **k: None)
    assert len(leaks) == 2
    assert any("prefect.db" in x and "canary" in x for x in leaks)
    assert any("spill.bin" in x and "Parquet" in x for x in leaks)


# --- the whole suite, quick ----------------------------------------------------------------------

@pytest.mark.slow
def test_attack_suite_quick(tmp_path, prefect_env_vars):
    """Every attack class is rejected with the right code, honest banks still get their alerts,
    no batch is lost or double counted, and no canary reaches Prefect's home or the temp dir."""
    report = tmp_path / "attack.json"
    env = dict(os.environ, **prefect_env_vars)
    proc = subprocess.run(
        [sys.executable, "-m", "attacks.run", "--quick", "--json", str(report), "--workdir", str(tmp_path / "w")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(report.read_text())
    ran = [c for c in result["classes"] if c["not_run"] is None]
    not_run = [c for c in result["classes"] if c["not_run"]]
    assert ran, proc.stdout[-3000:]
    failed = [c for c in ran if not c["ok"]]
    assert not failed, json.dumps(failed, indent=1) + "\n" + proc.stdout[-3000:]
    assert result["lost_batches"] == 0
    assert result["leaks"] == []
    assert {"bitflip_header", "truncation", "forged_signature", "key_file", "malformed_payload"} <= {
        c["class"] for c in ran}
    if not_run:
        pytest.skip("; ".join(f"{c['class']}: {c['not_run']}" for c in not_run))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert {"crash_recovery", "concurrent_runs", "replay", "signed_junk_rows"} <= {
        c["class"] for c in ran if c["level"] == "flow"}


def test_alert_check_catches_foreign_figures_and_passes_own_ones():
    """The [alert_foreign_details] checker: an alert built from own payments passes; one that
    states another bank's amount, share, time or id, or the pattern's window, does not."""
    import datetime as dt

    from attacks.alert_leaks import foreign_details

    t0 = dt.datetime(2026, 1, 5, 9, tzinfo=dt.timezone.utc)
    own = {"T1": dict(txn_id="T1", timestamp=t0, src_bank="B01", src_account="A1", dst_bank="B02",
                      dst_account="X9", amount=5000.0, currency="USD")}
    good = dict(alert_id="a" * 20, bank="B01", pattern="pass_through", score=0.85, accounts=["A1"],
                txn_ids=["T1"], start=t0, end=t0, amount=5000.0, institutions=2, hops=2,
                explanation="Account ext-0a1b2c received funds and passed most of them on shortly "
                            "afterwards, involving 2 institutions; your payment in it: 5,000 USD.")
    args = ({"T7"}, {"X9"}, {"B02"}, {"USD": 1.0}, 10_000.0)
    assert foreign_details(good, own, *args) == []
    for bad in (dict(explanation=good["explanation"] + " It forwarded 98% (4,900 USD)."),
                dict(explanation=good["explanation"] + " Then X9 paid on."),
                dict(explanation=good["explanation"] + " Last seen 2026-01-06 at 11:30."),
                dict(txn_ids=["T1", "T7"]), dict(amount=9900.0),
                dict(end=t0 + dt.timedelta(hours=3)), dict(score=0.8731)):
        assert foreign_details({**good, **bad}, own, *args), bad
