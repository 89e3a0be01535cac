"""The consortium flow: orchestration only. Passes references, hashes and counts; never rows.

    outside (flow process)                 inside (EnclaveTaskRunner worker)     outside again
    discover *.amlb, read headers,   ──▶   unseal + validate each batch,   ──▶   move sealed alert files to
    check signature, membership,           merge + reconcile, history,           OUTBOX/<bank>/<run_id>.amla,
    recipient, expiry, sequence;           detect, seal one alert file per       record batches + new history
    quarantine failures                    member bank, write new history        in the ledger (one transaction)

The run id is derived from the hashes of the batches the run processes, so a rerun after a
crash at any step processes the same batches under the same run id, overwrites the same
outbox files with the same alerts and commits exactly once.

The enclave keeps its own sealed state (aml/enclave/state.py): every run first checks that the
ledger and history chain to it (`check_state`), the enclave records each attempt before it
merges anything and refuses a rerun that leaves out batches of an interrupted attempt unless
they were quarantined, and the run's counts stay sealed until the ledger commit
(`release_counts`): nothing count-bearing reaches Prefect before then.

In the enclave image (`aml.enclave.entrypoint`) the three paths are the image's, whatever the
Prefect run's parameters say.

Test hook: AML_CRASH_AT=<step> makes the flow process exit at once (os._exit, like SIGKILL) at
that step: verified, unsealed, detected, delivered, committed. For crash-recovery tests only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aml.operator.prefect_env  # noqa: F401  (project settings before prefect is imported)
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from aml.enclave.runner import EnclaveTaskRunner
from aml.enclave.tasks import check_state, detect_and_seal, release_counts, unseal_batch
from aml.enclave.workarea import remove_stale_work_areas, work_area
from aml.core.errors import (
    AmlError, BadInputError, ConfigError, EnclaveTaskError, ExpiredError, FormatError, InternalError, MembershipError,
    PendingRunError, ReplayError, RollbackError, SignatureError,
)
from aml.operator.ledger import BatchRecord, Ledger, run_lock, state_dir
from aml.core.crypto.digest import sha256_file

QUARANTINE_DIR = "quarantine"
BATCH_SUFFIX = ".amlb"
ALERT_SUFFIX = ".amla"
CRASH_STEPS = ("verified", "unsealed", "detected", "delivered", "committed")
# Errors inside the enclave that are the batch's fault: quarantine it and go on. Any other
# error there (keys missing, a bug) fails the run and leaves the batch in the inbox.
BATCH_FAULT_CODES = frozenset({"format", "tampered", "truncated", "trailing_data", "bad_signature",
                               "wrong_recipient", "expired", "not_a_member", "schema", "bad_input", "replay",
                               "too_large", "resource_exhausted"})
# Errors inside the enclave about its state: fail the run with a clear message (no data in it).
STATE_FAULTS = {
    "rollback": (RollbackError, "the ledger, the history or the enclave's sealed state was rolled back or "
                 "altered (it no longer matches the enclave's MAC chain and run counter); refusing to run"),
    "pending_run": (PendingRunError, "an interrupted run is pending and this run leaves out some of its batches: "
                    "put them back in the inbox, or quarantine them first"),
    "config": (ConfigError, "the history window would narrow the committed history (AML_HISTORY_DAYS); refused"),
    "not_a_member": (MembershipError, "the enclave's attestation or member table does not match its sealed state"),
    "tampered": (RollbackError, "the enclave's sealed state or history failed authentication (altered); refusing to run"),
}
ARTIFACT_SUMMARY_KEY = "consortium-run-summary"
ARTIFACT_BATCHES_KEY = "consortium-run-batches"


def history_window_days() -> tuple[float, str]:
    """(history window in days, its source): AML_HISTORY_DAYS (an operator override, written
    into every alert file's provenance; the enclave refuses one that narrows the committed
    history) or the default, 30."""
    from aml.enclave.history import DEFAULT_WINDOW_DAYS

    raw = os.environ.get("AML_HISTORY_DAYS")
    if raw is None:
        return float(DEFAULT_WINDOW_DAYS), "default"
    try:
        days = float(raw)
    except ValueError:
        days = -1.0
    if not 0 < days < 10_000:
        raise ConfigError("AML_HISTORY_DAYS must be a positive number of days")
    return days, "AML_HISTORY_DAYS"


def _paths(enclave_dir: str, inbox: str, outbox: str) -> tuple[str, str, str]:
    """The run's paths: in the enclave image the image's own, whatever the parameters say."""
    from aml.enclave.entrypoint import fixed_layout

    fixed = fixed_layout()
    if fixed is None:
        return enclave_dir, inbox, outbox
    return str(fixed["enclave"]), str(fixed["inbox"]), str(fixed["outbox"])


def _quarantined_hashes(inbox: Path) -> set[str]:
    """sha256 of every batch in INBOX/quarantine (from the reason files)."""
    out = set()
    for reason in (inbox / QUARANTINE_DIR).glob(f"*{BATCH_SUFFIX}.reason.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            out.add(json.loads(reason.read_text()).get("sha256"))
    return out


def _crash_point(step: str) -> None:
    if os.environ.get("AML_CRASH_AT") == step:
        os._exit(137)




@dataclass
class Candidate:
    """One inbox file: what the operator may see anyway (header fields, hash)."""

    file: str
    sha256: str
    bank: str | None = None
    batch_id: str | None = None
    sequence: int | None = None
    rows: int | None = None
    status: str = "pending"  # accepted | rejected | skipped | held (member refused: left in the inbox)
    code: str | None = None
    quarantined: int = 0  # rows the enclave quarantined (count only)
    reasons: dict = field(default_factory=dict)


def _copy_atomically(src: Path, dst: Path) -> None:
    """Copy then rename in the destination directory: readers see the whole file or none."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)


def _quarantine(inbox: Path, c: Candidate, exc: AmlError) -> None:
    """Move a rejected file to INBOX/quarantine/ with a reason file (code + message, no data)."""
    qdir = inbox / QUARANTINE_DIR
    qdir.mkdir(exist_ok=True)
    src = inbox / c.file
    if src.exists():
        os.replace(src, qdir / c.file)
    reason = {"file": c.file, "sha256": c.sha256, "bank": c.bank, "batch_id": c.batch_id,
              "code": exc.code, "message": str(exc), "time": int(time.time())}
    (qdir / f"{c.file}.reason.json").write_text(json.dumps(reason, indent=1, sort_keys=True) + "\n")
    c.status, c.code = "rejected", exc.code


def _enclave_key_id(enclave_dir: Path) -> str | None:
    """The enclave key id the attestation publishes (batches must be sealed to it)."""
    try:
        doc = json.loads((enclave_dir / "attestation.json").read_text())
        return doc.get("statement", {}).get("enclave_key_id")
    except (OSError, ValueError):
        return None


def _attested_table(enclave_dir: Path) -> dict:
    """The member table of the attestation statement (outside: unverified, advisory; the
    enclave checks it against its sealed state)."""
    from aml.core.crypto.keys import PublicKeys

    try:
        table = json.loads((enclave_dir / "attestation.json").read_text())["statement"]["members"]
        return {b: PublicKeys.from_raw(bytes.fromhex(k["x25519"]), bytes.fromhex(k["ed25519"]), b)
                for b, k in table.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise MembershipError("the enclave's attestation statement has no readable member table") from None


def _refused_members(enclave_dir: Path, members: dict) -> set[str]:
    """Members whose key file differs from the attested table (the enclave refuses them too)."""
    from aml.core.crypto.keys import load_public

    refused = set()
    for bank, pub in members.items():
        try:
            if load_public(enclave_dir / "members" / f"{bank}.pub") != pub:
                refused.add(bank)
        except (AmlError, OSError):
            refused.add(bank)
    return refused


@task(persist_result=False, cache_policy=NO_CACHE, log_prints=False)
def verify_inbox(enclave_dir: str, inbox: str) -> list[dict]:
    """Outside the enclave, no keys, no plaintext: check every sealed batch in the inbox and
    quarantine the failures. Batches of refused members (their key file differs from the
    attested table) stay in the inbox, unprocessed. Returns one record per file (header
    fields, hash, status)."""
    from aml.core.crypto.container import check_sequence, read_header, verify_sender
    from aml.enclave.state import read_state_unverified

    edir, inbox_dir = Path(enclave_dir), Path(inbox)
    members = _attested_table(edir)
    refused = _refused_members(edir, members)
    withdrawn = set(read_state_unverified(edir).get("withdrawn") or [])
    enclave_key = _enclave_key_id(edir)
    now = int(time.time())
    candidates: list[tuple[Candidate, object]] = []
    out: list[Candidate] = []
    with Ledger(edir) as ledger:
        for path in sorted(inbox_dir.glob(f"*{BATCH_SUFFIX}")):
            if path.is_symlink():  # never followed: it could point at any file the flow can read
                c = Candidate(file=path.name, sha256="")
                out.append(c)
                exc = BadInputError("the inbox entry is a symbolic link; links are not followed")
                ledger.record_rejection(c.file, c.sha256, None, exc.code)
                _quarantine(inbox_dir, c, exc)
                continue
            if not path.is_file():
                continue
            c = Candidate(file=path.name, sha256=sha256_file(path))
            out.append(c)
            try:
                header = read_header(path)
                c.bank, c.batch_id, c.sequence, c.rows = header.sender, header.batch_id, header.sequence, header.row_count
                if header.kind != "batch":
                    raise FormatError("not a batch file (kind is not 'batch')", batch_id=header.batch_id)
                if header.sender not in members:
                    raise MembershipError("the sender is not a consortium member", batch_id=header.batch_id)
                if header.sender in refused:  # the operator's fault, not the bank's: not quarantined
                    c.status, c.code = "held", "member_key_mismatch"
                    continue
                if header.sender_key_id != members[header.sender].key_id:
                    raise SignatureError("the header's sender_key_id is not the member's attested key id",
                                         batch_id=header.batch_id)
                verify_sender(path, members[header.sender], expected_recipient="enclave")
                if enclave_key and header.recipient_key_id != enclave_key:
                    from aml.core.errors import WrongRecipientError

                    raise WrongRecipientError("sealed to another enclave key than the attested one",
                                              batch_id=header.batch_id)
                seen = ledger.batch_by_id(header.batch_id)
                if seen is not None and seen.sha256 == c.sha256:
                    c.status, c.code = "skipped", "already_processed"
                    continue
                if seen is not None or ledger.has_hash(c.sha256):
                    raise ReplayError("this batch id was already processed with other contents",
                                      batch_id=header.batch_id)
                if c.sha256 in withdrawn:
                    raise ReplayError("this batch was withdrawn from an interrupted run; seal its rows again",
                                      batch_id=header.batch_id)
                if header.expires < now:
                    raise ExpiredError("the batch expired before it was processed", batch_id=header.batch_id)
                candidates.append((c, header))
            except AmlError as exc:
                ledger.record_rejection(c.file, c.sha256, c.bank, exc.code)
                _quarantine(inbox_dir, c, exc)
        # Sequence numbers: strictly above the last accepted, per bank, in sequence order.
        last: dict[str, int | None] = {}
        for c, header in sorted(candidates, key=lambda ch: (ch[0].bank, ch[0].sequence, ch[0].file)):
            if c.bank not in last:
                last[c.bank] = ledger.last_sequence(c.bank)
            try:
                check_sequence(header, last[c.bank])
            except AmlError as exc:
                ledger.record_rejection(c.file, c.sha256, c.bank, exc.code)
                _quarantine(inbox_dir, c, exc)
                continue
            last[c.bank] = header.sequence
            c.status = "accepted"
    return [asdict(c) for c in out]


def run_id_for(batch_hashes: list[str]) -> str:
    """Deterministic: the same batches always make the same run id."""
    return "run-" + hashlib.sha256("\n".join(sorted(batch_hashes)).encode()).hexdigest()[:24]


@task(persist_result=False, cache_policy=NO_CACHE, log_prints=False)
def deliver_and_commit(enclave_dir: str, outbox: str, run_id: str, sealed: dict,
                       batches: list[dict], summary: dict, window_days: float) -> dict:
    """Outside again: move the sealed alert files to OUTBOX/<bank>/<run_id>.amla, then record the
    run's batches and new history in the ledger, all or nothing. Handles ciphertext only."""
    from aml.enclave.history import history_file_name

    edir = Path(enclave_dir)
    for bank, ref in sealed["alerts"].items():
        src = Path(ref["path"])
        if sha256_file(src) != ref["sha256"]:
            raise InternalError("a sealed alert file changed between the enclave and delivery")
        _copy_atomically(src, Path(outbox) / bank / f"{run_id}{ALERT_SUFFIX}")
    history_name = history_file_name(run_id)
    _copy_atomically(Path(sealed["history"]["path"]), state_dir(edir) / history_name)
    _crash_point("delivered")
    records = [BatchRecord(b["batch_id"], b["bank"], b["sequence"], b["sha256"], b["rows"]) for b in batches]
    with Ledger(edir) as ledger:
        seq = ledger.commit_run(run_id, records, history_name, summary, head=sealed["head"],
                                window_days=window_days, seq=sealed["run_sequence"])
    _crash_point("committed")
    # Older history files are superseded (the ledger names the current one).
    for old in state_dir(edir).glob("history-*.aes"):
        if old.name != history_name:
            old.unlink(missing_ok=True)
    return {"run_sequence": seq, "history": history_name}


def _publish(summary: dict, candidates: list[dict]) -> None:
    """Prefect artifacts (with keys, so they show on the Artifacts page): counts only."""
    table = [{"file": c["file"], "bank": c["bank"] or "?", "sequence": c["sequence"], "status": c["status"],
              "reason": c["code"] or "", "rows_in_header": c["rows"], "rows_quarantined": c["quarantined"]}
             for c in candidates]
    create_table_artifact(table=table or [{"file": "", "status": "no batches"}], key=ARTIFACT_BATCHES_KEY,
                          description="Sealed batches in this run: status and reason codes (no data).")
    lines = [f"# Consortium run `{summary['run_id'] or 'none'}`", "",
             "| what | count |", "|---|---|"]
    labels = {"accepted": "batches accepted", "rejected": "batches rejected", "skipped": "batches skipped (already processed)",
              "rows": "rows received (a cross-bank payment counts once per bank)",
              "rows_quarantined": "rows quarantined by validation", "cross_bank": "cross-bank payments reconciled",
              "conflicts": "payments whose two copies disagree (kept apart, one row per bank)", "alerts": "alerts (all banks)"}
    for k, label in labels.items():
        lines.append(f"| {label} | {summary.get(k, 0)} |")
    if summary.get("patterns"):
        lines += ["", "## Alerts per typology (all banks together)", "", "| pattern | alerts |", "|---|---|"]
        lines += [f"| {p} | {n} |" for p, n in sorted(summary["patterns"].items())]
    if summary.get("refused_members"):
        lines += ["", "## Members refused (key file differs from the attested membership)", ""]
        lines += [f"- {b}" for b in summary["refused_members"]]
    if summary.get("rejections"):
        lines += ["", "## Rejected batches per bank", "", "| bank | reason | batches |", "|---|---|---|"]
        lines += [f"| {r['bank']} | {r['code']} | {r['n']} |" for r in summary["rejections"]]
    if summary.get("millis"):
        lines += ["", "## Stage durations", "", "| stage | ms |", "|---|---|"]
        lines += [f"| {s} | {ms} |" for s, ms in summary["millis"].items()]
    create_markdown_artifact(markdown="\n".join(lines), key=ARTIFACT_SUMMARY_KEY,
                             description="Counts only: no transaction data ever appears here.")


def _rejections(candidates: list[dict]) -> list[dict]:
    counts: dict[tuple[str, str], int] = {}
    for c in candidates:
        if c["status"] == "rejected":
            key = (c["bank"] or "?", c["code"] or "?")
            counts[key] = counts.get(key, 0) + 1
    return [{"bank": b, "code": code, "n": n} for (b, code), n in sorted(counts.items())]


def _state_fault(exc: EnclaveTaskError, window_checked: bool = False) -> AmlError:
    """A failure of the enclave's state checks, as a clear error (fixed text per code).
    `window_checked`: the task's only ConfigError is the window check (`check_state`)."""
    if exc.cause_code in STATE_FAULTS and (exc.cause_code != "config" or window_checked):
        cls, message = STATE_FAULTS[exc.cause_code]
        return cls(message)
    return exc


def _run(enclave_dir: str, inbox: str, outbox: str) -> dict:
    edir = Path(enclave_dir)
    millis: dict[str, int] = {}
    window_days, window_source = history_window_days()
    with run_lock(edir):
        remove_stale_work_areas(edir)
        start = time.perf_counter()
        # Ledger, history and membership against the enclave's sealed state, every run; checked
        # inside while the inbox is checked outside (the worker's start-up overlaps).
        state_check = check_state.submit(enclave_dir=enclave_dir, window_days=window_days)
        candidates = verify_inbox(enclave_dir, inbox)
        try:
            state = state_check.result()
        except EnclaveTaskError as exc:
            raise _state_fault(exc, window_checked=True) from None
        for c in candidates:  # the enclave's word on refused members wins over the outside's
            if c["status"] == "accepted" and c["bank"] in state["refused"]:
                c.update(status="held", code="member_key_mismatch")
        millis["verify"] = int((time.perf_counter() - start) * 1000)
        accepted = [c for c in candidates if c["status"] == "accepted"]
        summary: dict = {"run_id": None, "accepted": 0, "rows": 0, "rows_quarantined": 0, "alerts": 0,
                         "patterns": {}, "outbox": {}, "millis": millis, "refused_members": state["refused"]}
        if accepted:
            _crash_point("verified")
            work_name = run_id_for([c["sha256"] for c in accepted])
            with work_area(edir, work_name) as work:
                start = time.perf_counter()
                futures = [(c, unseal_batch.submit(enclave_dir=enclave_dir, batch_file=str(Path(inbox) / c["file"]),
                                                   bank=c["bank"], batch_id=c["batch_id"], work_dir=str(work),
                                                   sha256=c["sha256"]))
                           for c in accepted]
                unsealed = []
                for c, fut in futures:
                    try:
                        res = fut.result()
                    except EnclaveTaskError as exc:
                        if exc.cause_code not in BATCH_FAULT_CODES:
                            raise _state_fault(exc) from None  # the enclave's own fault: keep the batch
                        cand = Candidate(**c)
                        with Ledger(edir) as ledger:
                            ledger.record_rejection(cand.file, cand.sha256, cand.bank, exc.cause_code)
                        _quarantine(Path(inbox), cand, _coded(exc))
                        c.update(status="rejected", code=exc.cause_code)
                        continue
                    except Exception:  # the worker died (killed, out of memory): no code came back
                        culprit = _quarantine_worker_death(edir, Path(inbox), work, accepted)
                        if culprit is None:
                            raise
                        raise InternalError(f"the enclave worker died while unsealing batch {culprit}; that batch "
                                            "was quarantined (resource_exhausted); run again for the others") from None
                    c.update(quarantined=res["quarantined"], reasons=res["reasons"])
                    unsealed.append((c, res))
                millis["unseal"] = int((time.perf_counter() - start) * 1000)
                _crash_point("unsealed")
                if unsealed:
                    # A bank's later batch replaces its own earlier copy of a payment: merge in sequence order.
                    unsealed.sort(key=lambda cr: (cr[0]["bank"], cr[0]["sequence"]))
                    run_id = run_id_for([c["sha256"] for c, _ in unsealed])
                    provenance = {"run_id": run_id, "batches": sorted(c["batch_id"] for c, _ in unsealed),
                                  "batch_sha256": sorted(c["sha256"] for c, _ in unsealed)}
                    batches = [{"bank": c["bank"], "batch_id": c["batch_id"], "path": r["path"], "sequence": c["sequence"],
                                "sha256": c["sha256"], "rows": r["rows"]} for c, r in unsealed]
                    # Batches of an interrupted attempt that have since been quarantined may be left out.
                    withdrawn = sorted(set(state["pending"]) & _quarantined_hashes(Path(inbox)))
                    start = time.perf_counter()
                    try:
                        sealed = detect_and_seal.submit(
                            enclave_dir=enclave_dir, work_dir=str(work), run_id=run_id, batches=batches,
                            withdrawn=withdrawn, window_days=window_days, window_source=window_source,
                            provenance=provenance,
                        ).result()
                    except EnclaveTaskError as exc:
                        raise _state_fault(exc) from None
                    millis["enclave_detect"] = int((time.perf_counter() - start) * 1000)
                    millis.update({f"inside_{k}": v for k, v in sealed["millis"].items()})
                    _crash_point("detected")
                    summary.update(
                        run_id=run_id, accepted=len(unsealed),
                        rows=sum(r["rows"] for _, r in unsealed),
                        rows_quarantined=sum(r["quarantined"] for _, r in unsealed),
                        outbox={b: str(Path(outbox) / b / f"{run_id}{ALERT_SUFFIX}") for b in sealed["alerts"]},
                        model_hash=sealed["model_hash"], config_hash=sealed["config_hash"],
                        window_days=window_days, window_source=window_source,
                    )
                    start = time.perf_counter()
                    ledger_summary = {k: summary[k] for k in ("accepted", "rows", "rows_quarantined")}
                    deliver_and_commit(enclave_dir, outbox, run_id, sealed, batches, ledger_summary, window_days)
                    millis["deliver_commit"] = int((time.perf_counter() - start) * 1000)
                    # Committed: only now does the enclave let the run's counts out.
                    counts = release_counts.submit(enclave_dir=enclave_dir, work_dir=str(work), run_id=run_id).result()
                    summary.update(
                        cross_bank=counts["merge"]["cross_bank"], conflicts=counts["merge"]["conflicts"],
                        conflicts_by_bank=counts["conflicts_by_bank"], foreign_by_bank=counts["foreign_by_bank"],
                        history_rows=counts["history"]["rows"], patterns=counts["patterns"],
                        alerts=sum(counts["patterns"].values()),
                    )
                    with Ledger(edir) as ledger:
                        ledger.set_summary(run_id, {k: summary[k] for k in (
                            "accepted", "rows", "rows_quarantined", "alerts", "patterns")})
        summary["rejected"] = sum(c["status"] == "rejected" for c in candidates)
        summary["skipped"] = sum(c["status"] == "skipped" for c in candidates)
        summary["rejections"] = _rejections(candidates)
        summary["batches"] = candidates
        _publish(summary, candidates)
        return summary


def _quarantine_worker_death(edir: Path, inbox: Path, work: Path, accepted: list[dict]) -> str | None:
    """The enclave worker died while unsealing: the batch it was on (its marker is still in the
    work area) is quarantined as `resource_exhausted`, so it cannot stop every later run.
    This run still fails (its worker is gone); the next run processes the other batches. With
    more than one batch in flight nobody can tell which one was to blame: none is quarantined."""
    from aml.enclave.tasks import unsealing_marker
    from aml.core.errors import ResourceExhaustedError

    dying = [c for c in accepted if unsealing_marker(work, c["batch_id"]).exists()]
    if len(dying) != 1:
        return None
    c = dying[0]
    cand = Candidate(**c)
    exc = ResourceExhaustedError("the enclave worker died while unsealing this batch", batch_id=c["batch_id"])
    with Ledger(edir) as ledger:
        ledger.record_rejection(cand.file, cand.sha256, cand.bank, exc.code)
    _quarantine(inbox, cand, exc)
    c.update(status="rejected", code=exc.code)
    return c["batch_id"]


def _coded(exc: EnclaveTaskError) -> AmlError:
    """An error for the quarantine reason file: the code from inside, a message without data."""
    err = AmlError(f"rejected inside the enclave: {exc.cause_code}", batch_id=exc.batch_id)
    err.code = exc.cause_code
    return err


def _one_prefect_server():
    """With Prefect's temporary server (no PREFECT_API_URL), point the runs' settings at it, so
    the enclave worker talks to the same server instead of starting a temporary server of its
    own (5-7 s at every run, and a second server on the same database)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    url = str(get_client(sync_client=True).api_url)  # the flow run's own client: no new server
    return temporary_settings(updates={PREFECT_API_URL: url})


@flow(name="consortium-run", task_runner=EnclaveTaskRunner(), persist_result=False, log_prints=False)
def consortium_run(enclave_dir: str, inbox: str, outbox: str) -> dict:
    """One consortium run over the sealed batches in INBOX. Parameters are paths only."""
    failure: AmlError | None = None
    try:
        with _one_prefect_server():
            return _run(*_paths(enclave_dir, inbox, outbox))
    except AmlError as exc:
        failure = exc
    except Exception as exc:  # its message may hold anything: keep only the type name
        failure = InternalError(f"consortium run failed: unexpected {type(exc).__name__}")
    # Raised outside the handler, with the chain cut: Prefect pickles a failed flow's exception
    # into its storage and shows its text in the UI, so only the coded, data-free error goes.
    failure.__cause__ = failure.__context__ = None
    failure.__traceback__ = None
    raise failure
