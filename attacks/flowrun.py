"""Attack classes through the real flow: `aml run` as a subprocess on a real Prefect server.

One flow run costs seconds of Prefect start-up and enclave-worker spawn, so cases are batched:
every tampered variant goes into one inbox together with every honest bank's batch, the flow
runs once, and then each variant must sit in INBOX/quarantine/ with the expected reason code
while every honest batch is in the ledger and its bank's alert file is in the outbox.

Runs, in order:
  attack   enclave E1: honest night 0 + every tampering / forgery / malformed-batch variant
  load     E1 again: nights 1..N of every bank, malformed-but-signed row batches, a replayed
           and a rolled-back batch; two `aml run` started at once on the same inbox
  crash    a fresh enclave per crash step: killed at the step, rerun; alerts must equal the
           attack run's (same honest batches), ledger exact, work area gone
Then a byte search for the canaries planted in the data, over everything outside the banks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aml.core.crypto.container import read_header, table_to_parquet
from aml.core.crypto.keys import BankKeyPair
from aml.core.schema import TRANSACTION_SCHEMA

from attacks import cases as C
from attacks.harness import ClassResult, Consortium, Nights, cli
from attacks.payloads import bomb_payloads, malformed_payloads

ROOT = Path(__file__).resolve().parents[1]
QUARANTINE = "quarantine"


# --- Prefect server and `aml run` ---------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """One local Prefect server for every run of the suite (its PREFECT_HOME is leak-scanned).
    Reuses PREFECT_API_URL + PREFECT_HOME from the environment when both are set."""

    def __init__(self, home: Path):
        self.proc = None
        if os.environ.get("PREFECT_API_URL") and os.environ.get("PREFECT_HOME"):
            self.url, self.home = os.environ["PREFECT_API_URL"], Path(os.environ["PREFECT_HOME"])
            return
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        env = self._base_env()
        env.update(PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
        self.log = open(home / "server.out", "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-services"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Prefect server did not start; see {home / 'server.out'}")
            time.sleep(0.5)

    def _base_env(self) -> dict:
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)
        env.update(PREFECT_HOME=str(self.home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_UI_ENABLED="false")
        return env

    def env(self, **extra) -> dict:
        env = self._base_env()
        env["PREFECT_API_URL"] = self.url
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("AML_CRASH_AT", None)
        env.update(extra)
        return env

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.proc = None


class Runner:
    """Starts `aml run` subprocesses; keeps their output under WORK/logs (leak-scanned)."""

    def __init__(self, server: PrefectServer, logs: Path, log):
        self.server, self.logs, self.log = server, logs, log
        logs.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def start(self, tag: str, enclave: Path, inbox: Path, outbox: Path, **env) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        out = self.logs / f"{self.count:02d}-{tag}"
        with open(f"{out}.out", "wb") as stdout, open(f"{out}.err", "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aml.cli", "run", "--enclave", str(enclave), "--inbox", str(inbox),
                 "--outbox", str(outbox)],
                env=self.server.env(**env), stdout=stdout, stderr=stderr, cwd=str(ROOT))
        return proc, out

    def finish(self, proc: subprocess.Popen, out: Path, started: float, tag: str) -> tuple[int, str]:
        rc = proc.wait()
        # the CLI's own error line ("aml: run: CODE: ..."), not Prefect's log lines around it
        err = [line for line in Path(f"{out}.err").read_text(errors="replace").splitlines()
               if line.startswith("aml: ")]
        self.log(f"#   aml run [{tag}] exit {rc} in {time.monotonic() - started:.0f} s"
                 + (f": {err[-1][:160]}" if rc and err else ""), flush=True)
        return rc, (err[-1] if err else "")

    def run(self, tag: str, enclave: Path, inbox: Path, outbox: Path, **env) -> tuple[int, str]:
        started = time.monotonic()
        proc, out = self.start(tag, enclave, inbox, outbox, **env)
        return self.finish(proc, out, started, tag)


# --- reading what a run did --------------------------------------------------------------------

def ledger_batches(enclave: Path) -> dict[str, list[dict]]:
    """batch_id -> its ledger rows (a list, so a double count would show)."""
    path = enclave / "state" / "ledger.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT batch_id, bank, sequence, rows, run_id FROM batches").fetchall()
    finally:
        db.close()
    out: dict[str, list[dict]] = {}
    for batch_id, bank, seq, n, run_id in rows:
        out.setdefault(batch_id, []).append({"bank": bank, "sequence": seq, "rows": n, "run_id": run_id})
    return out


def quarantine_code(inbox: Path, name: str) -> str | None:
    reason = inbox / QUARANTINE / f"{name}.reason.json"
    if not reason.is_file():
        return None
    return json.loads(reason.read_text()).get("code")


class Submitted:
    """Every file put into an inbox: what should become of it, and what did."""

    def __init__(self):
        self.files: list[dict] = []

    def add(self, cls: str, name: str, inbox: Path, data: bytes | None, expected: set[str],
            rows: dict | None = None, honest: bool = False) -> dict:
        if data is not None:
            (inbox / name).write_bytes(data)
        data = (inbox / name).read_bytes()
        try:
            h = read_header(data)
            batch_id, bank, row_count = h.batch_id, h.sender, h.row_count
        except Exception:  # a mutated header: the file name is all we have
            batch_id, bank, row_count = None, None, None
        item = dict(cls=cls, name=name, inbox=inbox, expected=set(expected), rows=rows, honest=honest,
                    batch_id=batch_id, bank=bank, row_count=row_count)
        self.files.append(item)
        return item

    def outcome(self, item: dict, ledger: dict) -> tuple[str, dict]:
        """("accepted" | "skipped" | a quarantine code | "lost", details)."""
        code = quarantine_code(item["inbox"], item["name"])
        if code is not None:
            return code, {}
        recs = ledger.get(item["batch_id"] or "", [])
        if len(recs) > 1:
            return "double_counted", {}
        if recs:
            q = (item["row_count"] or 0) - recs[0]["rows"]
            return "accepted", {"quarantined_rows": q, "run_id": recs[0]["run_id"]}
        return "lost", {}


# --- the runs ---------------------------------------------------------------------------------

def _attack_cases(con: Consortium, table, rng: random.Random, canary: str, stale: Path) -> list[tuple]:
    """(class, file name, bytes, expected codes) for the attack run. Bases are fresh genuine
    files with their own sequence numbers, sealed exactly as `aml seal` does."""
    banks = con.banks
    payload = table_to_parquet(table, TRANSACTION_SCHEMA)
    rows = table.num_rows
    seq = iter(range(100, 10_000))
    out = []

    def base(bank: str, chunk: int | None = 1024) -> tuple[str, bytes]:
        return con.craft(bank, next(seq), payload, rows, chunk_size=chunk)

    def add(case: C.Case, bank: str) -> None:
        name, _ = base(bank)  # a fresh, well-formed name for the mutated file
        out.append((case.cls, name, case.data, case.expected))

    def pick(cases: list[C.Case], *names: str) -> list[C.Case]:
        chosen = [c for c in cases if any(c.name.startswith(n) for n in names)]
        return chosen

    members = set(banks)
    v = banks[0]
    pair = con.pair(v)
    for case in C.framing_flips(base(v)[1])[:2]:
        add(case, v)
    for case in pick(C.header_field_flips(base(v)[1], members), "field:kind", "field:row_count",
                     "field:sender", "field:sequence", "field:expires"):
        add(case, v)
    b1 = base(banks[1])[1]
    lay = C.layout(b1)
    add(C.Case("bitflip_body", "chunk", C.flip_bit(b1, lay.chunks[0][0] + 5), C.SIGNED_FIELD), banks[1])
    add(C.Case("bitflip_body", "signature", C.flip_bit(b1, lay.signature[0] + 3), C.SIGNED_FIELD), banks[1])
    add(C.Case("bitflip_body", "wrapped_key", C.flip_bit(b1, lay.wrapped[0] + 40), C.SIGNED_FIELD), banks[1])
    for region in ("wrapped_key", "commitment", "chunk1"):
        case = next(c for c in C.region_flips(base(v)[1], rng, 1, signer=pair) if c.name.startswith(region))
        add(case, v)
    for case in C.truncations(base(v)[1], rng, 0)[4:7]:
        add(case, v)
    for case in C.extensions(base(v)[1], rng)[:2]:
        add(case, v)
    for case in pick(C.chunk_reorders(base(v)[1]), "swap_0_1"):
        add(case, v)
    for which in ("swap_0_1", "drop_last"):  # one base each: re-signed files pass the outside
        for case in pick(C.chunk_reorders(base(v)[1], signer=pair), which):  # checks, and two with
            add(case, v)  # one batch id would (rightly) be a replay
    for case in C.header_swaps(base(v)[1], base(v)[1], signer=pair):
        add(case, v)
    stranger = BankKeyPair.generate(v)
    name, data = con.craft(v, next(seq), payload, rows, signer=stranger, sender_key_id=pair.key_id)
    out.append(("forged_signature", name, data, {"bad_signature"}))
    name, data = con.craft(v, next(seq), payload, rows, signer=con.pair(banks[2]), sender_key_id=pair.key_id)
    out.append(("forged_signature", name, data, {"bad_signature"}))
    # the member's real Ed25519 key (the signature verifies) but another sender_key_id
    mixed = BankKeyPair(BankKeyPair.generate(v).x25519, pair.ed25519, v)
    name, data = con.craft(v, next(seq), payload, rows, signer=mixed)
    out.append(("sender_key_id", name, data, {"bad_signature"}))
    name, data = con.craft(banks[3], next(seq), payload, rows, recipient=banks[0])
    out.append(("wrong_recipient", name, data, {"wrong_recipient"}))
    out.append(("stale_enclave_key", stale.name, stale.read_bytes(), {"wrong_recipient"}))
    name, data = con.craft(banks[1], next(seq), payload, rows, expires_in=-60)
    out.append(("expired", name, data, {"expired"}))
    name, data = con.craft("B99", next(seq), payload, rows, signer=BankKeyPair.generate("B99"))
    out.append(("not_a_member", name, data, {"not_a_member"}))
    for p in malformed_payloads(table, banks[2], [b for b in banks if b != banks[2]], rng, canary):
        if "accepted" in p.expected:
            continue  # signed row-level junk goes to the load run (accepted batches change alerts)
        name, data = con.craft(banks[2], next(seq), p.data, p.row_count, kind=p.kind)
        out.append(("malformed_batch", name, data, set(p.expected)))
    for p in bomb_payloads(table):  # refused before decoding; the run goes on (issue 14, finding 4)
        if "accepted" in p.expected:
            continue
        name, data = con.craft(banks[2], next(seq), p.data, p.row_count)
        out.append(("decompression_bomb", name, data, set(p.expected)))
    return out


def _deliveries(con: Consortium, outbox: Path, ledger: dict, honest: list[dict], work: Path) -> tuple[bool, list[str]]:
    """Every honest batch accepted, and its bank's alert file for that run opens with `aml open`."""
    problems = []
    for item in honest:
        recs = ledger.get(item["batch_id"], [])
        if len(recs) != 1:
            problems.append(f"honest {item['name']}: {len(recs)} ledger records")
            continue
        alert = outbox / item["bank"] / f"{recs[0]['run_id']}.amla"
        if not alert.is_file():
            problems.append(f"honest {item['bank']}: no alert file for {recs[0]['run_id']}")
            continue
        out = work / "opened" / f"{item['bank']}-{recs[0]['run_id']}.jsonl"
        rc, _, err = cli("open", "--bank", item["bank"], "--key", con.key_path(item["bank"]),
                         *con.bank_args(), "--allow-older", alert, "--out", out)
        if rc:
            problems.append(f"honest {item['bank']}: aml open failed: {err.strip()[-120:]}")
    return not problems, problems


def open_alert_sets(con: Consortium, outbox: Path, dest: Path) -> dict[str, set]:
    """Each bank's alerts over every alert file in OUTBOX/<bank>/, as comparable tuples."""
    out = {}
    for bank in con.banks:
        files = sorted((outbox / bank).glob("*.amla"))
        alerts: set = set()
        if files:
            path = dest / f"{bank}.jsonl"
            rc, _, err = cli("open", "--bank", bank, "--key", con.key_path(bank), *con.bank_args(),
                             "--allow-older", *files, "--out", path)
            if rc:
                raise RuntimeError(f"aml open failed for {bank}: {err.strip()}")
            for line in path.read_text().splitlines():
                a = json.loads(line)
                alerts.add((a["pattern"], tuple(sorted(a["accounts"])), tuple(sorted(a["txn_ids"])),
                            round(a["score"], 6), a["start"], a["end"]))
        out[bank] = alerts
    return out


def flow_classes(con: Consortium, nights: Nights, first: dict[str, Path], stale: Path, work: Path,
                 rng: random.Random, quick: bool, canary: str, log) -> tuple[list[ClassResult], int, list[str], dict]:
    """Returns (class results, batches lost, canary leaks, figures)."""
    try:
        import flows.consortium  # noqa: F401
        import aml.operator.run  # noqa: F401
    except ImportError as exc:
        return [ClassResult("flow", "flow", not_run=f"flow unavailable ({exc.name} missing)")], 0, [], {}

    server = PrefectServer(work / "prefect_home")
    runner = Runner(server, work / "logs", log)
    figures: dict = {}
    try:
        results, lost = _flow_runs(con, nights, first, stale, work, rng, quick, canary, runner, figures, log)
    finally:
        server.stop()
    leaks = leak_scan(work, server.home, nights.canaries + [canary], log)
    return results, lost, leaks, figures


def _flow_runs(con, nights, first, stale, work, rng, quick, canary, runner: Runner, figures, log):
    banks = con.banks
    sub = Submitted()
    results: dict[str, ClassResult] = {}
    inbox, outbox = work / "flow" / "inbox", work / "flow" / "outbox"
    inbox.mkdir(parents=True, exist_ok=True)

    # --- attack run ------------------------------------------------------------------------
    honest0 = [sub.add("honest", con.seal_cli(b, first[b], inbox, 1).name, inbox, None, {"accepted"}, honest=True)
               for b in banks]
    replay_copy = (inbox / honest0[0]["name"]).read_bytes()
    cases = _attack_cases(con, nights.nights[0][banks[0]], rng, canary, stale)
    for cls, name, data, expected in cases:
        sub.add(cls, name, inbox, data, expected)
    # Issue 14, finding 11: links in the inbox are never followed, even to a genuine batch.
    outside = work / "flow" / "outside_inbox"
    outside.mkdir(parents=True, exist_ok=True)
    table = nights.nights[0][banks[1]]
    name, data = con.craft(banks[1], 60_000, table_to_parquet(table, TRANSACTION_SCHEMA), table.num_rows)
    (outside / name).write_bytes(data)
    (inbox / name).symlink_to(outside / name)
    sub.add("inbox_symlink", name, inbox, None, {"bad_input"})
    (inbox / "B00-00000001-etcpasswd.amlb").symlink_to("/etc/passwd")
    sub.add("inbox_symlink", "B00-00000001-etcpasswd.amlb", inbox, None, {"bad_input"})
    log(f"# flow: attack run with {len(cases)} attack files + {len(honest0)} honest batches", flush=True)
    t0 = time.monotonic()
    rc, err = runner.run("attack", con.enclave_dir, inbox, outbox)
    figures["attack_run_seconds"] = round(time.monotonic() - t0, 1)
    ledger = ledger_batches(con.enclave_dir)
    ok_delivery, problems = _deliveries(con, outbox, ledger, honest0, work)
    run_ok = ClassResult("run_survives_attacks", "flow")
    run_ok.record("aml run exit code", f"exit {rc} {err[-80:]}", {"exit 0"}, rc == 0)
    run_ok.others_processed = ok_delivery
    run_ok.failures += problems[:5]
    results[run_ok.cls] = run_ok
    for item in sub.files:
        if item["honest"]:
            continue
        got, _ = sub.outcome(item, ledger)
        res = results.setdefault(item["cls"], ClassResult(item["cls"], "flow"))
        res.record(item["name"][:40], got, item["expected"], got in item["expected"])
        res.others_processed = ok_delivery

    # --- load: several nights, signed junk rows, replay, rollback, two runs at once --------------
    load = [sub.add("load", con.seal_cli(b, _night_file(nights, k, b, work), inbox, 1 + k).name, inbox, None,
                    {"accepted"}, honest=True)
            for k in range(1, len(nights.nights)) for b in banks]
    junk_bank = banks[1]
    seq = iter(range(500, 600))
    junk = []
    for p in malformed_payloads(nights.nights[0][junk_bank], junk_bank, [b for b in banks if b != junk_bank],
                                rng, canary):
        if "accepted" not in p.expected:
            continue
        name, data = con.craft(junk_bank, next(seq), p.data, p.row_count, kind=p.kind)
        junk.append(sub.add("signed_junk_rows", name, inbox, data, {"accepted"}, rows=p.rows))
    replay = sub.add("replay", honest0[0]["name"].replace(".amlb", "-again.amlb"), inbox, replay_copy, {"skipped"})
    rollback = sub.add("replay", con.seal_cli(banks[2], first[banks[2]], inbox, 1).name, inbox, None, {"replay"})
    log(f"# flow: load: {len(load)} batches over {len(nights.nights) - 1} nights, {len(junk)} junk-row batches, "
        "replay + rollback; two runs at once", flush=True)
    before = ledger_batches(con.enclave_dir)
    t0 = time.monotonic()
    pa_, oa = runner.start("load-a", con.enclave_dir, inbox, outbox)
    pb, ob = runner.start("load-b", con.enclave_dir, inbox, outbox)
    rca, erra = runner.finish(pa_, oa, t0, "load-a")
    rcb, errb = runner.finish(pb, ob, t0, "load-b")
    figures["concurrent_exit_codes"] = [rca, rcb]
    conc = ClassResult("concurrent_runs", "flow")
    both = sorted([(rca, erra), (rcb, errb)])
    # one run may refuse with `busy` (the run lock never waits); neither may fail otherwise
    conc.record("two runs at once", f"exits {rca},{rcb}", {"0 and 0|busy"},
                both[0][0] == 0 and (both[1][0] == 0 or both[1][1].startswith("aml: run: busy:")))
    ledger = ledger_batches(con.enclave_dir)
    if any(i["batch_id"] not in ledger for i in load + junk):
        runner.run("load-mopup", con.enclave_dir, inbox, outbox)
        ledger = ledger_batches(con.enclave_dir)
    figures["load_seconds"] = round(time.monotonic() - t0, 1)
    ok_load, problems = _deliveries(con, outbox, ledger, load, work)
    conc.others_processed = ok_load
    conc.failures += problems[:5]
    for item in load:
        got, _ = sub.outcome(item, ledger)
        conc.record(f"load {item['name'][:30]}", got, {"accepted"}, got == "accepted")
    results[conc.cls] = conc
    for item in junk:
        got, info = sub.outcome(item, ledger)
        want_q = sum(item["rows"].values())
        res = results.setdefault(item["cls"], ClassResult(item["cls"], "flow"))
        res.record(item["name"][:40], f"{got} q={info.get('quarantined_rows')}", f"accepted q={want_q}",
                   got == "accepted" and info.get("quarantined_rows") == want_q)
        res.others_processed = ok_load
    rep = results.setdefault("replay", ClassResult("replay", "flow"))
    for item in (replay, rollback):
        got, _ = sub.outcome(item, ledger)
        if item is replay:
            # the very same bytes again: skipped as already processed, still counted once
            counted = len(ledger.get(item["batch_id"], []))
            got = "skipped" if got == "accepted" and counted == 1 and before.get(item["batch_id"]) else got
        rep.record(item["name"][:40], got, item["expected"], got in item["expected"])
    rep.others_processed = ok_load
    for b in ledger.values():
        if len(b) > 1:
            conc.failures.append("a batch is recorded twice in the ledger")

    # --- what the alerts and their files give away (issue 14, findings 5 and 6) ---------------
    from attacks.alert_leaks import alert_classes

    attack_runs = {r["run_id"] for i in honest0 for r in ledger.get(i["batch_id"], [])}
    all_runs = sorted({r["run_id"] for recs in ledger.values() for r in recs})
    for res in alert_classes(con, nights.nights[0], outbox, min(attack_runs) if len(attack_runs) == 1 else None,
                             all_runs, figures):
        results[res.cls] = res

    # --- crash injection -------------------------------------------------------------------------
    from flows.consortium import CRASH_STEPS

    steps = ("delivered",) if quick else CRASH_STEPS
    log(f"# flow: crash injection at {', '.join(steps)}", flush=True)
    results["crash_recovery"] = crash_classes(con, first, work / "crash", steps, runner)

    # --- the enclave's sealed state: membership, counts before commit, rollback (issue 14) ------
    from attacks.enclave_state import state_classes

    results.update({r.cls: r for r in state_classes(con, first, work / "state", runner, log)})

    # --- bookkeeping: nothing lost -------------------------------------------------------------
    ledger = ledger_batches(con.enclave_dir)
    lost = 0
    for item in sub.files:
        got, _ = sub.outcome(item, ledger)
        if got in ("lost", "double_counted"):
            lost += 1
            log(f"#   lost or double counted: {item['cls']} {item['name']} ({got})")
    figures["files_submitted"] = len(sub.files)
    return list(results.values()), lost


def _night_file(nights: Nights, k: int, bank: str, work: Path) -> Path:
    from attacks.harness import write_batch

    return write_batch(nights.nights[k][bank], work / "banks" / f"night{k}-{bank}.parquet")


def _crash_template(con: Consortium, first: dict[str, Path], root: Path) -> tuple[Path, list[str]]:
    """A fresh enclave (same members) with every bank's night-0 batch sealed into its inbox.
    Copies of it share keys and batch files, so they make the same run id and the same alerts."""
    enclave, inbox = root / "enclave", root / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    rc, _, err = cli("enclave", "init", "--dir", enclave, "--members", con.keys_dir)
    if rc:
        raise RuntimeError(f"enclave init failed: {err.strip()}")
    ids = []
    for bank in con.banks:
        pinned = root / "bank-policy" / "policy.json"  # the banks' pinned copy of this enclave's policy
        pinned.parent.mkdir(parents=True, exist_ok=True)
        pinned.write_bytes((enclave / "policy.json").read_bytes())
        rc, out, err = cli("seal", "--bank", bank, "--key", con.key_path(bank),
                           *con.bank_args(enclave / "attestation.json", pinned), "--sequence", "1", first[bank],
                           "--out", inbox)
        if rc:
            raise RuntimeError(f"aml seal failed: {err.strip()}")
        ids.append(read_header(Path(out.strip().split("sealed ", 1)[1])).batch_id)
    return root, ids


def _copy_of(template: Path, dest: Path) -> tuple[Path, Path, Path]:
    shutil.copytree(template, dest, symlinks=True)
    return dest / "enclave", dest / "inbox", dest / "outbox"


def _alerts_of(con: Consortium, root: Path) -> dict[str, set]:
    mirror = Consortium.__new__(Consortium)
    mirror.root, mirror.banks, mirror.keys_dir, mirror.enclave_dir = root, con.banks, con.keys_dir, root / "enclave"
    return open_alert_sets(mirror, root / "outbox", root / "opened")


def _crash_checks(con: Consortium, root: Path, ids: list[str], rc_crash: int, rc_rerun: int, err: str,
                  reference: dict[str, set] | None) -> list[str]:
    """What must hold after a crash at some step and one rerun."""
    problems = []
    if rc_crash == 0:
        problems.append("the crash hook did not fire")
    if rc_rerun != 0:
        problems.append(f"rerun failed: {err[-80:]}")
    ledger = ledger_batches(root / "enclave")
    counts = [len(ledger.get(i, [])) for i in ids]
    if counts != [1] * len(ids):
        problems.append(f"ledger records per batch {counts} (lost or double counted)")
    work_dir = root / "enclave" / "work"
    if work_dir.exists() and any(work_dir.iterdir()):
        problems.append("work area left behind")
    if not problems and reference is not None:
        alerts = _alerts_of(con, root)
        diff = {b: len(alerts[b] ^ reference[b]) for b in con.banks if alerts[b] != reference[b]}
        if diff:
            problems.append(f"alerts differ from the uninterrupted run: {diff}")
    return problems


def crash_classes(con: Consortium, first: dict[str, Path], root: Path, steps, runner: Runner) -> ClassResult:
    """Per step: a copy of one template enclave is killed at the step (AML_CRASH_AT) and rerun;
    another copy runs uninterrupted as the reference."""
    res = ClassResult("crash_recovery", "flow")
    template, ids = _crash_template(con, first, root / "template")
    enclave, inbox, outbox = _copy_of(template, root / "reference")
    t0 = time.monotonic()
    ref_proc = runner.start("reference", enclave, inbox, outbox)
    copies = {step: _copy_of(template, root / step) for step in steps}
    first_step = steps[0]
    # the reference and the first crash run start together: Prefect start-up overlaps
    crash_proc = runner.start(f"crash-at-{first_step}", *copies[first_step], AML_CRASH_AT=first_step)
    rc_ref, err_ref = runner.finish(*ref_proc, t0, "reference")
    reference = _alerts_of(con, root / "reference") if rc_ref == 0 else None
    if reference is None:
        res.record("reference run", f"exit {rc_ref} {err_ref}", {"exit 0"}, False)
    for step in steps:
        if step == first_step:
            rc1, _ = runner.finish(*crash_proc, t0, f"crash-at-{step}")
        else:
            rc1, _ = runner.run(f"crash-at-{step}", *copies[step], AML_CRASH_AT=step)
        rc2, err2 = runner.run(f"rerun-after-{step}", *copies[step])
        problems = _crash_checks(con, root / step, ids, rc1, rc2, err2, reference)
        res.record(f"crash at {step}", "; ".join(problems) or "ok", {"ok"}, not problems)
    return res


# --- leak scan ----------------------------------------------------------------------------------

def leak_scan(work: Path, prefect_home: Path, canaries: list[str], log) -> list[str]:
    """Byte search for the canaries (and for any plaintext Parquet file) in everything the
    operator side can read: Prefect's home (database, logs, storage), the temp dir, inboxes,
    quarantine, outboxes, enclave state and the runs' output. Only the banks' own directories
    (`banks/`, `opened/`) may hold plaintext."""
    needles = [c.encode() for c in canaries]
    allowed = {work / "banks", work / "opened", work / "bankside"}
    roots = [prefect_home, work]
    seen: set[Path] = set()
    leaks: list[str] = []
    scanned = 0
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if not path.is_file() or path in seen or any(a in path.parents for a in allowed):
                continue
            if "opened" in path.parts:  # what `aml open` wrote for a bank
                continue
            seen.add(path)
            try:
                data = path.read_bytes()
            except OSError:
                continue
            scanned += 1
            for needle in needles:
                if needle in data:
                    leaks.append(f"{path.relative_to(root)}: canary {needle.decode()[:10]}...")
                    break
            if data[:4] == b"PAR1":
                leaks.append(f"{path.relative_to(root)}: plaintext Parquet outside the enclave")
    log(f"# leak scan: {scanned} files, {len(leaks)} leaks", flush=True)
    return leaks
