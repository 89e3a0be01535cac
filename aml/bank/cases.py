"""`aml cases`: the bank's case store, one case per alert, with a hash-chained event log.

Runs at the bank, offline, on a local SQLite file. Every change (case opened, status,
disposition, assignee, note) is one row in `events`, whose hash covers the previous row's hash
and the change itself (who, when, field, old -> new). `verify` recomputes the chain and replays it
against the current case rows, so an edit to a past event, a deleted event, or a case row changed
behind the log's back is found. SQLite triggers also refuse UPDATE/DELETE on `events`; they
stop accidents, the chain catches the deliberate (a trigger can be dropped). Truncating the tail
of the log keeps the chain valid: `verify --expect-head` against a head kept elsewhere finds that.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import sqlite3
from pathlib import Path

from aml.core.errors import BadInputError, VerificationError

DEFAULT_DB = "cases.sqlite"
STATUSES = ("new", "in_review", "closed")
DISPOSITIONS = ("false_positive", "valuable", "confirmed_laundering", "sar_filed", "inconclusive")
FIELDS = ("status", "disposition", "assignee")
GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    alert_id TEXT PRIMARY KEY, alert TEXT NOT NULL, status TEXT NOT NULL,
    disposition TEXT, assignee TEXT, notes TEXT NOT NULL DEFAULT '', opened TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, at TEXT NOT NULL, who TEXT NOT NULL,
    field TEXT NOT NULL, old TEXT, new TEXT, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS events_append_only_u BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'the case event log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_d BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'the case event log is append-only'); END;
"""


class CaseLogError(VerificationError):
    """The case event log does not verify: a past event or a case row was altered."""

    code = "case_log"


def default_db() -> Path:
    return Path(os.environ.get("AML_CASES_DB") or DEFAULT_DB)


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still record something
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _alert_json(alert: dict) -> str:
    """Canonical JSON of an alert (times as ISO strings), what the 'opened' event hashes."""
    row = dict(alert)
    for k in ("start", "end"):
        if isinstance(row.get(k), dt.datetime):
            row[k] = row[k].isoformat().replace("+00:00", "Z")
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def _event_hash(prev: str, seq: int, alert_id: str, at: str, who: str, field: str,
                old: str | None, new: str | None) -> str:
    body = json.dumps([seq, alert_id, at, who, field, old, new], ensure_ascii=False)
    return hashlib.sha256(f"{prev}\n{body}".encode("utf-8")).hexdigest()


def _note_line(at: str, who: str, text: str) -> str:
    return f"{at} {who}: {text}"


class CaseStore:
    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise BadInputError(f"case store '{self.path}' does not exist (fill it with `aml cases import`)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            raise BadInputError(f"'{self.path}' is not a case store (not an SQLite database)") from None
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- bank ------------------------------------------------------------------------------
    @property
    def bank(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'bank'").fetchone()
        return row[0] if row else None

    def _claim_bank(self, bank: str) -> None:
        have = self.bank
        if have is None:
            self.db.execute("INSERT INTO meta VALUES ('bank', ?)", (bank,))
        elif have != bank:
            raise BadInputError(f"case store '{self.path.name}' belongs to bank {have}, not {bank}")

    # --- the log ----------------------------------------------------------------------------
    def _append(self, alert_id: str, who: str, field: str, old, new, at: str) -> None:
        last = self.db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last["seq"] + 1, last["hash"]) if last else (1, GENESIS)
        old = None if old is None else str(old)
        new = None if new is None else str(new)
        h = _event_hash(prev, seq, alert_id, at, who, field, old, new)
        self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, alert_id, at, who, field, old, new, prev, h))

    # --- commands ---------------------------------------------------------------------------
    def import_alerts(self, alerts: list[dict], who: str, bank: str | None = None) -> int:
        """Open a case per alert not seen before; returns how many were new."""
        added = 0
        with self.db:  # one transaction: all or nothing
            for alert in alerts:
                if bank is not None and alert["bank"] != bank:
                    raise BadInputError(f"an alert is addressed to another bank, not {bank}")
                self._claim_bank(alert["bank"])
                if self.db.execute("SELECT 1 FROM cases WHERE alert_id = ?", (alert["alert_id"],)).fetchone():
                    continue
                at, body = _now(), _alert_json(alert)
                self.db.execute("INSERT INTO cases (alert_id, alert, status, opened) VALUES (?, ?, 'new', ?)",
                                (alert["alert_id"], body, at))
                self._append(alert["alert_id"], who, "opened", None,
                             hashlib.sha256(body.encode("utf-8")).hexdigest(), at)
                self._append(alert["alert_id"], who, "status", None, "new", at)
                added += 1
        return added

    def resolve(self, ref: str) -> str:
        """A full alert id from an id or a unique prefix of at least 6 characters."""
        if self.db.execute("SELECT 1 FROM cases WHERE alert_id = ?", (ref,)).fetchone():
            return ref
        if len(ref) >= 6:
            hits = [r[0] for r in self.db.execute(
                "SELECT alert_id FROM cases WHERE alert_id LIKE ? ESCAPE '\\'",
                (ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",))]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise BadInputError(f"case id prefix '{ref}' is ambiguous ({len(hits)} cases)")
        raise BadInputError(f"no case '{ref}' in '{self.path.name}'")

    def update(self, ref: str, who: str, status: str | None = None, disposition: str | None = None,
               assignee: str | None = None, note: str | None = None) -> list[str]:
        """Apply the given changes to one case; returns the fields that changed."""
        if status is not None and status not in STATUSES:
            raise BadInputError(f"status must be one of {', '.join(STATUSES)}")
        if disposition is not None and disposition not in DISPOSITIONS:
            raise BadInputError(f"disposition must be one of {', '.join(DISPOSITIONS)}")
        if note is not None and not note.strip():
            raise BadInputError("a note must not be empty")
        alert_id = self.resolve(ref)
        changed = []
        with self.db:
            row = self.db.execute("SELECT * FROM cases WHERE alert_id = ?", (alert_id,)).fetchone()
            at = _now()
            for field, value in (("status", status), ("disposition", disposition), ("assignee", assignee)):
                if value is not None and value != row[field]:
                    self.db.execute(f"UPDATE cases SET {field} = ? WHERE alert_id = ?", (value, alert_id))
                    self._append(alert_id, who, field, row[field], value, at)
                    changed.append(field)
            if note is not None:
                text = " ".join(note.split())  # one line: the notes column is one line per note
                line = _note_line(at, who, text)
                notes = f"{row['notes']}\n{line}" if row["notes"] else line
                self.db.execute("UPDATE cases SET notes = ? WHERE alert_id = ?", (notes, alert_id))
                self._append(alert_id, who, "note", None, text, at)
                changed.append("note")
        return changed

    def cases(self, status=None, disposition=None, pattern=None, assignee=None,
              min_score=None) -> list[dict]:
        """Cases (alert fields plus case fields), highest score first, filtered."""
        out = []
        for row in self.db.execute("SELECT * FROM cases"):
            case = json.loads(row["alert"])
            case.update(status=row["status"], disposition=row["disposition"], assignee=row["assignee"],
                        notes=row["notes"], opened=row["opened"])
            if ((status and case["status"] != status) or (disposition and case["disposition"] != disposition)
                    or (pattern and case["pattern"] != pattern) or (assignee and case["assignee"] != assignee)
                    or (min_score is not None and case["score"] < min_score)):
                continue
            out.append(case)
        out.sort(key=lambda c: (-c["score"], c["alert_id"]))
        return out

    def events(self, alert_id: str | None = None) -> list[dict]:
        q = "SELECT seq, alert_id, at, who, field, old, new FROM events"
        rows = self.db.execute(q + " WHERE alert_id = ? ORDER BY seq", (alert_id,)) if alert_id \
            else self.db.execute(q + " ORDER BY seq")
        return [dict(r) for r in rows]

    def verify(self, expect_head: str | None = None) -> tuple[int, str]:
        """Recompute the chain and replay it against the case rows; returns (events, head).

        Raises CaseLogError naming the first event or case that does not match."""
        prev, n = GENESIS, 0
        state: dict[str, dict] = {}
        for r in self.db.execute("SELECT * FROM events ORDER BY seq"):
            n += 1
            if r["seq"] != n:
                raise CaseLogError(f"case log broken: event {n} is missing (next is {r['seq']})")
            if r["prev"] != prev:
                raise CaseLogError(f"case log broken at event {n}: it does not follow event {n - 1}")
            if _event_hash(prev, r["seq"], r["alert_id"], r["at"], r["who"], r["field"], r["old"],
                           r["new"]) != r["hash"]:
                raise CaseLogError(f"case log broken: event {n} was altered after it was written")
            prev = r["hash"]
            s = state.setdefault(r["alert_id"], {"notes": []})
            if r["field"] == "note":
                s["notes"].append(_note_line(r["at"], r["who"], r["new"]))
            else:
                if r["field"] in FIELDS and s.get(r["field"]) != r["old"]:
                    raise CaseLogError(f"case log broken at event {n}: its old value is not the previous new value")
                s[r["field"]] = r["new"]
        if expect_head is not None and expect_head != prev:
            raise CaseLogError("case log does not end at the expected head (events were removed or added)")
        cases = {r["alert_id"]: r for r in self.db.execute("SELECT * FROM cases")}
        for alert_id in sorted(set(cases) | set(state)):
            if alert_id not in cases or alert_id not in state:
                raise CaseLogError(f"case {alert_id} and the event log disagree (case or its events missing)")
            c, s = cases[alert_id], state[alert_id]
            if hashlib.sha256(c["alert"].encode("utf-8")).hexdigest() != s.get("opened"):
                raise CaseLogError(f"case {alert_id}: the alert was changed after the case was opened")
            for field in FIELDS:
                if c[field] != s.get(field):
                    raise CaseLogError(f"case {alert_id}: {field} was changed without an event")
            if c["notes"] != "\n".join(s["notes"]):
                raise CaseLogError(f"case {alert_id}: notes were changed without an event")
        return n, prev


# --- output ------------------------------------------------------------------------------
LIST_COLUMNS = ("alert_id", "pattern", "score", "amount", "start", "status", "disposition", "assignee")
EXPORT_COLUMNS = ("alert_id", "bank", "pattern", "score", "amount", "start", "end", "institutions",
                  "hops", "accounts", "txn_ids", "status", "disposition", "assignee", "opened",
                  "notes", "explanation")


def _cell(case: dict, col: str) -> str:
    v = case.get(col)
    if v is None:
        return "-"
    if col == "score":
        return f"{v:.2f}"
    if col == "amount":
        return f"{v:,.0f}"
    if col in ("start", "end"):
        return str(v)[:16].replace("T", " ")
    return str(v)


def table(cases: list[dict], columns=LIST_COLUMNS) -> str:
    """A plain terminal table."""
    rows = [[c.upper() for c in columns]] + [[_cell(case, c) for c in columns] for case in cases]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    right = {"score", "amount"}
    return "\n".join("  ".join(cell.rjust(w) if col in right else cell.ljust(w)
                               for cell, w, col in zip(r, widths, columns)).rstrip() for r in rows)


def show(case: dict, events: list[dict]) -> str:
    lines = [f"case {case['alert_id']}  [{case['pattern']}, score {case['score']:.2f}]",
             f"  status {case['status']}, disposition {case['disposition'] or '-'}, "
             f"assignee {case['assignee'] or '-'}",
             f"  window {case['start']} .. {case['end']}; amount {case['amount']:,.2f}; "
             f"{case['institutions']} institutions, {case['hops']} hops",
             f"  your accounts: {', '.join(case['accounts'])}",
             f"  your transactions ({len(case['txn_ids'])}): {', '.join(case['txn_ids'])}",
             f"  why: {case['explanation']}", "  history:"]
    for e in events:
        change = f"{e['old'] or '-'} -> {e['new']}" if e["field"] != "opened" else "case opened"
        if e["field"] == "note":
            change = f"note: {e['new']}"
        lines.append(f"    #{e['seq']} {e['at']} {e['who']}: {e['field']} {change}"
                     if e["field"] not in ("opened", "note") else f"    #{e['seq']} {e['at']} {e['who']}: {change}")
    return "\n".join(lines)


def export(cases: list[dict], fmt: str) -> str:
    rows = [{k: case.get(k) for k in EXPORT_COLUMNS} for case in cases]
    if fmt == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def cases_command(a) -> int:
    """Dispatch for `aml cases SUBCOMMAND` (argparse namespace from aml/cli.py)."""
    from aml.bank.alerts_file import read_alerts

    who = getattr(a, "who", None) or current_user()
    db = Path(a.db) if a.db else default_db()
    if a.cases_command == "import":
        alerts = read_alerts([Path(p) for p in a.alerts], bank=a.bank)
        with CaseStore(db, create=True) as store:
            added = store.import_alerts(alerts, who, bank=a.bank)
        print(f"{added} new case(s), {len(alerts) - added} already known, in {db}")
        return 0
    with CaseStore(db) as store:
        if a.cases_command == "list":
            cases = store.cases(a.status, a.disposition, a.pattern, a.assignee, a.min_score)
            print(table(cases) if cases else "no cases match")
        elif a.cases_command == "show":
            alert_id = store.resolve(a.case)
            case = [c for c in store.cases() if c["alert_id"] == alert_id][0]
            print(show(case, store.events(alert_id)))
        elif a.cases_command == "set":
            if not any(v is not None for v in (a.status, a.disposition, a.assignee, a.note)):
                raise BadInputError("nothing to set: give --status, --disposition, --assignee or --note")
            changed = store.update(a.case, who, a.status, a.disposition, a.assignee, a.note)
            print(f"{store.resolve(a.case)}: " + (", ".join(changed) + " changed" if changed else "unchanged"))
        elif a.cases_command == "verify":
            n, head = store.verify(a.expect_head)
            print(f"case log ok: {n} events, head {head}")
        elif a.cases_command == "export":
            text = export(store.cases(a.status, a.disposition, a.pattern, a.assignee, a.min_score), a.format)
            if a.out:
                Path(a.out).write_text(text, encoding="utf-8")
                print(f"wrote {a.out}")
            else:
                print(text, end="")
    return 0
