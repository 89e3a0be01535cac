"""The consortium the attacks run against: keys, enclave, synthetic data, sealing helpers,
and the two ways of asking "what does the enclave make of this file?":

- `check_file`: in-process, the same container and schema checks the flow's tasks use
  (`read_header`, `verify_sender`, `open_batch`, `validate`), fast enough for thousands of cases;
- `aml run` as a subprocess (see `attacks.flowrun`): the real flow on real Prefect.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aml.core.crypto.container import ENCLAVE, Header, read_header, seal_bytes, verify_sender
from aml.core.crypto.keys import BankKeyPair, PublicKeys, load_keypair
from aml.core.errors import AmlError, MembershipError
from aml.core.schema import SCHEMA_VERSION, validate

_CLI_ERROR = re.compile(r"^aml: [a-z ]+?: ([a-z_]+): ", re.M)


@dataclass(frozen=True)
class Outcome:
    """What the enclave made of one file: an error code, or "accepted" with row quarantine counts."""

    code: str
    rows: dict[str, int] = field(default_factory=dict)

    def matches(self, expected: frozenset[str], rows: dict[str, int] | None = None) -> bool:
        if self.code not in expected:
            return False
        return self.code != "accepted" or rows is None or self.rows == rows


def cli(*argv: str) -> tuple[int, str, str]:
    """`aml ARGV...` in this process: (exit code, stdout, stderr)."""
    from aml.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def cli_error_code(stderr: str) -> str | None:
    m = _CLI_ERROR.search(stderr)
    return m.group(1) if m else None


class Consortium:
    """Member banks with keys, an initialised enclave, and sealing helpers."""

    def __init__(self, root: Path, banks: list[str]):
        self.root = Path(root)
        self.banks = list(banks)
        self.keys_dir = self.root / "keys"
        self.enclave_dir = self.root / "enclave"
        for bank in self.banks:
            code, _, err = cli("keygen", "--bank", bank, "--out", self.keys_dir)
            if code:
                raise RuntimeError(f"keygen failed: {err.strip()}")
        self.init_enclave()

    def init_enclave(self, force: bool = False) -> None:
        """(Re-)initialise the enclave; the banks then review and pin its new policy (`bank_policy`)."""
        args = ["enclave", "init", "--dir", self.enclave_dir, "--members", self.keys_dir]
        code, _, err = cli(*args, *(["--force"] if force else []))
        if code:
            raise RuntimeError(f"enclave init failed: {err.strip()}")
        self.bank_policy.parent.mkdir(parents=True, exist_ok=True)
        self.bank_policy.write_bytes(self.policy.read_bytes())

    @property
    def attestation(self) -> Path:
        return self.enclave_dir / "attestation.json"

    @property
    def policy(self) -> Path:
        """The operator's published copy, beside the attestation (`aml seal` refuses it)."""
        return self.enclave_dir / "policy.json"

    @property
    def bank_policy(self) -> Path:
        """The banks' pinned copy, in a bank-local folder."""
        return self.root / "bank-policy" / "policy.json"

    def bank_args(self, attestation: Path | None = None, policy: Path | None = None) -> list:
        """`--attestation ATT --policy POLICY --allow-simulated` as a bank passes them (simulated enclave)."""
        return ["--attestation", attestation or self.attestation, "--policy", policy or self.bank_policy,
                "--allow-simulated"]

    def key_path(self, bank: str) -> Path:
        return self.keys_dir / f"{bank}.key"

    def pair(self, bank: str) -> BankKeyPair:
        return load_keypair(self.key_path(bank))

    def members(self) -> dict[str, PublicKeys]:
        return {b: self.pair(b).public for b in self.banks}

    def enclave_public(self):
        from aml.core.crypto.attestation import verify_attestation

        att = verify_attestation(self.attestation, self.policy)
        return PublicKeys.from_raw(att.x25519_public, att.ed25519_public, ENCLAVE)

    def enclave_keys(self):
        from aml.enclave.identity import load_enclave_keys

        return load_enclave_keys(self.enclave_dir)

    # --- sealing ---------------------------------------------------------------------------
    def seal_cli(self, bank: str, file: Path, inbox: Path, sequence: int, attestation: Path | None = None,
                 policy: Path | None = None, expires_hours: float | None = None) -> Path:
        """Seal like a bank does: `aml seal`. Returns the sealed file's path."""
        args = ["seal", "--bank", bank, "--key", self.key_path(bank), *self.bank_args(attestation, policy),
                "--sequence", str(sequence), file, "--out", inbox]
        if expires_hours is not None:
            args += ["--expires-hours", repr(expires_hours)]
        code, out, err = cli(*args)
        if code:
            raise RuntimeError(f"aml seal failed: {err.strip()}")
        return Path(out.strip().split("sealed ", 1)[1])

    def craft(self, sender: str, sequence: int, payload: bytes, row_count: int, *, signer=None,
              recipient: str = ENCLAVE, recipient_key=None, kind: str = "batch", expires_in: int = 72 * 3600,
              chunk_size: int | None = None, sender_key_id: str | None = None) -> tuple[str, bytes]:
        """A sealed file made directly with the container API, as any key holder could.

        `signer`: a key pair (default: the sender's own); `recipient_key`: PublicKeys to seal to
        (default: the attested enclave). Returns (inbox file name, bytes)."""
        signer = signer or self.pair(sender)
        recipient_key = recipient_key or self.enclave_public()
        now = int(time.time())
        batch_id = uuid.uuid4().hex
        extra = {"chunk_size": chunk_size} if chunk_size else {}
        header = Header(
            kind=kind, sender=sender, recipient=recipient, batch_id=batch_id, sequence=sequence,
            created=now, expires=now + expires_in, schema_version=SCHEMA_VERSION, row_count=row_count,
            recipient_key_id=recipient_key.key_id, sender_key_id=sender_key_id or signer.key_id,
            provenance={}, **extra,
        )
        data = seal_bytes(payload, header, recipient_key.x25519, signer.ed25519)
        return f"{sender}-{sequence:08d}-{batch_id}.amlb", data


def check_file(data: bytes, members: dict[str, PublicKeys], enclave_keys, now: int | None = None) -> Outcome:
    """What the enclave's checks make of one sealed batch, in the flow's order: header shape,
    membership, sender signature and recipient, then decryption and row validation."""
    from aml.enclave.identity import open_batch

    try:
        header = read_header(data)
        sender = members.get(header.sender)
        if sender is None:
            raise MembershipError("sender is not a member")
        verify_sender(data, sender, expected_recipient=ENCLAVE)
        header, table = open_batch(data, enclave_keys, sender, now=now)
        result = validate(table, bank_id=header.sender)
        return Outcome("accepted", dict(result.counts))
    except AmlError as exc:
        return Outcome(exc.code)
    except Exception as exc:  # a crash is a finding, never a pass
        return Outcome(f"crash:{type(exc).__name__}")


# --- data ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Nights:
    """Each member's batch for each night: nights[k][bank] is a TRANSACTION_SCHEMA table."""

    nights: list[dict[str, pa.Table]]
    canaries: list[str]


def make_nights(banks: int, accounts: int, days: int, n_nights: int, seed: int, canary: str) -> tuple[list[str], Nights]:
    """Synthetic data split per member and per night. Night 0 holds the labelled history plus
    one unlabelled day; each later night one unlabelled day. Canary rows (ids that must never
    appear outside the enclave or a bank) are planted in every bank's first batch."""
    from aml.tools.split import choose_members, split_table
    from aml.tools.synth import generate

    table, _ = generate(banks=banks, accounts=accounts, days=days, seed=seed)
    members = choose_members(table, banks)
    ts = table["timestamp"]
    start = pc.min(ts).as_py()
    day = pc.divide(pc.cast(pc.subtract(ts, pa.scalar(start, ts.type)), pa.int64()), 86_400_000_000)
    first_new = days - n_nights
    nights = []
    for k in range(n_nights):
        lo = 0 if k == 0 else first_new + k
        part = table.filter(pc.and_(pc.greater_equal(day, lo), pc.less_equal(day, first_new + k)))
        unlabelled = pc.greater_equal(pc.filter(day, pc.and_(pc.greater_equal(day, lo),
                                                                pc.less_equal(day, first_new + k))), first_new)
        label = pc.if_else(unlabelled, pa.scalar(None, pa.int8()), part["label"])
        part = part.set_column(part.schema.get_field_index("label"), part.schema.field("label"), label)
        nights.append(split_table(part, members))
    canaries = []
    for i, bank in enumerate(members):
        other = members[(i + 1) % len(members)]
        row = nights[0][bank].slice(0, 1)
        values = row.to_pydict()
        values.update(txn_id=[f"{canary}T{i}"], src_bank=[bank], src_account=[f"{canary}A{i}"],
                      dst_bank=[other], dst_account=[f"{canary}B{i}"])
        planted = pa.Table.from_pydict(values, schema=row.schema)
        nights[0][bank] = pa.concat_tables([nights[0][bank], planted])
        canaries += [f"{canary}T{i}", f"{canary}A{i}", f"{canary}B{i}"]
    return members, Nights(nights, canaries)


def write_batch(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


# --- results -----------------------------------------------------------------------------------

@dataclass
class ClassResult:
    """One row of the report: an attack class at one level (container, bank or flow)."""

    cls: str
    level: str  # "container" | "bank" | "flow"
    tried: int = 0
    right: int = 0
    others_processed: bool | None = None  # flow classes: every honest bank accepted + alerts
    not_run: str | None = None  # why the class could not run
    failures: list[str] = field(default_factory=list)
    lost: int = 0  # batches neither recorded nor quarantined

    @property
    def ok(self) -> bool:
        return (self.not_run is None and self.right == self.tried and self.tried > 0
                and self.others_processed is not False and self.lost == 0)

    def record(self, case_name: str, got: str, expected, ok: bool, detail: str = "") -> None:
        self.tried += 1
        if ok:
            self.right += 1
        elif len(self.failures) < 20:
            want = "|".join(sorted(expected)) if not isinstance(expected, str) else expected
            self.failures.append(f"{case_name}: got {got}, expected {want}{(' ' + detail) if detail else ''}")

    def to_json(self) -> dict:
        return {"class": self.cls, "level": self.level, "tried": self.tried, "right": self.right,
                "others_processed": self.others_processed, "not_run": self.not_run,
                "lost": self.lost, "ok": self.ok, "failures": self.failures}
