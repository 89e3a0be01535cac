"""The privacy rule on every analyst output: a bank's case export, HTML report and goAML files
name no other bank's account, transaction or bank id, even though they are built from the
bank's own batch (whose payments do name foreign counterparties). Same scenarios as
tests/test_alert_scoping.py."""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from test_alert_scoping import BANKS, KEY, _instances, scenarios

from aml.enclave.detect.alerts import cut_alerts


def _outputs(alerts: list[dict], own_rows: dict[str, dict], bank: str, own_accounts: set[str]) -> dict[str, str]:
    from aml.bank.cases import CaseStore, export
    from aml.bank.goaml import export_goaml
    from aml.bank.report import build_report
    from aml.tools.demo import invent_kyc

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        alerts_file = d / "alerts.jsonl"
        alerts_file.write_text("")
        with CaseStore(d / "cases.sqlite", create=True) as store:
            store.import_alerts(alerts, "ada")
            cases = store.cases()
            store.update(alerts[0]["alert_id"], "ada", status="closed", disposition="sar_filed", note="filed")
            out = {"cases.json": export(store.cases(), "json"), "cases.csv": export(cases, "csv")}
        out["report.html"] = build_report(alerts, bank, [alerts_file], own_rows, None,
                                          {c["alert_id"]: c for c in cases})
        kyc = invent_kyc(own_accounts, d / "kyc.csv")
        profile = Path(__file__).resolve().parents[1] / "sample_data" / "goaml" / "profile.toml"
        for with_txns in (own_rows, None):
            for p in export_goaml(alerts, bank, kyc, profile, d / ("g1" if with_txns else "g2"),
                                  transactions=with_txns, now=dt.datetime(2026, 3, 1)):
                out[f"{p.parent.name}/{p.name}"] = p.read_text()
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_analyst_outputs_reveal_nothing_foreign(scenario):
    _, g, specs, members = scenario
    instances = _instances(g, specs)
    tables = cut_alerts(g, instances, members, alert_key=KEY)
    acc_bank = dict(zip(g.node_account, g.node_bank))
    edges = g.edges
    for bank, table in tables.items():
        alerts = table.to_pylist()
        if not alerts:
            continue
        # the bank's own batch: every row it submitted (foreign counterparties included)
        mine = edges[[bank in s for s in edges.submitted_by]]
        own_rows = {r["txn_id"]: {
            "txn_id": r["txn_id"], "timestamp": dt.datetime.fromtimestamp(int(r["t"]), dt.timezone.utc),
            "src_bank": r["src_bank"], "src_account": str(g.node_account[r["src"]]),
            "dst_bank": r["dst_bank"], "dst_account": str(g.node_account[r["dst"]]),
            "amount": float(r["amount_orig"]), "currency": r["currency"], "payment_format": r["payment_format"],
        } for r in mine.to_dict("records")}
        own_accounts = {a for a, b in acc_bank.items() if b == bank}
        foreign_accounts = set(acc_bank) - own_accounts
        foreign_txns = set(edges.txn_id) - set(own_rows)
        for name, text in _outputs(alerts, own_rows, bank, own_accounts).items():
            words = set(re.findall(r"[AT]\d{7}", text))
            assert not (words & foreign_accounts), (name, words & foreign_accounts)
            assert not (words & foreign_txns), (name, words & foreign_txns)
            assert not (set(re.findall(r"\b[BX]\d\d\b", text)) - {bank}), name
            # every own transaction id named belongs to one of the bank's alerts
            named_txns = words & set(edges.txn_id)
            assert named_txns <= {t for a in alerts for t in a["txn_ids"]}, name
