"""`aml demo`: the whole consortium on sample_data/, end to end, on this machine.

Every bank gets keys, the enclave starts with a SIMULATED attestation, each bank seals its own
batch, the consortium flow runs on Prefect (a temporary local server unless PREFECT_API_URL is
set), and each bank opens its alerts. The last 7 days of the sample lose their labels: they are
tonight's "new" transactions, the rest is the labelled history the pooled model learns from.
"""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path

from aml.core.errors import BadInputError

DEFAULT_WORKDIR = Path("demo_out")
NEW_DAYS = 7
MEMBERS = 6


def sample_transactions() -> Path:
    from aml.enclave.identity import project_root

    path = project_root() / "sample_data" / "transactions.parquet"
    if not path.is_file():
        raise BadInputError(f"sample data '{path}' is missing (generate it with `aml synth --out sample_data`)")
    return path


def unlabel_recent(table, days: float = NEW_DAYS):
    """The table with `label` nulled on rows in the last `days` days (the "new" part)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    latest = pc.max(table.column("timestamp")).as_py()
    cutoff = pa.scalar(latest - timedelta(days=days), type=table.schema.field("timestamp").type)
    recent = pc.greater(table.column("timestamp"), cutoff)
    label = pc.if_else(recent, pa.scalar(None, table.schema.field("label").type), table.column("label"))
    return table.set_column(table.schema.get_field_index("label"), "label", label)


def pin_policy(enclave_dir: Path, bank_dir: Path) -> Path:
    """A bank's pinned copy of the policy `aml enclave init` wrote: bank_dir/policy.json.

    What a real bank does once, by hand, after reviewing the file (docs/bank-guide.md); `aml seal`
    and `aml open` refuse the operator's copy beside the attestation."""
    bank_dir.mkdir(parents=True, exist_ok=True)
    dest = bank_dir / "policy.json"
    shutil.copyfile(Path(enclave_dir) / "policy.json", dest)
    return dest


def prepare_consortium(table, members: list[str], workdir: Path) -> dict[str, Path]:
    """Keys, enclave, each bank's pinned policy (banks/<bank>/policy.json), one sealed batch per
    member bank in workdir/inbox. Returns the paths."""
    import pyarrow.parquet as pq

    from aml.bank.keygen import keygen
    from aml.bank.seal import seal
    from aml.enclave.identity import init_enclave
    from aml.tools.split import split_table

    paths = {name: workdir / name for name in ("keys", "banks", "enclave", "inbox", "outbox", "alerts")}
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    for bank in members:
        keygen(bank, paths["keys"])
    init_enclave(paths["enclave"], paths["keys"])
    for bank, part in split_table(table, members).items():
        batch = paths["banks"] / f"{bank}.parquet"
        pq.write_table(part, batch)
        policy = pin_policy(paths["enclave"], paths["banks"] / bank)
        # The demo enclave is simulated: each bank accepts that explicitly (loud warning on stderr).
        seal(bank=bank, key=paths["keys"] / f"{bank}.key", attestation=paths["enclave"] / "attestation.json",
             file=batch, inbox=paths["inbox"], policy=policy, allow_simulated=True)
    return paths


def run_demo(workdir: Path | None = None) -> int:
    import pyarrow.parquet as pq

    from aml.bank.open import open_alerts
    from aml.operator.run import run_consortium
    from aml.tools.split import choose_members

    workdir = Path(workdir) if workdir else DEFAULT_WORKDIR
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    banner = ["SIMULATED ATTESTATION: this demo runs the 'enclave' as an ordinary process.",
              "Nothing here is confidential; real deployments attest a Hyper Protect image."]
    width = max(map(len, banner)) + 4
    print("*" * width)
    for line in banner:
        print(f"* {line.ljust(width - 4)} *")
    print("*" * width)

    table = unlabel_recent(pq.read_table(sample_transactions()))
    members = sorted(choose_members(table, MEMBERS))
    print(f"consortium: {len(members)} member banks ({', '.join(members)}); "
          f"{table.num_rows} transactions, the last {NEW_DAYS} days unlabelled (new)")
    paths = prepare_consortium(table, members, workdir)
    print(f"each bank sealed its batch into {paths['inbox']}")

    print("running the consortium flow on Prefect ...")
    print(run_consortium(paths["enclave"], paths["inbox"], paths["outbox"]))

    print("\nwhat each bank received (opened with its own key):")
    for bank in members:
        sealed = sorted((paths["outbox"] / bank).glob("*.amla"))
        out = paths["alerts"] / f"{bank}.parquet"
        n = open_alerts(bank=bank, key=paths["keys"] / f"{bank}.key",
                        attestation=paths["enclave"] / "attestation.json", sealed=sealed, out=out,
                        policy=paths["banks"] / bank / "policy.json", allow_simulated=True)
        alerts = pq.read_table(out) if n else None
        patterns = Counter(alerts.column("pattern").to_pylist()) if n else Counter()
        detail = ", ".join(f"{p} {k}" for p, k in sorted(patterns.items())) or "none"
        print(f"  {bank}: {n} alerts ({detail}) -> {out}")
        if n:  # what an analyst at this bank reads: the bank's own demo data, shown to itself
            top = alerts.sort_by([("score", "descending")]).slice(0, 1).to_pylist()[0]
            print(f"      e.g. [{top['pattern']}, score {top['score']:.2f}] {top['explanation']}")
    analyst_ending(members, paths, workdir)
    print(f"\neverything is under {workdir}/ (keys, sealed batches, sealed and opened alerts)")
    print("REMINDER: SIMULATED attestation - for development and demonstration only.")
    return 0


# --- the analyst's side of the demo --------------------------------------------------------
_FIRST = ("Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemi", "Lars")
_LAST = ("Okafor", "Schmidt", "Nguyen", "Garcia", "Smith", "Rossi", "Kowalski", "Tanaka", "Silva", "Dubois")


def invent_kyc(accounts, path: Path, seed: int = 0) -> Path:
    """An invented KYC file (the columns of `aml export goaml --kyc`) for the demo's own accounts.
    A real bank exports this from its core banking system; nothing here is real."""
    import csv
    import random

    from aml.bank.goaml import KYC_COLUMNS

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(KYC_COLUMNS)
        for n, account in enumerate(sorted(set(accounts)), 1):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            w.writerow([account, f"{first} {last}", f"C{n:06d}", rng.choice(("Head office", "North", "Harbour")),
                        "USD", "A", f"{rng.randint(2005, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                        "A", first, last, f"{rng.randint(1950, 2002)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                        "US"])
    return path


def analyst_ending(members: list[str], paths: dict[str, Path], workdir: Path) -> None:
    """What each bank's analysts do next (docs/analyst-guide.md): cases, report, one goAML file."""
    from aml.bank.alerts_file import read_alerts, read_own_transactions
    from aml.bank.cases import CaseStore
    from aml.bank.goaml import export_goaml
    from aml.bank.report import build_report
    from aml.enclave.identity import project_root

    print("\nthe analysts' side (bank-local, offline):")
    goaml_done = False
    for bank in members:
        alerts_file = paths["alerts"] / f"{bank}.parquet"
        alerts = read_alerts([alerts_file], bank=bank)
        batch = paths["banks"] / f"{bank}.parquet"
        own = read_own_transactions(batch, bank)
        db = workdir / "cases" / f"{bank}.sqlite"
        with CaseStore(db, create=True) as store:
            added = store.import_alerts(alerts, "demo", bank=bank)
            cases = {c["alert_id"]: c for c in store.cases()}
        report = workdir / "reports" / f"{bank}.html"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(build_report(alerts, bank, [alerts_file], own, batch, cases), encoding="utf-8")
        line = f"  {bank}: {added} cases in {db}; report {report}"
        if alerts and not goaml_done:  # one goAML file: this bank's highest-scoring alert
            top = max(alerts, key=lambda a: (a["score"], a["alert_id"]))
            accounts = {r["src_account"] for r in own.values() if r["src_bank"] == bank} | {
                r["dst_account"] for r in own.values() if r["dst_bank"] == bank}
            kyc = invent_kyc(accounts, workdir / "kyc" / f"{bank}.csv")
            xsd = project_root() / "tests" / "fixtures" / "goaml" / "str-test.xsd"
            (xml,) = export_goaml([top], bank, kyc, project_root() / "sample_data" / "goaml" / "profile.toml",
                                  workdir / "goaml" / bank, xsd if xsd.is_file() else None, own)
            line += f"; goAML STR {xml}"
            goaml_done = True
        print(line)
    print("  next: `aml cases list --db CASES`, open a report in a browser, `aml cases set ID --disposition ...`")
