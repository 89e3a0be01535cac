"""Leak test: transaction data must never reach Prefect (database, logs, storage, artifacts),
the system temp directory, or anything the operator sees, whatever the run does.

Every account id and txn id carries a canary string and some amounts are a canary value; the
data goes through a successful run, a run with a tampered batch, a killed run and a run that
fails inside the enclave. Then the whole PREFECT_HOME and every file created in the temp
directory during the test (except the banks' own plaintext inputs and opened alerts) are
searched byte by byte for the canaries.
"""

from __future__ import annotations

import secrets
import struct
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import aml_cli, bank_policy_args, build_consortium, canary_hits

pytestmark = pytest.mark.slow

# Unique per test session, so a concurrent run of this test elsewhere on the machine (its
# plaintext lands in the same temp directory) cannot be mistaken for a leak.
_RUN = secrets.token_hex(4).upper()
ACCOUNT_CANARY = f"QZXCANARYACCT{_RUN}"
TXN_CANARY = f"QZXCANARYTXN{_RUN}"
AMOUNT_CANARY = round(31337 + (1 + int(_RUN, 16) % 9_999) / 10_000, 4)  # like 31337.1337, unique


def _canaries() -> list[bytes]:
    out = []
    for text in (ACCOUNT_CANARY, TXN_CANARY, repr(AMOUNT_CANARY)):
        out += [text.encode(), text.encode("utf-16-le"), text.encode("utf-16-be")]
    out += [struct.pack("<d", AMOUNT_CANARY), struct.pack(">d", AMOUNT_CANARY)]
    return out


def _with_canaries(table: pa.Table) -> pa.Table:
    def prefixed(name: str, canary: str) -> pa.Array:
        return pc.binary_join_element_wise(canary, table.column(name), "-")

    for name, canary in (("src_account", ACCOUNT_CANARY), ("dst_account", ACCOUNT_CANARY), ("txn_id", TXN_CANARY)):
        table = table.set_column(table.schema.get_field_index(name), name, prefixed(name, canary))
    amount = table.column("amount").to_numpy().copy()
    amount[::50] = AMOUNT_CANARY  # a few payments of exactly the canary amount
    return table.set_column(table.schema.get_field_index("amount"), "amount", pa.array(amount))


def _files(root: Path, since: float | None, skip: list[Path]):
    for path in root.rglob("*"):
        try:
            if any(path.is_relative_to(s) for s in skip) or not path.is_file() or path.is_symlink():
                continue
            st = path.stat()
            if (since is None or st.st_mtime >= since) and st.st_size <= 64 << 20:
                yield path
        except OSError:
            continue


def _find_canaries(paths) -> list[str]:
    hits = []
    canaries = _canaries()
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits += [f"{path}: {c!r}" for c in canary_hits(data, canaries)]
    return hits


def test_no_transaction_data_leaves_the_enclave(tmp_path, small_table, prefect_server):
    started = time.time() - 1
    env = {"PREFECT_API_URL": prefect_server[0], "PREFECT_HOME": str(prefect_server[1])}
    p = build_consortium(_with_canaries(small_table), tmp_path)
    run = ["run", "--enclave", p["enclave"], "--inbox", p["inbox"], "--outbox", p["outbox"]]
    outputs = []

    ok = aml_cli(*run, env=env)  # 1. a successful run
    assert ok.returncode == 0, ok.stderr[-3000:]
    outputs.append(ok)

    def seal_again(bank: str) -> Path:
        r = aml_cli("seal", "--bank", bank, "--key", p["keys"] / f"{bank}.key", *bank_policy_args(p),
                    p["banks"] / f"{bank}.parquet", "--out", p["inbox"])
        assert r.returncode == 0, r.stderr
        return Path(r.stdout.split()[-1])

    seal_again("B01")  # 2. a run with one tampered batch
    bad = seal_again("B02")
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0x40
    bad.write_bytes(bytes(data))
    tampered = aml_cli(*run, env=env)
    assert tampered.returncode == 0 and "1 rejected" in tampered.stdout, tampered.stderr[-3000:]
    outputs.append(tampered)

    seal_again("B03")  # 3. a run killed in the middle, then its rerun
    killed = aml_cli(*run, env={**env, "AML_CRASH_AT": "detected"})
    assert killed.returncode == 137
    outputs.append(killed)
    rerun = aml_cli(*run, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    outputs.append(rerun)

    seal_again("B01")  # 4. a run that fails inside the enclave (its key is unreadable)
    key = p["enclave"] / "keys" / "enclave.key"
    key.rename(key.with_suffix(".away"))
    failed = aml_cli(*run, env=env)
    key.with_suffix(".away").rename(key)
    assert failed.returncode == 4 and "key_file" in failed.stderr, failed.stderr[-3000:]
    outputs.append(failed)

    assert list((p["enclave"] / "work").iterdir()) == []
    time.sleep(2)  # let the server write what the runs sent it
    bank_side = [p["banks"], p["alerts"]]  # the banks' own plaintext: allowed to hold the data
    searched = list(_files(Path(prefect_server[1]), None, []))
    searched += list(_files(Path(tempfile.gettempdir()), started, bank_side + [Path(prefect_server[1])]))
    assert any(f.name.startswith("prefect.db") for f in searched)
    assert any(f.suffix == ".amla" for f in searched) and any(f.suffix == ".aes" for f in searched)
    assert _find_canaries(searched) == []
    for out in outputs:  # and nothing in what the operator's terminal shows
        assert ACCOUNT_CANARY not in out.stdout + out.stderr and TXN_CANARY not in out.stdout + out.stderr


def test_the_canary_search_would_find_a_leak(tmp_path, small_table):
    """The search itself works: the banks' plaintext input does contain the canaries."""
    import pyarrow.parquet as pq

    pq.write_table(_with_canaries(small_table), tmp_path / "plain.parquet", compression="none")
    (tmp_path / "log.txt").write_text(f"oops {ACCOUNT_CANARY}-A1".encode("utf-16-le").decode("latin-1"))
    import base64

    (tmp_path / "stored.txt").write_bytes(base64.b64encode(b"pickled " + TXN_CANARY.encode() + b"-T1 etc"))
    hits = _find_canaries([tmp_path / n for n in ("plain.parquet", "log.txt", "stored.txt")])
    assert all(any(n in h for h in hits) for n in ("plain.parquet", "log.txt", "stored.txt"))
