"""The `aml` command: thin dispatch only.

Each sub-command parses its options here and calls one function in the module that does the
work. Modules are imported lazily so bank-side commands (keygen, seal, open) never import
Prefect, which costs seconds and is not needed there.

On failure: one line on stderr (what failed and why, never transaction data) and the error's
exit code: 2 bad input, 3 verification failed, 4 internal error, 1 other run failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aml.core.errors import AmlError

PROG = "aml"


def _cmd_synth(a: argparse.Namespace) -> int:
    from aml.tools.synth import write_synthetic

    summary = write_synthetic(
        Path(a.out), banks=a.banks, accounts=a.accounts, days=a.days, seed=a.seed, world=a.world
    )
    print(f"wrote {summary['transactions']} transactions and {summary['patterns']} pattern rows to {a.out}")
    return 0


def _cmd_split(a: argparse.Namespace) -> int:
    from aml.tools.split import split_file

    counts = split_file(
        Path(a.file), Path(a.out), members=a.members,
        members_file=Path(a.members_file) if a.members_file else None, fmt=a.format,
    )
    for bank, rows in counts.items():
        print(f"{bank}\t{rows}")
    quarantined = getattr(counts, "quarantined", 0)
    if quarantined:  # a '#' line, so scripts reading "bank<TAB>rows" can skip it
        reasons = ", ".join(f"{r} {k}" for r, k in counts.reasons.items())
        print(f"# quarantined {quarantined} rows ({reasons}): {Path(a.out) / 'quarantine.parquet'}")
    return 0


def _cmd_keygen(a: argparse.Namespace) -> int:
    from aml.bank.keygen import keygen

    key_path, pub_path = keygen(a.bank, Path(a.out))
    print(f"wrote {key_path} (private, mode 0600) and {pub_path}")
    return 0


def _cmd_enclave_init(a: argparse.Namespace) -> int:
    from aml.enclave.identity import init_enclave

    info = init_enclave(Path(a.dir), Path(a.members), force=a.force)
    for k, v in info.items():
        print(f"{k}: {v}")
    return 0


def _cmd_enclave_measure(a: argparse.Namespace) -> int:
    from aml.core.measure import measure_tree, measurement_inputs

    if a.inputs:  # for auditors: what the value covers, one "sha256  path" line each
        for path, digest in measurement_inputs(Path(a.dir)):
            print(f"{digest or 'absent':64}  {path}")
    print(measure_tree(Path(a.dir)))
    return 0


def _cmd_enclave_contract(a: argparse.Namespace) -> int:
    from aml.tools.contract import contract_command

    return contract_command(a)


def _cmd_seal(a: argparse.Namespace) -> int:
    from aml.bank.seal import seal

    out = seal(
        bank=a.bank, key=Path(a.key), attestation=Path(a.attestation), file=Path(a.file),
        inbox=Path(a.out), policy=Path(a.policy), allow_simulated=a.allow_simulated,
        sequence=a.sequence, expires_hours=a.expires_hours,
    )
    print(f"sealed {out}")
    return 0


def _cmd_open(a: argparse.Namespace) -> int:
    from aml.bank.open import open_alerts

    n = open_alerts(
        bank=a.bank, key=Path(a.key), attestation=Path(a.attestation),
        sealed=[Path(p) for p in a.sealed], out=Path(a.out),
        policy=Path(a.policy), allow_simulated=a.allow_simulated, allow_older=a.allow_older, show=a.show,
    )
    print(f"wrote {n} alerts to {a.out}")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from aml.operator.run import run_consortium

    summary = run_consortium(Path(a.enclave), Path(a.inbox), Path(a.outbox))
    print(summary)
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from aml.operator.run import serve

    return serve(Path(a.enclave), Path(a.inbox), Path(a.outbox), cron=a.cron, name=a.name)


def _cmd_demo(a: argparse.Namespace) -> int:
    from aml.tools.demo import run_demo

    return run_demo(Path(a.workdir) if a.workdir else None)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from aml.tools.evaluate import evaluate_command

    return evaluate_command(a)


def _policy_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--policy", required=True, metavar="POLICY",
                   help="the bank's own pinned copy of the policy (not the one in the attestation's folder)")
    s.add_argument("--allow-simulated", action="store_true",
                   help="accept a SIMULATED (development, not confidential) attestation")


# --- the analyst's side (bank-local, offline): cases, report, goAML export ------------------
def _cmd_cases(a: argparse.Namespace) -> int:
    from aml.bank.cases import cases_command

    return cases_command(a)


def _cmd_report(a: argparse.Namespace) -> int:
    from aml.bank.report import report_command

    return report_command(a)


def _cmd_export_goaml(a: argparse.Namespace) -> int:
    from aml.bank.goaml import export_command

    return export_command(a)


def _add_analyst_commands(sub) -> None:
    from aml.bank.cases import DISPOSITIONS, STATUSES

    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=None, metavar="DB",
                    help="the bank's case store (default: $AML_CASES_DB or ./cases.sqlite)")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--who", default=None, help="who makes the change (default: the login name)")
    filt = argparse.ArgumentParser(add_help=False)
    filt.add_argument("--status", choices=STATUSES)
    filt.add_argument("--disposition", choices=DISPOSITIONS)
    filt.add_argument("--pattern", default=None)
    filt.add_argument("--assignee", default=None)
    filt.add_argument("--min-score", type=float, default=None)

    c = sub.add_parser("cases", help="the bank's alert cases: triage, dispositions, audit log")
    csub = c.add_subparsers(dest="cases_command", required=True, metavar="COMMAND")
    s = csub.add_parser("import", parents=[db, who], help="open a case for every new alert (idempotent)")
    s.add_argument("alerts", nargs="+", metavar="ALERTS", help="files written by `aml open`")
    s.add_argument("--bank", default=None, metavar="ID", help="refuse alerts addressed to another bank")
    s = csub.add_parser("list", parents=[db, filt], help="list cases as a table, highest score first")
    s = csub.add_parser("show", parents=[db], help="one case with its full history")
    s.add_argument("case", metavar="ALERT_ID", help="alert id (or a unique prefix of 6+ characters)")
    s = csub.add_parser("set", parents=[db, who], help="change status, disposition, assignee; add a note")
    s.add_argument("case", metavar="ALERT_ID")
    s.add_argument("--status", choices=STATUSES)
    s.add_argument("--disposition", choices=DISPOSITIONS)
    s.add_argument("--assignee", default=None)
    s.add_argument("--note", default=None)
    s = csub.add_parser("verify", parents=[db], help="check the hash-chained event log and the cases")
    s.add_argument("--expect-head", default=None, metavar="HASH",
                   help="the head printed by an earlier verify (also detects removed events)")
    s = csub.add_parser("export", parents=[db, filt], help="cases as JSON or CSV")
    s.add_argument("--format", choices=["json", "csv"], default="json")
    s.add_argument("--out", default=None, metavar="FILE", help="default: standard output")
    for s in csub.choices.values():
        s.set_defaults(func=_cmd_cases)

    s = sub.add_parser("report", help="one self-contained offline HTML report of the bank's alerts")
    s.add_argument("alerts", nargs="+", metavar="ALERTS")
    s.add_argument("--bank", required=True, metavar="ID")
    s.add_argument("--out", required=True, metavar="REPORT.html")
    s.add_argument("--transactions", default=None, metavar="FILE",
                   help="the bank's own batch (the file it sealed): per-payment arrows and timeline")
    s.add_argument("--db", default=None, metavar="DB", help="case store for statuses (default: none)")
    s.set_defaults(func=_cmd_report)

    x = sub.add_parser("export", help="export alerts for a financial intelligence unit")
    xsub = x.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    s = xsub.add_parser("goaml", help="one goAML STR XML file per alert")
    s.add_argument("alerts", nargs="+", metavar="ALERTS")
    s.add_argument("--bank", required=True, metavar="ID")
    s.add_argument("--kyc", required=True, metavar="KYC.csv")
    s.add_argument("--profile", required=True, metavar="PROFILE")
    s.add_argument("--xsd", default=None, metavar="SCHEMA.xsd", help="the FIU's schema: validate every file")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--transactions", default=None, metavar="FILE",
                   help="the bank's own batch: one <transaction> per own payment (else an <activity>)")
    s.add_argument("--alert", action="append", default=None, metavar="ALERT_ID",
                   help="export only this alert (repeatable; id or unique prefix)")
    s.set_defaults(func=_cmd_export_goaml)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="enclave-aml: cross-bank AML in an enclave")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate a labelled multi-bank data set")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--world", default="original", choices=("original", "amlworld", "amlworld_li", "amlsim"),
                   help="independently designed data world: original (the project's first "
                        "generator), amlworld / amlworld_li (after IBM AMLworld, Altman et al. 2023, HI / LI "
                        "laundering rates), amlsim "
                        "(after the IBM/AMLSim repository); docs/synthetic-data.md")
    s.add_argument("--banks", type=int, default=None,
                   help="banks in the data set (default: 8 members + 2 abroad for original, 14 for the others)")
    s.add_argument("--accounts", type=int, default=10_000)
    s.add_argument("--days", type=int, default=60)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("split", help="one batch file per member bank")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--out", required=True, metavar="DIR")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--members", type=int, default=8, metavar="N")
    g.add_argument("--members-file", metavar="F")
    s.add_argument("--format", choices=["canonical", "ibm"], default=None,
                   help="input format (default: detected from the header)")
    s.set_defaults(func=_cmd_split)

    s = sub.add_parser("keygen", help="create a bank's key pairs")
    s.add_argument("--bank", required=True, metavar="ID")
    s.add_argument("--out", required=True, metavar="DIR")
    s.set_defaults(func=_cmd_keygen)

    e = sub.add_parser("enclave", help="enclave identity and measurement")
    esub = e.add_subparsers(dest="enclave_command", required=True, metavar="COMMAND")
    s = esub.add_parser("init", help="start the enclave identity for the member banks")
    s.add_argument("--dir", required=True, metavar="ENCLAVE_DIR")
    s.add_argument("--members", required=True, metavar="KEYDIR")
    s.add_argument("--force", action="store_true",
                   help="re-initialise an existing ENCLAVE_DIR (rotates every enclave key)")
    s.set_defaults(func=_cmd_enclave_init)
    s = esub.add_parser("measure", help="print the enclave measurement of a project tree")
    s.add_argument("dir", nargs="?", default=".", metavar="DIR")
    s.add_argument("--inputs", action="store_true",
                   help="first list each measured file with its sha256 (the measurement is the last line)")
    s.set_defaults(func=_cmd_enclave_measure)
    s = esub.add_parser("contract", help="build the encrypted, signed Hyper Protect contract")
    s.add_argument("--template", required=True)
    s.add_argument("--encryption-cert", required=True)
    s.add_argument("--signing-key", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_enclave_contract)

    s = sub.add_parser("seal", help="seal a transaction batch to the attested enclave")
    s.add_argument("--bank", required=True, metavar="ID")
    s.add_argument("--key", required=True, metavar="KEYDIR/ID.key")
    s.add_argument("--attestation", required=True, metavar="ATT")
    _policy_args(s)
    s.add_argument("--sequence", type=int, default=None,
                   help="per-bank sequence number (default: last used + 1, kept beside the key)")
    s.add_argument("--expires-hours", type=float, default=72.0)
    s.add_argument("file", metavar="FILE")
    s.add_argument("--out", required=True, metavar="INBOX")
    s.set_defaults(func=_cmd_seal)

    s = sub.add_parser("run", help="run the consortium flow once on Prefect")
    s.add_argument("--enclave", required=True, metavar="ENCLAVE_DIR")
    s.add_argument("--inbox", required=True)
    s.add_argument("--outbox", required=True)
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("serve", help="serve the consortium flow as a scheduled Prefect deployment")
    s.add_argument("--enclave", required=True, metavar="ENCLAVE_DIR")
    s.add_argument("--inbox", required=True)
    s.add_argument("--outbox", required=True)
    s.add_argument("--cron", default="0 2 * * *")
    s.add_argument("--name", default="nightly")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("open", help="verify and decrypt sealed alert files")
    s.add_argument("--bank", required=True, metavar="ID")
    s.add_argument("--key", required=True, metavar="KEYDIR/ID.key")
    s.add_argument("--attestation", required=True, metavar="ATT")
    _policy_args(s)
    s.add_argument("--allow-older", action="store_true",
                   help="open an alert file older than one already opened from this enclave (normally refused)")
    s.add_argument("--show", action="store_true", help="also print the alerts")
    s.add_argument("sealed", nargs="+", metavar="SEALED")
    s.add_argument("--out", required=True, metavar="ALERTS")
    s.set_defaults(func=_cmd_open)

    s = sub.add_parser("demo", help="the whole consortium on sample_data/, end to end")
    s.add_argument("--workdir", default=None, help="where to put keys and files (default: demo_out/)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("evaluate", help="score detection against labels, joint vs each bank alone")
    s.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="directory written by `aml synth` (or a transactions file); or use --worlds")
    s.add_argument("--worlds", default=None, metavar="W1,W2,...",
                   help="evaluate the same detection on several data worlds, worst first: NAME "
                        "(generated: original, amlworld, amlworld_li, amlsim) or NAME=DIR")
    s.add_argument("--rows", type=int, default=500_000,
                   help="with --worlds: about this many rows per generated world (default 500000)")
    s.add_argument("--days", type=int, default=60, help="with --worlds: days per generated world")
    s.add_argument("--seed", type=int, default=0, help="with --worlds: generator seed")
    s.add_argument("--config", default=None, help="detection configuration TOML")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    s.add_argument("--no-silo", action="store_true", help="skip the each-bank-alone runs")
    s.add_argument("--members-file", default=None, metavar="F",
                   help="member bank ids one a line (default: the 8 banks with the most rows)")
    s.set_defaults(func=_cmd_evaluate)
    _add_analyst_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AmlError as exc:
        print(f"{PROG}: {args.command}: {exc.code}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: never echo its message, it may hold data
        if os.environ.get("AML_DEBUG"):
            raise
        print(
            f"{PROG}: {args.command}: internal error ({type(exc).__name__}); "
            "rerun with AML_DEBUG=1 for a traceback",
            file=sys.stderr,
        )
        return 4


def run() -> None:
    """The console entry point: `main`, then exit without racing native thread pools.

    pyarrow's worker threads can abort the process at interpreter teardown ("terminate called
    without an active exception", SIGABRT; apache/arrow#34314), turning a finished `aml open`
    into exit -6. Commands that never import Prefect have written and closed everything by now,
    so they skip teardown; Prefect commands exit normally so its log handlers flush.
    """
    code = main()
    if "prefect" not in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
