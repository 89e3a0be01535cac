"""`aml export goaml`: one goAML STR XML file per alert, built at the bank.

Inputs are all bank-local: the opened alerts, the bank's KYC file (customer data goAML requires
for its own clients, never seen by the enclave), the FIU profile (reporting entity, code lists,
namespace) and, optionally, the bank's own batch file for the per-payment facts alerts do not
carry. Element order follows goAML 5.x. Every file is validated against the FIU's XSD (when
given) before it is written; nothing is written for an alert that does not validate.

Privacy: the XML names only the bank's own accounts and transactions. A direct counterparty at
another bank appears as a numbered placeholder ("counterparty-1"), its country as "-"
(unknown); accounts further away appear only as the enclave's placeholders in the narrative.
"""

from __future__ import annotations

import csv
import datetime as dt
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from aml.core.errors import BadInputError, ConfigError

KYC_COLUMNS = ("account", "account_name", "client_number", "branch", "currency_code",
               "personal_account_type", "opened", "status_code", "holder_first_name",
               "holder_last_name", "holder_birthdate", "holder_nationality")
KYC_DATES = ("opened", "holder_birthdate")
PROFILE_KEYS = ("rentity_id", "rentity_branch", "currency_code_local", "institution_name", "swift",
                "country_code", "reporting_person.first_name", "reporting_person.last_name",
                "location.address_type", "location.address", "location.city", "location.country_code",
                "codes.report_indicators", "codes.funds_code", "codes.transmode.default")
UNKNOWN_COUNTRY = "-"  # goAML's code for "unknown"
FOREIGN_INSTITUTION = "undisclosed (another consortium member)"


class GoAMLError(BadInputError):
    code = "goaml"


# --- inputs ------------------------------------------------------------------------------
def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def load_profile(path: Path) -> dict:
    path = Path(path)
    try:
        profile = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read profile '{path.name}': {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"profile '{path.name}' is not valid TOML ({exc})") from None
    for key in PROFILE_KEYS:
        value = _get(profile, key)
        if value is None or value == "" or value == []:
            raise GoAMLError(f"profile '{path.name}': mandatory field {key} is missing")
    try:
        if int(profile["rentity_id"]) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise GoAMLError(f"profile '{path.name}': rentity_id must be a positive integer") from None
    if not isinstance(profile["codes"]["report_indicators"], list):
        raise GoAMLError(f"profile '{path.name}': codes.report_indicators must be a list")
    return profile


def load_kyc(path: Path) -> dict[str, dict]:
    """account -> KYC row. Every mandatory column must exist; empty cells are checked per use,
    so a file may leave out rows for accounts no alert touches."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in KYC_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise GoAMLError(f"KYC file '{path.name}': missing column(s) {', '.join(missing)}")
            rows = {}
            for n, row in enumerate(reader, 2):
                row = {k: (v or "").strip() for k, v in row.items() if k}
                row["_line"] = n
                for col in KYC_DATES:
                    if row[col]:
                        try:
                            dt.date.fromisoformat(row[col])
                        except ValueError:
                            raise GoAMLError(f"KYC file '{path.name}' line {n}: {col} is not a YYYY-MM-DD date") from None
                rows[row["account"]] = row
            return rows
    except OSError as exc:
        raise GoAMLError(f"cannot read KYC file '{path.name}': {exc.strerror}") from None


# --- building -----------------------------------------------------------------------------
class _Builder:
    def __init__(self, profile: dict, kyc: dict[str, dict], kyc_name: str, bank: str):
        self.p, self.kyc, self.kyc_name, self.bank = profile, kyc, kyc_name, bank
        ns = profile.get("namespace") or ""
        self.ns = f"{{{ns}}}" if ns else ""
        codes = profile["codes"]
        self.transmode = dict(codes["transmode"])
        self.funds = str(codes["funds_code"])
        self.role = str(codes.get("signatory_role", "A"))  # goAML account_person_role: A = account holder
        self.local = str(profile["currency_code_local"])
        self._rates = None

    def el(self, parent, tag: str, text=None):
        e = ET.SubElement(parent, self.ns + tag) if parent is not None else ET.Element(self.ns + tag)
        if text is not None:
            e.text = str(text)
        return e

    def to_local(self, amount: float, currency: str) -> float:
        if currency == self.local:
            return amount
        if self._rates is None:  # the enclave's reference rates (docs/detection.md)
            from aml.enclave.detect.config import DetectionConfig

            self._rates = DetectionConfig.load().rates
        if currency not in self._rates or self.local not in self._rates:
            raise GoAMLError(f"no reference rate to convert {currency} to {self.local}")
        return amount * self._rates[currency] / self._rates[self.local]

    def kyc_row(self, account: str, alert_id: str) -> dict:
        row = self.kyc.get(account)
        if row is None:  # never print the account id: the message names the alert instead
            raise GoAMLError(f"KYC file '{self.kyc_name}' has no row for an own account of alert {alert_id}")
        for col in KYC_COLUMNS:
            if not row[col]:
                raise GoAMLError(f"KYC file '{self.kyc_name}' line {row['_line']}: mandatory field {col} is empty")
        return row

    def account_my_client(self, parent, tag: str, account: str, alert_id: str):
        k = self.kyc_row(account, alert_id)
        a = self.el(parent, tag)
        self.el(a, "institution_name", self.p["institution_name"])
        self.el(a, "swift", self.p["swift"])
        self.el(a, "branch", k["branch"])
        self.el(a, "account", account)
        self.el(a, "currency_code", k["currency_code"])
        self.el(a, "account_name", k["account_name"])
        self.el(a, "client_number", k["client_number"])
        self.el(a, "personal_account_type", k["personal_account_type"])
        s = self.el(a, "signatory")
        self.el(s, "is_primary", "1")
        person = self.el(s, "t_person")
        self.el(person, "first_name", k["holder_first_name"])
        self.el(person, "last_name", k["holder_last_name"])
        self.el(person, "birthdate", f"{k['holder_birthdate']}T00:00:00")
        self.el(person, "nationality1", k["holder_nationality"])
        self.el(s, "role", self.role)
        self.el(a, "opened", f"{k['opened']}T00:00:00")
        self.el(a, "status_code", k["status_code"])
        return a

    def foreign_account(self, parent, tag: str, placeholder: str):
        a = self.el(parent, tag)
        self.el(a, "institution_name", FOREIGN_INSTITUTION)
        self.el(a, "institution_code", "UNDISCLOSED")
        self.el(a, "account", placeholder)
        return a

    def side(self, tx, side: str, own: bool, account: str, placeholder: str, alert_id: str):
        """t_from_my_client / t_from (side 'from') or t_to_my_client / t_to (side 'to')."""
        wrapper = self.el(tx, f"t_{side}_my_client" if own else f"t_{side}")
        self.el(wrapper, f"{side}_funds_code", self.funds)
        if own:
            self.account_my_client(wrapper, f"{side}_account", account, alert_id)
            self.el(wrapper, f"{side}_country", self.p["country_code"])
        else:
            self.foreign_account(wrapper, f"{side}_account", placeholder)
            self.el(wrapper, f"{side}_country", UNKNOWN_COUNTRY)

    def narrative(self, alert: dict) -> str:
        return (f"Alert {alert['alert_id']} from the consortium's enclave-aml detection "
                f"(typology {alert['pattern']}, score {alert['score']:.2f}): {alert['explanation']} "
                f"The whole pattern spans {alert['institutions']} institutions and {alert['hops']} hops; "
                f"this bank's part: {len(alert['txn_ids'])} payment(s) totalling {alert['amount']:,.2f} "
                f"(consortium base currency) between {alert['start']:%Y-%m-%d %H:%M} and "
                f"{alert['end']:%Y-%m-%d %H:%M} UTC. Accounts at other institutions are shown only as "
                f"placeholders (ext-…, counterparty-N).")

    def report(self, alert: dict, transactions: dict[str, dict] | None, now: dt.datetime):
        p = self.p
        r = self.el(None, "report")
        self.el(r, "rentity_id", int(p["rentity_id"]))
        self.el(r, "rentity_branch", p["rentity_branch"])
        self.el(r, "submission_code", p.get("submission_code", "E"))
        self.el(r, "report_code", "STR")
        self.el(r, "entity_reference", alert["alert_id"])
        self.el(r, "submission_date", now.strftime("%Y-%m-%dT%H:%M:%S"))
        self.el(r, "currency_code_local", self.local)
        rp = self.el(r, "reporting_person")
        self.el(rp, "first_name", p["reporting_person"]["first_name"])
        self.el(rp, "last_name", p["reporting_person"]["last_name"])
        loc = self.el(r, "location")
        for key in ("address_type", "address", "city", "country_code"):
            self.el(loc, key, p["location"][key])
        self.el(r, "reason", self.narrative(alert)[:8000])
        if transactions is not None:
            self.transactions(r, alert, transactions)
        else:
            self.activity(r, alert)
        ind = self.el(r, "report_indicators")
        for code in p["codes"]["report_indicators"]:
            self.el(ind, "indicator", code)
        return r

    def transactions(self, r, alert: dict, transactions: dict[str, dict]) -> None:
        placeholders: dict[str, str] = {}  # foreign (bank, account) -> counterparty-N, per alert
        missing = [t for t in alert["txn_ids"] if t not in transactions]
        if missing:
            raise GoAMLError(f"the transactions file lacks {len(missing)} of the payments of alert "
                             f"{alert['alert_id']} (is it the batch this bank sealed?)")
        for txn_id in sorted(alert["txn_ids"], key=lambda t: (transactions[t]["timestamp"], t)):
            t = transactions[txn_id]
            tx = self.el(r, "transaction")
            self.el(tx, "transactionnumber", txn_id)
            self.el(tx, "transaction_location", self.p["rentity_branch"])
            fmt = t.get("payment_format") or "unknown"
            desc = f"{fmt} payment, part of a {alert['pattern']} alert"
            if t["currency"] != self.local:
                desc += f"; paid as {t['amount']:.2f} {t['currency']}"
            self.el(tx, "transaction_description", desc)
            self.el(tx, "date_transaction", t["timestamp"].strftime("%Y-%m-%dT%H:%M:%S"))
            self.el(tx, "transmode_code", self.transmode.get(fmt, self.transmode["default"]))
            self.el(tx, "amount_local", f"{self.to_local(float(t['amount']), t['currency']):.2f}")
            for side, b, acc in (("from", t["src_bank"], t["src_account"]), ("to", t["dst_bank"], t["dst_account"])):
                own = b == self.bank
                ph = "" if own else placeholders.setdefault((b, acc), f"counterparty-{len(placeholders) + 1}")
                self.side(tx, side, own, acc, ph, alert["alert_id"])

    def activity(self, r, alert: dict) -> None:
        act = self.el(r, "activity")
        parties = self.el(act, "report_parties")
        for account in alert["accounts"]:
            party = self.el(parties, "report_party")
            self.account_my_client(party, "account", account, alert["alert_id"])
            self.el(party, "significance", max(0, min(10, round(alert["score"] * 10))))
            self.el(party, "reason", f"own account in the {alert['pattern']} alert {alert['alert_id']}")


# --- validation and output ----------------------------------------------------------------
def load_schema(path: Path):
    import xmlschema

    path = Path(path)
    if not path.is_file():
        raise GoAMLError(f"schema '{path}' does not exist")
    head = path.read_text(encoding="utf-8-sig", errors="replace")[:4000]
    cls = xmlschema.XMLSchema11 if 'minVersion="1.1"' in head else xmlschema.XMLSchema10
    try:
        return cls(str(path))
    except Exception as exc:
        raise GoAMLError(f"schema '{path.name}' does not compile ({type(exc).__name__})") from None


def _field_of(err) -> str:
    """The element path and the kind of failure, never the offending value (it may be data)."""
    import re

    path = getattr(err, "path", None) or "?"
    reason = str(getattr(err, "reason", "") or "")
    expected = re.search(r"Tag \(?([^)]*?)\)? expected", reason)
    if expected:
        names = ", ".join(re.findall(r"[\w:.-]+", expected.group(1).replace("'", " ")))
        return f"{path}: mandatory element missing or out of order (expected {names})"
    if "not complete" in reason:
        return f"{path}: mandatory element missing ({reason.split('.')[-2].strip() if '.' in reason else 'incomplete'})"
    if reason.startswith("value must be one of"):
        codes = reason[len("value must be one of"):].strip()
        return f"{path}: value not in the FIU's code list ({codes[:120]}{'…' if len(codes) > 120 else ''})"
    return f"{path}: invalid value ({type(getattr(err, 'validator', None)).__name__})"


def validate(root, schema, alert_id: str) -> None:
    errors = list(schema.iter_errors(root))
    if errors:
        raise GoAMLError(f"goAML report for alert {alert_id} does not validate against the schema: "
                         f"{_field_of(errors[0])}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


def export_goaml(alerts: list[dict], bank: str, kyc: Path, profile: Path, out: Path,
                 xsd: Path | None = None, transactions: dict[str, dict] | None = None,
                 now: dt.datetime | None = None) -> list[Path]:
    """Write one validated goAML STR per alert into OUT; returns the paths. Builds and validates
    every report before writing any, so a failure leaves no partial export."""
    prof = load_profile(Path(profile))
    builder = _Builder(prof, load_kyc(Path(kyc)), Path(kyc).name, bank)
    schema = load_schema(Path(xsd)) if xsd else None
    now = now or dt.datetime.now(dt.timezone.utc)
    if prof.get("namespace"):
        ET.register_namespace("", prof["namespace"])
    docs = []
    for alert in alerts:
        if alert["bank"] != bank:
            raise GoAMLError(f"alert {alert['alert_id']} is addressed to another bank, not {bank}")
        root = builder.report(alert, transactions, now)
        if schema is not None:
            validate(root, schema, alert["alert_id"])
        ET.indent(root)
        docs.append((alert["alert_id"], ET.tostring(root, encoding="utf-8", xml_declaration=True)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for alert_id, data in docs:
        path = out / f"goaml-STR-{alert_id}.xml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data + b"\n")
        tmp.replace(path)
        paths.append(path)
    return paths


def export_command(a) -> int:
    from aml.bank.alerts_file import read_alerts, read_own_transactions

    alerts = read_alerts([Path(p) for p in a.alerts], bank=a.bank)
    if a.alert:
        wanted = []
        for ref in a.alert:
            hits = [x for x in alerts if x["alert_id"] == ref] or \
                   [x for x in alerts if len(ref) >= 6 and x["alert_id"].startswith(ref)]
            if len(hits) != 1:
                raise BadInputError(f"alert '{ref}' is {'ambiguous' if hits else 'not in the alerts file(s)'}")
            wanted.append(hits[0])
        alerts = wanted
    if not alerts:
        raise BadInputError("no alerts to export")
    txns = read_own_transactions(Path(a.transactions), a.bank) if a.transactions else None
    paths = export_goaml(alerts, a.bank, Path(a.kyc), Path(a.profile), Path(a.out),
                         Path(a.xsd) if a.xsd else None, txns)
    checked = f", each validated against {Path(a.xsd).name}" if a.xsd else " (not validated: no --xsd)"
    print(f"wrote {len(paths)} goAML STR file(s) to {a.out}{checked}")
    return 0
