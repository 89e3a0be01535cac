"""The enclave's own sealed state: what the enclave remembers between runs, so that neither the
ledger, the history nor the membership can be swapped or rolled back behind its back.

ENCLAVE_DIR/state/enclave-state.json holds, under an HMAC keyed from the storage key (which
only the enclave holds; the file itself is readable, it names no transaction data):

    enclave_key_id, membership_hash   what `aml enclave init` attested: the member table the
                                      enclave uses is the attested one, never the key files
    counter, head                     committed runs so far (monotonic) and the MAC chain over
                                      them; the ledger's runs must chain to exactly this head
    history, window_days              the committed history file and the window it was cut to
    pending                           the run attempt under way or interrupted: its batches
    withdrawn                         batches of an interrupted attempt that were quarantined
                                      instead of being rerun: refused for good
    attempts                          how many run attempts the enclave has seen

A run attempt is recorded before any merge or detection. A rerun after a crash over the same
batches is the same run (same run id, same alerts); a rerun that leaves out some of the
pending batches is refused unless those were quarantined first, so killing runs before their
commit cannot query the enclave about chosen subsets of batches.

What the enclave cannot see by itself: the ledger and this file restored *together* from an
older copy. The counter is also each alert file's sequence number, so a bank that keeps the
last sequence it opened sees the repeat (see docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aml.core.crypto.container import canonical_json
from aml.core.errors import (
    ConfigError, FormatError, MembershipError, PendingRunError, ReplayError, RollbackError, TamperedError,
)

STATE_FORMAT = "aml-enclave-state/1"
STATE_FILE = "enclave-state.json"
COUNTS_FILE = "counts.aes"
_FIELDS = ("format", "enclave_key_id", "membership_hash", "counter", "head", "history", "window_days",
           "pending", "withdrawn", "attempts")


def _subkey(storage_key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(storage_key)


def _state_path(enclave_dir: Path) -> Path:
    from aml.operator.ledger import state_dir

    return state_dir(enclave_dir) / STATE_FILE


def _mac(storage_key: bytes, doc: dict) -> str:
    body = {k: doc[k] for k in _FIELDS}
    return hmac.new(_subkey(storage_key, b"aml-enclave-state/1 mac"), canonical_json(body), hashlib.sha256).hexdigest()


def genesis_head(storage_key: bytes, enclave_key_id: str) -> str:
    return hmac.new(_subkey(storage_key, b"aml-ledger-chain/1"), b"genesis|" + enclave_key_id.encode(),
                    hashlib.sha256).hexdigest()


def chain_entry(run_id: str, seq: int, history: str, window_days: float | None, batches: list[dict]) -> bytes:
    """What the MAC chain covers of one committed run: everything the ledger says about it."""
    rows = sorted([str(b["batch_id"]), str(b["bank"]), int(b["sequence"]), str(b["sha256"]), int(b["rows"])]
                  for b in batches)
    return canonical_json({"run_id": run_id, "seq": int(seq), "history": history,
                           "window_days": None if window_days is None else float(window_days), "batches": rows})


def next_head(storage_key: bytes, head: str, entry: bytes) -> str:
    return hmac.new(_subkey(storage_key, b"aml-ledger-chain/1"), bytes.fromhex(head) + entry,
                    hashlib.sha256).hexdigest()


# --- the state file -------------------------------------------------------------------------
def save_state(enclave_dir: Path, storage_key: bytes, doc: dict) -> None:
    path = _state_path(enclave_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = {k: doc[k] for k in _FIELDS}
    out["mac"] = _mac(storage_key, out)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(out, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def init_state(enclave_dir: Path, storage_key: bytes, enclave_key_id: str, membership_hash: str) -> None:
    """The state of a new enclave (`aml enclave init`): no runs yet."""
    save_state(enclave_dir, storage_key, {
        "format": STATE_FORMAT, "enclave_key_id": enclave_key_id, "membership_hash": membership_hash,
        "counter": 0, "head": genesis_head(storage_key, enclave_key_id), "history": None, "window_days": None,
        "pending": None, "withdrawn": [], "attempts": 0,
    })


def read_state_unverified(enclave_dir: Path) -> dict:
    """The state as the outside sees it (no key, so no MAC check): for advisory checks only."""
    try:
        doc = json.loads(_state_path(enclave_dir).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def load_state(enclave_dir: Path, storage_key: bytes, enclave_key_id: str) -> dict:
    """The state, its MAC checked (inside the enclave only)."""
    path = _state_path(enclave_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise RollbackError("the enclave's sealed state is missing (deleted or rolled back); refusing to run") from None
    except (OSError, ValueError):
        raise FormatError("the enclave's sealed state is unreadable") from None
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or any(k not in doc for k in _FIELDS):
        raise FormatError("the enclave's sealed state is not an enclave state file")
    if not hmac.compare_digest(str(doc.get("mac", "")), _mac(storage_key, doc)):
        raise TamperedError("the enclave's sealed state failed authentication (altered)")
    if doc["enclave_key_id"] != enclave_key_id:
        raise RollbackError("the enclave's sealed state belongs to another enclave key")
    return doc


def verified_state(enclave_dir: Path, keys) -> dict:
    """The state, checked against the ledger: the ledger's runs must chain to the sealed head.

    One case is repaired rather than refused: a crash after the ledger commit and before the
    enclave saw it. Then the ledger holds exactly one run more, the pending attempt, with the
    head the enclave computed for it; the state moves on to it."""
    from aml.operator.ledger import Ledger

    state = load_state(enclave_dir, keys.storage_key, keys.key_id)
    with Ledger(enclave_dir) as ledger:
        runs = ledger.chain_runs()
    head = genesis_head(keys.storage_key, keys.key_id)
    for i, run in enumerate(runs, start=1):
        head = next_head(keys.storage_key, head,
                         chain_entry(run["run_id"], run["seq"], run["history"], run["window_days"], run["batches"]))
        if run["seq"] != i or run["head"] != head:
            raise RollbackError(f"the ledger's run {i} does not match the enclave's MAC chain "
                                "(ledger altered or rolled back); refusing to run")
    pending = state["pending"]
    if len(runs) == state["counter"] + 1 and pending and pending["run_id"] == runs[-1]["run_id"] \
            and pending["head"] == head:
        state.update(counter=len(runs), head=head, history=pending["history"], window_days=pending["window_days"],
                     pending=None)
        save_state(enclave_dir, keys.storage_key, state)
    if len(runs) != state["counter"] or head != state["head"]:
        raise RollbackError(f"the ledger records {len(runs)} runs, the enclave's sealed state {state['counter']}: "
                            "the ledger or the history was rolled back or altered; refusing to run")
    if runs and runs[-1]["history"] != state["history"]:
        raise RollbackError("the ledger names another history file than the enclave committed")
    if state["history"] and not (_state_path(enclave_dir).parent / state["history"]).is_file():
        raise RollbackError("the committed history file is missing; refusing to run without it")
    return state


def check_window(state: dict, window_days: float) -> None:
    """Narrowing the history window drops history rows for good: refused."""
    committed = state["window_days"]
    if committed is not None and window_days < committed:
        raise ConfigError(f"the history window ({window_days:g} days) is narrower than the committed history's "
                          f"({committed:g} days); narrowing would drop history for good, refused")


# --- membership ----------------------------------------------------------------------------
def attested_members(enclave_dir: Path, keys, state: dict):
    """(members, refused): the attested member table as PublicKeys, and the members whose key
    file on disk differs from it (bank -> reason). The enclave never uses a key file's keys."""
    from aml.core.crypto.attestation import check_members
    from aml.core.crypto.keys import PublicKeys, load_public
    from aml.core.errors import AmlError

    edir = Path(enclave_dir)
    try:
        statement = json.loads((edir / "attestation.json").read_text())["statement"]
        table = check_members(statement)
    except (OSError, ValueError, KeyError, TypeError, AmlError):
        raise MembershipError("the enclave's attestation statement is missing or malformed") from None
    if statement.get("membership_hash") != state["membership_hash"]:
        raise MembershipError("the attested membership differs from the one this enclave was set up with")
    if statement.get("enclave_key_id") != keys.key_id or \
            statement.get("enclave_x25519") != keys.public.x25519_raw.hex() or \
            statement.get("enclave_ed25519") != keys.public.ed25519_raw.hex():
        raise MembershipError("the attestation statement names another enclave key than this enclave's")
    members = {bank: PublicKeys.from_raw(bytes.fromhex(k["x25519"]), bytes.fromhex(k["ed25519"]), bank)
               for bank, k in sorted(table.items())}
    refused: dict[str, str] = {}
    for bank, pub in members.items():
        path = edir / "members" / f"{bank}.pub"
        try:
            on_disk = load_public(path)
        except (AmlError, OSError):
            refused[bank] = "its member key file is missing or unreadable"
            continue
        if (on_disk.x25519_raw, on_disk.ed25519_raw) != (pub.x25519_raw, pub.ed25519_raw):
            refused[bank] = "its member key file differs from the attested membership"
    return members, refused


# --- run attempts --------------------------------------------------------------------------
def begin_attempt(enclave_dir: Path, keys, state: dict, run_id: str, history: str, window_days: float,
                  batches: list[dict], withdrawn: list[str]) -> tuple[int, str]:
    """Record this run attempt before anything is merged; returns (run sequence, chain head).

    Refuses a rerun that leaves out batches of the pending (interrupted) attempt unless they
    were quarantined (`withdrawn`): those are then refused for good."""
    hashes_now = {b["sha256"] for b in batches}
    burned = hashes_now & set(state["withdrawn"])
    if burned:
        raise ReplayError(f"{len(burned)} batches of this run were withdrawn from an interrupted run")
    pending = state["pending"]
    if pending and pending["run_id"] != run_id:
        missing = set(pending["batches"]) - hashes_now
        unaccounted = missing - set(withdrawn)
        if unaccounted:
            raise PendingRunError(
                f"an interrupted run over {len(pending['batches'])} batches is pending and {len(unaccounted)} of "
                "them are not in this run: put them back in the inbox, or quarantine them first")
        state["withdrawn"] = sorted(set(state["withdrawn"]) | missing)
    seq = state["counter"] + 1
    head = next_head(keys.storage_key, state["head"], chain_entry(run_id, seq, history, window_days, batches))
    state["pending"] = {"run_id": run_id, "batches": sorted(hashes_now), "head": head, "history": history,
                        "window_days": float(window_days)}
    state["attempts"] += 1
    save_state(enclave_dir, keys.storage_key, state)
    return seq, head


# --- counts, held back until the commit ---------------------------------------------------------
def seal_counts(storage_key: bytes, run_id: str, counts: dict, path: Path) -> None:
    """A run's counts, encrypted in the work area until the ledger commit releases them."""
    nonce = os.urandom(12)
    key = _subkey(storage_key, b"aml-run-counts/1")
    Path(path).write_bytes(nonce + AESGCM(key).encrypt(nonce, canonical_json(counts), run_id.encode()))


def open_counts(storage_key: bytes, run_id: str, path: Path) -> dict:
    from cryptography.exceptions import InvalidTag

    blob = Path(path).read_bytes()
    try:
        plain = AESGCM(_subkey(storage_key, b"aml-run-counts/1")).decrypt(blob[:12], blob[12:], run_id.encode())
    except (InvalidTag, ValueError):
        raise TamperedError("the run's sealed counts failed authentication") from None
    return json.loads(plain)
