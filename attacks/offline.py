"""Attack classes that need no flow run: container-level (every mutation through the checks the
enclave's tasks use) and bank-level (the real `aml seal` / `aml open` commands)."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from aml.core.crypto.container import check_sequence, read_header, table_to_parquet
from aml.core.crypto.keys import BankKeyPair
from aml.core.errors import AmlError
from aml.core.schema import TRANSACTION_SCHEMA

from attacks import cases as C
from attacks.harness import ClassResult, Consortium, Outcome, check_file, cli, cli_error_code
from attacks.payloads import malformed_payloads

SMALL_CHUNK = 1024  # so a small batch spans several chunks and chunk attacks have targets


def container_classes(con: Consortium, base_table, stale_file: bytes, rng: random.Random,
                      quick: bool, canary: str) -> list[ClassResult]:
    """Every container-level class; `base_table` is one bank's genuine batch."""
    members = con.members()
    keys = con.enclave_keys()
    victim, thief = con.banks[0], con.banks[1]
    payload = table_to_parquet(base_table, TRANSACTION_SCHEMA)
    rows = base_table.num_rows
    seq = iter(range(10_000, 1_000_000))

    def fresh(chunk_size: int | None = SMALL_CHUNK) -> bytes:
        return con.craft(victim, next(seq), payload, rows, chunk_size=chunk_size)[1]

    def check(data: bytes) -> Outcome:
        return check_file(data, members, keys)

    n = 3 if quick else 25
    results: dict[str, ClassResult] = {}

    def run(case_list, cls: str | None = None) -> None:
        for case in case_list:
            name = cls or case.cls
            res = results.setdefault(name, ClassResult(name, "container"))
            got = check(case.data)
            res.record(case.name, got.code, case.expected, got.code in case.expected)

    # a genuine file must pass, or every rejection below means nothing
    base = fresh()
    sanity = ClassResult("genuine_batch_accepted", "container")
    got = check(base)
    sanity.record("genuine", got.code, {"accepted"}, got.code == "accepted")
    results[sanity.cls] = sanity

    pair = con.pair(victim)
    run(C.framing_flips(base))
    run(C.header_field_flips(base, set(members)))
    run(C.header_field_flips(fresh(None), set(members)))  # default chunk size: one chunk
    run(C.header_random_flips(base, rng, 4 * n))
    run(C.region_flips(base, rng, n))
    run(C.region_flips(base, rng, n, signer=pair))
    run(C.truncations(base, rng, 2 * n))
    run(C.extensions(base, rng))
    run(C.chunk_reorders(base))
    run(C.chunk_reorders(base, signer=pair))
    run(C.header_swaps(base, fresh(), signer=pair))

    # forged signatures: a stranger's key, another member's key, a signature lifted from another file
    forged = ClassResult("forged_signature", "container")
    stranger = BankKeyPair.generate(victim)
    for name, signer in (("stranger_key", stranger), ("other_member_key", con.pair(thief))):
        data = con.craft(victim, next(seq), payload, rows, signer=signer, sender_key_id=pair.key_id)[1]
        got = check(data)
        forged.record(name, got.code, {"bad_signature"}, got.code == "bad_signature")
    a, b = fresh(), fresh()
    lifted = a[: C.layout(a).signature[0]] + b[C.layout(b).signature[0] :]
    got = check(lifted)
    forged.record("signature_from_other_file", got.code, {"bad_signature"}, got.code == "bad_signature")
    results[forged.cls] = forged

    # wrong recipient: addressed to a bank, or sealed to a bank's key while claiming the enclave
    wrong = ClassResult("wrong_recipient", "container")
    data = con.craft(thief, next(seq), payload, rows, recipient=victim)[1]
    got = check(data)
    wrong.record("addressed_to_bank", got.code, {"wrong_recipient"}, got.code == "wrong_recipient")
    data = con.craft(thief, next(seq), payload, rows, recipient_key=con.pair(victim).public)[1]
    got = check(data)
    wrong.record("sealed_to_bank_key", got.code, {"wrong_recipient", "tampered"},
                 got.code in {"wrong_recipient", "tampered"})
    got = check(stale_file)
    wrong.record("stale_enclave_key", got.code, {"wrong_recipient"}, got.code == "wrong_recipient")
    results[wrong.cls] = wrong

    # expiry
    exp = ClassResult("expired", "container")
    data = con.craft(victim, next(seq), payload, rows, expires_in=-60)[1]
    got = check(data)
    exp.record("expired_a_minute_ago", got.code, {"expired"}, got.code == "expired")
    data = fresh()
    later = read_header(data).expires + 1
    got = check_file(data, members, keys, now=later)
    exp.record("opened_after_expiry", got.code, {"expired"}, got.code == "expired")
    results[exp.cls] = exp

    # replay and rollback against the sequence rule the ledger applies
    rep = ClassResult("replay_rollback", "container")
    accepted = read_header(base)
    for name, header in (("same_file_again", accepted),
                         ("lower_sequence", read_header(con.craft(victim, 5, payload, rows)[1]))):
        try:
            check_sequence(header, accepted.sequence)
            code = "accepted"
        except AmlError as exc:
            code = exc.code
        rep.record(name, code, {"replay"}, code == "replay")
    results[rep.cls] = rep

    # malformed payloads a member signs itself
    mal = ClassResult("malformed_payload", "container")
    for p in malformed_payloads(base_table, victim, [b for b in con.banks if b != victim], rng, canary):
        data = con.craft(victim, next(seq), p.data, p.row_count, kind=p.kind)[1]
        got = check(data)
        ok = got.matches(p.expected, p.rows if "accepted" in p.expected else None)
        mal.record(p.name, f"{got.code} {got.rows or ''}".strip(), p.expected, ok,
                   f"rows {p.rows}" if p.rows else "")
    results[mal.cls] = mal
    return list(results.values())


def bank_classes(con: Consortium, batch_file: Path, stale_dir: Path, work: Path) -> list[ClassResult]:
    """The bank-side commands refusing unsafe inputs: key files, attestations, alert files."""
    out: list[ClassResult] = []
    bank, other = con.banks[0], con.banks[1]
    inbox = work / "bank_inbox"

    def expect(res: ClassResult, name: str, argv, code: str, exit_code: int) -> None:
        rc, _, err = cli(*argv)
        got = cli_error_code(err) if rc else "accepted"
        res.record(name, f"{got} (exit {rc})", {f"{code} (exit {exit_code})"}, got == code and rc == exit_code)

    def seal_args(key: Path, att: Path, policy: Path, who: str = bank):
        return ["seal", "--bank", who, "--key", key, *con.bank_args(att, policy),
                "--sequence", "999", batch_file, "--out", inbox]

    # loose key permissions: seal refuses (exit 2, key_file)
    kf = ClassResult("key_file", "bank")
    for mode in (0o644, 0o640, 0o604, 0o666):
        loose = work / f"loose_{mode:o}" / f"{bank}.key"
        loose.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(con.key_path(bank), loose)
        os.chmod(loose, mode)
        expect(kf, f"mode_{mode:04o}", seal_args(loose, con.attestation, con.bank_policy), "key_file", 2)
    expect(kf, "other_banks_key", seal_args(con.key_path(other), con.attestation, con.bank_policy), "key_file", 2)
    expect(kf, "missing_key", seal_args(work / "nope.key", con.attestation, con.bank_policy), "key_file", 2)
    out.append(kf)

    # attestation: stale (enclave re-initialised), altered, or outside the pinned policy
    att = ClassResult("attestation", "bank")
    expect(att, "stale_attestation_new_policy",
           seal_args(con.key_path(bank), stale_dir / "attestation.json", con.bank_policy), "attestation", 3)
    doc = json.loads(con.attestation.read_text())
    key_hex = doc["statement"]["enclave_x25519"]
    doc["statement"]["enclave_x25519"] = ("0" if key_hex[0] != "0" else "1") + key_hex[1:]
    swapped = work / "swapped_key_attestation.json"
    swapped.write_text(json.dumps(doc))
    expect(att, "enclave_key_swapped", seal_args(con.key_path(bank), swapped, con.bank_policy), "attestation", 3)
    policy = json.loads(con.policy.read_text())
    policy["allowed_measurements"] = ["00" * 32]
    other_policy = work / "other_measurement_policy.json"
    other_policy.write_text(json.dumps(policy))
    expect(att, "measurement_not_pinned", seal_args(con.key_path(bank), con.attestation, other_policy),
           "attestation", 3)
    out.append(att)

    # alert files: opened by the wrong bank, altered, cut short
    from aml.enclave.identity import seal_alerts
    import pyarrow as pa

    from aml.core.schema import ALERT_SCHEMA

    alerts = pa.Table.from_pylist([], schema=ALERT_SCHEMA)
    keys = con.enclave_keys()
    sealed = seal_alerts(alerts, bank, con.pair(bank).public, keys, "attackrun", 1, {})
    files = work / "alert_files"
    files.mkdir(parents=True, exist_ok=True)
    variants = {
        "genuine_other_bank": (sealed, other, "wrong_recipient", 3),
        "bit_flip": (C.flip_bit(sealed, C.layout(sealed).chunks[0][0]), bank, "bad_signature", 3),
        "truncated": (sealed[:-10], bank, "truncated", 3),
        "appended": (sealed + b"\x00", bank, "trailing_data", 3),
    }
    al = ClassResult("alert_file", "bank")
    for name, (data, who, code, exit_code) in variants.items():
        path = files / f"{name}.amla"
        path.write_bytes(data)
        expect(al, name, ["open", "--bank", who, "--key", con.key_path(who), *con.bank_args(),
                          path, "--out", work / f"{name}.jsonl"], code, exit_code)
    (files / "genuine.amla").write_bytes(sealed)
    rc, _, err = cli("open", "--bank", bank, "--key", con.key_path(bank), *con.bank_args(),
                     files / "genuine.amla", "--out", work / "genuine.jsonl")
    al.record("genuine_own_bank", "accepted" if rc == 0 else cli_error_code(err), {"accepted"}, rc == 0)
    out.append(al)
    out.append(_policy_class(con, work, seal_args, expect))
    out.append(_hyperprotect_signer_class(con, work, seal_args, expect))
    out.append(_alert_replay_class(con, work, bank))
    return out


def _policy_class(con: Consortium, work: Path, seal_args, expect) -> ClassResult:
    """Issue 14, finding 2: the operator's policy, its own re-initialised enclave, a simulated
    attestation: `aml seal` seals nothing unless the bank's own pinned policy and flags allow it."""
    bank = con.banks[0]
    res = ClassResult("operator_policy", "bank")
    key = con.key_path(bank)
    expect(res, "operator_copy_beside_attestation", seal_args(key, con.attestation, con.policy), "config", 2)
    link = work / "policy_link" / "policy.json"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(con.policy)
    expect(res, "symlink_to_operator_copy", seal_args(key, con.attestation, link), "config", 2)
    no_flag = [a for a in seal_args(key, con.attestation, con.bank_policy) if a != "--allow-simulated"]
    expect(res, "simulated_without_allow_simulated", no_flag, "attestation", 3)
    rc, _, err = cli(*[a for a in seal_args(key, con.attestation, con.bank_policy) if a != con.bank_policy
                       and a != "--policy"])
    res.record("no_policy_flag", f"exit {rc}", {"exit 2"}, rc == 2 and "--policy" in err)
    # The operator starts its own enclave and publishes attestation + policy for it, side by side.
    rogue = work / "rogue_enclave"
    shutil.rmtree(rogue, ignore_errors=True)
    rc, _, err = cli("enclave", "init", "--dir", rogue, "--members", con.keys_dir)
    if rc:
        raise RuntimeError(f"enclave init failed: {err.strip()}")
    expect(res, "operator_enclave_and_policy", seal_args(key, rogue / "attestation.json", rogue / "policy.json"),
           "config", 2)
    expect(res, "operator_enclave_bank_policy", seal_args(key, rogue / "attestation.json", con.bank_policy),
           "attestation", 3)
    return res


def _alert_replay_class(con: Consortium, work: Path, bank: str) -> ClassResult:
    """Issue 14, finding 10: an alert file older than one the bank already opened is refused;
    the same file again opens (idempotent)."""
    import pyarrow as pa

    from aml.enclave.identity import seal_alerts
    from aml.core.schema import ALERT_SCHEMA

    res = ClassResult("alert_replay", "bank")
    keys, public = con.enclave_keys(), con.pair(bank).public
    empty = pa.Table.from_pylist([], schema=ALERT_SCHEMA)
    files = work / "replayed_alerts"
    files.mkdir(parents=True, exist_ok=True)
    for run in (1000, 1001):
        (files / f"run{run}.amla").write_bytes(seal_alerts(empty, bank, public, keys, f"attackrun{run}", run, {}))

    def open_(name: str, *extra: str) -> tuple[int, str | None]:
        rc, _, err = cli("open", "--bank", bank, "--key", con.key_path(bank), *con.bank_args(), *extra,
                         files / f"{name}.amla", "--out", work / f"replay-{name}.jsonl")
        return rc, cli_error_code(err) if rc else "accepted"

    for case, name, want in (("newer_run", "run1001", "accepted"), ("same_file_again", "run1001", "accepted"),
                             ("older_run_replayed", "run1000", "stale_alerts")):
        rc, got = open_(name)
        res.record(case, str(got), {want}, got == want)
    return res


def stale_batch(con: Consortium, batch_file: Path, work: Path, bank: str, sequence: int) -> tuple[Path, Path]:
    """Seal a batch to the current enclave, keep its attestation, then re-initialise the enclave
    (rotating its keys). Returns (the stale sealed file, the directory with the old attestation)."""
    stale_dir = work / "stale_attestation"
    stale_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(con.attestation, stale_dir / "attestation.json")
    sealed = con.seal_cli(bank, batch_file, work / "stale_sealed", sequence,
                          attestation=stale_dir / "attestation.json", policy=con.bank_policy)
    time.sleep(0.01)
    con.init_enclave(force=True)
    return sealed, stale_dir


def _hyperprotect_signer_class(con: Consortium, work: Path, seal_args, expect) -> ClassResult:
    """Issue 14, finding 8: a Hyper Protect attestation whose record is signed by some other
    certificate under the pinned root (a TLS server certificate, a CA, the root itself) is
    refused by `aml seal`; the genuine signer is accepted."""
    import datetime as dt
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from aml.core.crypto.hyperprotect import build_document

    now = dt.datetime.now(dt.timezone.utc)
    flags = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                           "encipher_only", "decipher_only"), False)

    def cert(key, cn, issuer_key=None, issuer=None, ca=False, signer_usage=True, extra=()):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(digital_signature=signer_usage, key_cert_sign=not signer_usage,
                                          crl_sign=not signer_usage, **flags), critical=True))
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(issuer_key or key, hashes.SHA256())

    def pem(c) -> str:
        return c.public_bytes(serialization.Encoding.PEM).decode()

    new_key = lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)  # noqa: E731
    root_key, inter_key, signer_key, rogue_key = new_key(), new_key(), new_key(), new_key()
    root = cert(root_key, "Attack IBM Root", ca=True, signer_usage=False)
    inter = cert(inter_key, "Attack IBM Intermediate", root_key, root, ca=True, signer_usage=False)
    signer = cert(signer_key, "Attack HPCR attestation", inter_key, inter)
    att_key = Ed25519PrivateKey.generate()
    workload, env = hashlib.sha256(b"workload").hexdigest(), hashlib.sha256(b"env").hexdigest()
    record = f"26.1.0\n{workload} contract:workload\n{env} contract:env\n"
    statement = {k: v for k, v in json.loads(con.attestation.read_text())["statement"].items()
                 if k not in ("simulated", "warning")}
    policy = dict(json.loads(con.bank_policy.read_text()), verifier="hyper-protect", trust={
        "root_ca_pem": pem(root), "signer_subject": "CN=Attack HPCR attestation",
        "attestation_public_key": att_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                    serialization.PublicFormat.Raw).hex(),
        "expected_checksums": {"contract:workload": workload, "contract:env": env}})
    folder = work / "hyperprotect"
    (folder / "bank").mkdir(parents=True, exist_ok=True)
    (folder / "bank" / "policy.json").write_text(json.dumps(policy))

    san = x509.SubjectAlternativeName([x509.DNSName("www.attacker.example")])
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    cases = {
        "genuine_signer": (signer, signer_key, [inter], "accepted"),
        "tls_server_cert_under_root": (cert(rogue_key, "www.attacker.example", inter_key, inter, extra=(san, eku)),
                                       rogue_key, [inter], "attestation"),
        "pinned_subject_but_keycertsign": (cert(rogue_key, "Attack HPCR attestation", inter_key, inter,
                                                signer_usage=False), rogue_key, [inter], "attestation"),
        "pinned_subject_but_a_ca": (cert(rogue_key, "Attack HPCR attestation", inter_key, inter, ca=True),
                                    rogue_key, [inter], "attestation"),
        "intermediate_as_signer": (inter, inter_key, [], "attestation"),
        "root_as_signer": (root, root_key, [], "attestation"),
    }
    res = ClassResult("hyperprotect_signer", "bank")
    for name, (leaf, key, chain, code) in cases.items():
        signature = key.sign(record.encode(), PKCS1v15(), hashes.SHA256())
        doc = build_document(statement, att_key, record, signature, [pem(leaf), *map(pem, chain)])
        att = folder / name / "attestation.json"
        att.parent.mkdir(parents=True, exist_ok=True)
        att.write_text(json.dumps(doc))
        expect(res, name, seal_args(con.key_path(con.banks[0]), att, folder / "bank" / "policy.json"),
               code, 0 if code == "accepted" else 3)
    return res
