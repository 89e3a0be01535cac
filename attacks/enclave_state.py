"""Attack classes against the enclave's run-time trust in the operator's files (issue 14,
findings 3, 7 and 9), through the real flow (`aml run` subprocesses on the suite's server):

  hybrid_member_key  the operator rewrites a member's key file: the bank's real Ed25519 key with
                     an X25519 key the operator holds. The member must be refused (its batch left
                     in the inbox) and no alert file sealed to the operator's key; the other banks
                     still run.
  count_query        a run killed after detection, before its commit: nothing count-bearing may
                     have reached Prefect or the terminal; a rerun over a subset of its batches
                     (one moved out of the inbox) must be refused; with the batch back, the rerun
                     commits every batch exactly once.
  ledger_rollback    after a committed run: the ledger deleted (rolled back to before the run),
                     the enclave's sealed state deleted, the history file deleted, the history
                     window narrowed with AML_HISTORY_DAYS: each run refused with its code,
                     nothing processed again.

The sender_key_id mismatch (a file signed with the real Ed25519 key, naming another key id) is
a case of the flow attack run (`attacks.flowrun._attack_cases`).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from aml.core.crypto.container import read_header
from aml.core.crypto.keys import PublicKeys, load_public

from attacks.harness import ClassResult

_CODE = re.compile(r"^aml: run: ([a-z_]+): ")
_FLOW_RUN = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")
COUNT_WORDS = ("cross-bank", "detection:", " alerts")


def _code(err: str) -> str:
    m = _CODE.match(err or "")
    return m.group(1) if m else "?"


def _flow_run_logs(api: str, log_file: Path) -> list[str]:
    """Every log message the server holds for the flow run named in an `aml run` stderr."""
    m = _FLOW_RUN.search(log_file.read_text(errors="replace"))
    if not m:
        return []
    body = json.dumps({"logs": {"flow_run_id": {"any_": [m.group(1)]}}, "limit": 200}).encode()
    req = urllib.request.Request(f"{api}/logs/filter", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return [log["message"] for log in json.loads(r.read())]


def state_classes(con, first: dict[str, Path], root: Path, runner, log) -> list[ClassResult]:
    from attacks.flowrun import _copy_of, _crash_template, ledger_batches

    template, ids = _crash_template(con, first, root / "template")
    victim = con.banks[1]
    hybrid_res, query_res, rollback_res = (ClassResult(c, "flow") for c in
                                           ("hybrid_member_key", "count_query", "ledger_rollback"))
    log("# flow: enclave state: hybrid member key, count query, ledger rollback", flush=True)

    # phase 1, side by side: the hybrid member file; a run killed before its commit
    hy = _copy_of(template, root / "hybrid")
    real = load_public(hy[0] / "members" / f"{victim}.pub")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    hybrid = PublicKeys(X25519PrivateKey.generate().public_key(), real.ed25519, victim)
    (hy[0] / "members" / f"{victim}.pub").write_text(json.dumps(hybrid.to_json()))
    q = _copy_of(template, root / "query")
    t0 = time.monotonic()
    hy_proc = runner.start("hybrid-member", *hy)
    q_proc = runner.start("query-killed", *q, AML_CRASH_AT="detected")
    rc_hy, err_hy = runner.finish(*hy_proc, t0, "hybrid-member")
    rc_q, _ = runner.finish(*q_proc, t0, "query-killed")

    ledger = ledger_batches(hy[0])
    held = [f for f in hy[1].glob(f"{victim}-*.amlb")]
    sealed_to = {read_header(f).recipient_key_id for f in hy[2].rglob("*.amla")}
    hybrid_res.record("run exit", f"exit {rc_hy} {err_hy[-60:]}", {"exit 0"}, rc_hy == 0)
    hybrid_res.record("victim's batch held in the inbox", f"{len(held)} held", {"1 held"},
                      len(held) == 1 and not list((hy[1] / "quarantine").glob(f"{victim}-*")))
    hybrid_res.record("nothing sealed to the operator's key", "sealed to it" if hybrid.key_id in sealed_to else "none",
                      {"none"}, hybrid.key_id not in sealed_to and not (hy[2] / victim).exists())
    others = [b for b in con.banks if b != victim]
    hybrid_res.others_processed = rc_hy == 0 and all((hy[2] / b).is_dir() for b in others) and \
        sum(len(v) for v in ledger.values()) == len(others)

    # the killed run: nothing count-bearing in what it printed or sent to Prefect
    out = next(iter(sorted(runner.logs.glob("*-query-killed.err"))))
    time.sleep(2)  # the server stores what the run sent it
    shown = _flow_run_logs(runner.server.url, out) + out.read_text(errors="replace").splitlines() + \
        out.with_suffix(".out").read_text(errors="replace").splitlines()
    leaked = [m for m in shown if any(w in m for w in COUNT_WORDS) and "Finished in state" not in m]
    query_res.record("killed before commit", f"exit {rc_q}", {"exit 137"}, rc_q == 137)
    query_res.record("counts before the commit", f"{len(leaked)} count lines" + (f": {leaked[0][:60]}" if leaked else ""),
                     {"0 count lines"}, not leaked)

    # phase 2: the operator reruns over a subset of the pending batches
    aside = root / "query-aside"
    aside.mkdir()
    moved = sorted(q[1].glob(f"{con.banks[-1]}-*.amlb"))
    for f in moved:
        f.rename(aside / f.name)
    rc, err = runner.run("query-subset", *q)
    query_res.record("rerun over a subset", f"exit {rc} {_code(err)}", {"refused pending_run"},
                     rc != 0 and _code(err) == "pending_run" and not ledger_batches(q[0]))
    for f in moved:
        (aside / f.name).rename(f)
    rc, err = runner.run("query-rerun", *q)
    ledger = ledger_batches(q[0])
    counted = [len(ledger.get(i, [])) for i in ids]
    query_res.record("rerun over the same batches", f"exit {rc}, ledger {counted}", {"exit 0, each once"},
                     rc == 0 and counted == [1] * len(ids))
    query_res.others_processed = rc == 0 and all((q[2] / b).is_dir() for b in con.banks)

    # phase 3, side by side on copies of the committed enclave: roll back, delete, narrow
    cases = {}
    for name in ("ledger-deleted", "state-deleted", "history-deleted", "window-narrowed"):
        cases[name] = _copy_of(root / "query", root / f"rollback-{name}")
    for f in (cases["ledger-deleted"][0] / "state").glob("ledger.sqlite*"):
        f.unlink()
    (cases["state-deleted"][0] / "state" / "enclave-state.json").unlink()
    for f in (cases["history-deleted"][0] / "state").glob("history-*.aes"):
        f.unlink()
    t0 = time.monotonic()
    procs = {name: runner.start(f"rollback-{name}", *paths,
                                **({"AML_HISTORY_DAYS": "1"} if name == "window-narrowed" else {}))
             for name, paths in cases.items()}
    expected = {"ledger-deleted": "rollback", "state-deleted": "rollback", "history-deleted": "rollback",
                "window-narrowed": "config"}
    for name, proc in procs.items():
        rc, err = runner.finish(*proc, t0, f"rollback-{name}")
        ledger = ledger_batches(cases[name][0])
        again = sum(1 for recs in ledger.values() for r in recs if r["run_id"] and len(recs) > 1)
        fresh = len(ledger) if name == "ledger-deleted" else 0
        rollback_res.record(name, f"exit {rc} {_code(err)}", {f"refused {expected[name]}"},
                            rc != 0 and _code(err) == expected[name] and again == 0 and fresh == 0)
    rollback_res.others_processed = None
    return [hybrid_res, query_res, rollback_res]
