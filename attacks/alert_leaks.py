"""Attack classes on what banks receive (issue 14, findings 5 and 6):

- `alert_foreign_details`: a member bank reads its delivered alerts looking for other banks'
  payments: their ids, accounts, bank ids, amounts, times or forwarded shares. Every alert of
  the attack run is checked against the batches that went into it: ids and accounts must be
  the bank's own, `start`/`end`/`amount` those of its own listed payments, every amount in
  the explanation explained by its own payments, no percentage, no date or clock time that is
  not one of its own payments', the score on the published 0.05 grid.
- `alert_file_size`: the operator compares the sizes of a run's alert files to learn which
  banks got alerts. Every run's files must have one size across all members.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from attacks.harness import ClassResult, Consortium

_AMOUNT = re.compile(r"(\d[\d,]*(?:\.\d+)?) ([A-Z]{3})\b")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_CLOCK = re.compile(r"\b\d{1,2}:\d{2}\b")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 0.005 * max(abs(a), abs(b), 1.0)  # any rounding to ±0.5 %


def _open_all(con: Consortium, outbox: Path, run_id: str) -> dict[str, list[dict]]:
    """Each bank's alerts of one run, decrypted as `aml open` does (library calls, so the
    check does not depend on the CLI's flags)."""
    from aml.core.crypto.container import open_bytes, parquet_to_table
    from aml.core.schema import ALERT_SCHEMA

    enclave = con.enclave_public()
    out = {}
    for bank in con.banks:
        path = outbox / bank / f"{run_id}.amla"
        _, payload = open_bytes(path.read_bytes(), con.pair(bank), enclave.ed25519, expected_recipient=bank)
        out[bank] = parquet_to_table(payload, ALERT_SCHEMA).to_pylist()
    return out


def foreign_details(alert: dict, own: dict[str, dict], foreign_ids: set[str], foreign_accounts: set[str],
                    other_banks: set[str], rates: dict, threshold: float) -> list[str]:
    """What in one alert is not the receiving bank's own (an empty list: nothing).

    `own`: txn_id -> row of every payment the bank submitted; the rest is foreign."""
    problems = []
    text = alert["explanation"]
    mine = [own[t] for t in alert["txn_ids"] if t in own]
    if len(mine) != len(alert["txn_ids"]):
        problems.append("lists a payment the bank did not submit")
    if not mine:
        return problems + ["no own payment"]
    if set(alert["txn_ids"]) & foreign_ids or any(t in text for t in foreign_ids):
        problems.append("names another bank's payment")
    if any(a in foreign_accounts for a in alert["accounts"]) or \
            any(re.search(rf"\b{re.escape(a)}\b", text) for a in foreign_accounts):
        problems.append("names another bank's account")
    if any(re.search(rf"\b{re.escape(b)}\b", text) for b in other_banks):
        problems.append("names another bank")
    times = [r["timestamp"].replace(microsecond=0) for r in mine]  # alerts keep whole seconds
    if alert["start"] != min(times) or alert["end"] != max(times):
        problems.append("time window is not that of its own payments")
    base = [r["amount"] * rates[r["currency"]] for r in mine]
    if not _close(alert["amount"], sum(base)):
        problems.append("amount is not the total of its own payments")
    if abs(alert["score"] * 20 - round(alert["score"] * 20)) > 1e-9:
        problems.append("score finer than the published 0.05 steps")
    if "%" in text:
        problems.append("states a share (percentage)")
    allowed = base + [r["amount"] for r in mine] + [sum(base), threshold]
    flows: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r, b in zip(mine, base):
        flows[r["dst_account"]][0] += b
        flows[r["src_account"]][1] += b
    allowed += [v for pair in flows.values() for v in pair if v]
    for m in _AMOUNT.finditer(text):
        value = float(m.group(1).replace(",", ""))
        if value >= 1 and not any(_close(value, a) for a in allowed):
            problems.append("states an amount its own payments do not explain")
            break
    own_times = {f(t) for t in times for f in (lambda t: t.strftime("%Y-%m-%d"), lambda t: t.strftime("%H:%M"))}
    if any(m.group(0) not in own_times for m in (*_DATE.finditer(text), *_CLOCK.finditer(text))):
        problems.append("states a date or time that is not one of its own payments'")
    return problems


def alert_classes(con: Consortium, night: dict[str, pa.Table], outbox: Path, attack_run_id: str | None,
                  run_ids: list[str], figures: dict | None = None) -> list[ClassResult]:
    """The two classes; `figures["alert_file_bytes"]` gets each run's distinct file sizes."""
    from aml.enclave.detect.config import DetectionConfig

    config = DetectionConfig.load()
    leaks = ClassResult("alert_foreign_details", "flow")
    sizes = ClassResult("alert_file_size", "flow")
    if attack_run_id is None:
        leaks.not_run = "the attack run delivered no alert files"
    else:
        alerts = _open_all(con, outbox, attack_run_id)
        rows = {b: night[b].to_pylist() for b in con.banks}
        for bank in con.banks:
            own = {r["txn_id"]: r for r in rows[bank]}
            others = [r for b in con.banks if b != bank for r in rows[b]]
            foreign_ids = {r["txn_id"] for r in others} - set(own)
            own_accounts = {r[f"{s}_account"] for r in rows[bank] for s in ("src", "dst") if r[f"{s}_bank"] == bank}
            foreign_accounts = {r[f"{s}_account"] for r in others for s in ("src", "dst")
                                if r[f"{s}_bank"] != bank} - own_accounts
            other_banks = {r[f"{s}_bank"] for b in con.banks for r in rows[b] for s in ("src", "dst")} - {bank}
            for a in alerts[bank]:
                problems = foreign_details(a, own, foreign_ids, foreign_accounts, other_banks,
                                           dict(config.rates), float(config.section("structuring")["threshold"]))
                leaks.record(f"{bank} {a['pattern']} {a['alert_id'][:8]}", "; ".join(problems) or "own only",
                             "own only", not problems)
        if leaks.tried == 0:
            leaks.not_run = "no alerts were delivered: nothing to check"
    for run_id in run_ids:
        per_bank = {b: (outbox / b / f"{run_id}.amla").stat().st_size for b in con.banks
                    if (outbox / b / f"{run_id}.amla").is_file()}
        if len(per_bank) != len(con.banks):
            sizes.record(f"run {run_id[:12]}", f"{len(per_bank)} of {len(con.banks)} files", "one size", False)
            continue
        sizes.record(f"run {run_id[:12]}", f"sizes {sorted(set(per_bank.values()))}", "one size",
                     len(set(per_bank.values())) == 1)
        if figures is not None:
            figures.setdefault("alert_file_bytes", {})[run_id] = sorted(set(per_bank.values()))
    return [leaks, sizes]
