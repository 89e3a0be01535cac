"""`aml evaluate`: score detection against labels and pattern tables, joint vs each bank alone.

The split is by time. The earliest `history_fraction` (default 60 %) of the transactions keep
their labels: that is the consortium's SAR history, which trains the pooled model (the model
itself holds out the latest 20 % of the history to choose its alert threshold, so overall this
is IBM's 60/20/20 time split with train+validation inside the history). The remaining 40 % are
"new": their labels are removed before detection and used only for scoring. Detection is the
very function the enclave flow runs (`aml.enclave.detect.pipeline.run_detection`), over history + new.

A transaction counts as *predicted laundering* when any alert of any bank lists it. Only new
transactions are scored. Silo mode re-runs detection once per member bank on the rows that bank
alone would submit (rows touching it, its own labels), keeps the alerts about that bank, and
unions the predictions — what the banks would find without the consortium.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from aml.core.errors import BadInputError
from aml.core.schema import PATTERN_TABLE_SCHEMA, TIMESTAMP_TYPE, TRANSACTION_SCHEMA

DEFAULT_MEMBERS = 8  # same default as `aml split`


# ------------------------------------------------------------------ metrics (pure)
def _prf(tp: int, n_pred: int, n_true: int) -> dict:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "predicted": int(n_pred), "laundering": int(n_true), "true_positives": int(tp)}


def score_predictions(scored: pd.DataFrame, alerts: pd.DataFrame, patterns: pd.DataFrame) -> dict:
    """Transaction-level metrics.

    `scored`: the new transactions (txn_id, label 0/1). `alerts`: one row per (alert_id,
    pattern, txn_id) across all banks; txns outside `scored` are ignored. `patterns`: the
    ground-truth pattern table (pattern_id, pattern, txn_id).
    """
    scored = scored.drop_duplicates("txn_id")
    positive = set(scored.loc[scored["label"] == 1, "txn_id"])
    in_scope = set(scored["txn_id"])
    alerts = alerts[alerts["txn_id"].isin(in_scope)]
    predicted = set(alerts["txn_id"])
    out = _prf(len(predicted & positive), len(predicted), len(positive))
    out["alerts"] = int(alerts["alert_id"].nunique())

    per_detector = {}
    for det, g in alerts.groupby("pattern", sort=True):
        txns = set(g["txn_id"])
        tp = len(txns & positive)
        per_detector[det] = {"alerts": int(g["alert_id"].nunique()), "transactions": len(txns),
                             "precision": tp / len(txns) if txns else 0.0,
                             "recall": tp / len(positive) if positive else 0.0}
    out["per_detector"] = per_detector

    per_typology = {}
    pats = patterns[patterns["txn_id"].isin(in_scope)]
    for name, g in pats.groupby("pattern", sort=True):
        hit = g["txn_id"].isin(predicted)
        by_instance = hit.groupby(g["pattern_id"]).any()
        per_typology[name] = {"transactions": int(len(g)), "recall": float(hit.mean()),
                              "instances": int(len(by_instance)),
                              "instance_recall": float(by_instance.mean())}
    in_any_pattern = set(pats["txn_id"])
    outside = positive - in_any_pattern
    if outside:  # laundering disguised as ordinary payments: no typology table row
        per_typology["(no pattern)"] = {
            "transactions": len(outside), "recall": len(outside & predicted) / len(outside),
            "instances": 0, "instance_recall": 0.0}
    out["per_typology"] = per_typology
    return out


# ------------------------------------------------------------------ running detection
def _alert_rows(result, banks: Iterable[str]) -> pd.DataFrame:
    """Explode every bank's alerts to (alert_id, bank, pattern, txn_id) rows."""
    frames = []
    for bank in banks:
        t = result.alerts_for(bank)
        if t.num_rows == 0:
            continue
        df = t.select(["alert_id", "bank", "pattern", "txn_ids"]).to_pandas()
        frames.append(df.explode("txn_ids").rename(columns={"txn_ids": "txn_id"}).dropna())
    if not frames:
        return pd.DataFrame({"alert_id": [], "bank": [], "pattern": [], "txn_id": []})
    return pd.concat(frames, ignore_index=True)


def member_banks(transactions: pa.Table, n: int = DEFAULT_MEMBERS) -> list[str]:
    """The n banks with the most rows (as `aml split` picks them)."""
    banks = pa.concat_arrays([transactions.column("src_bank").combine_chunks(),
                              transactions.column("dst_bank").combine_chunks()])
    counts = pc.value_counts(banks).to_pylist()
    counts.sort(key=lambda c: (-c["counts"], c["values"]))
    return sorted(c["values"] for c in counts[:n])


def _labels(table: pa.Table) -> np.ndarray:
    """label as float64, NaN where unknown."""
    return table.column("label").cast(pa.float64()).fill_null(np.nan).to_numpy()


def _detection_input(table: pa.Table, is_new: np.ndarray, members: list[str]) -> pa.Table:
    """Labels removed on new rows; `is_new`; `submitted_by` = member banks among src/dst."""
    label = _labels(table)
    label = np.where(is_new, np.nan, label)
    out = table.set_column(table.schema.get_field_index("label"), "label",
                           pa.array(label, type=pa.float64(), from_pandas=True).cast(pa.int8()))
    src = table.column("src_bank").to_pylist()
    dst = table.column("dst_bank").to_pylist()
    member_set = set(members)
    submitted = [[b for b in dict.fromkeys((s, d)) if b in member_set] for s, d in zip(src, dst)]
    out = out.append_column("is_new", pa.array(is_new, type=pa.bool_()))
    return out.append_column("submitted_by", pa.array(submitted, type=pa.list_(pa.string())))


def _run(table: pa.Table, config, banks: list[str]) -> tuple[pd.DataFrame, object]:
    from aml.enclave.detect.pipeline import run_detection

    result = run_detection(table, config)
    return _alert_rows(result, banks), result


def time_split(transactions: pa.Table, history_fraction: float = 0.6,
               members: list[str] | None = None) -> tuple[pa.Table, np.ndarray, list[str], int]:
    """(rows some member submits, sorted by time; is_new mask; members; cut in µs).

    History = rows at or before the `history_fraction` quantile of the timestamps."""
    if not 0.0 < history_fraction < 1.0:
        raise BadInputError("history_fraction must be between 0 and 1")
    missing = [c for c in TRANSACTION_SCHEMA.names if c not in transactions.column_names]
    if missing:
        raise BadInputError(f"transactions lack columns: {', '.join(missing)}")
    members = sorted(members) if members is not None else member_banks(transactions)
    table = transactions.select(TRANSACTION_SCHEMA.names)
    # Rows no member submits never reach the enclave: they are neither input nor scored.
    visible = pc.or_(pc.is_in(table.column("src_bank"), pa.array(members)),
                     pc.is_in(table.column("dst_bank"), pa.array(members)))
    table = table.filter(visible)
    table = table.sort_by([("timestamp", "ascending"), ("txn_id", "ascending")])
    ts = table.column("timestamp").cast(TIMESTAMP_TYPE).cast(pa.int64()).to_numpy()
    if len(ts) == 0:
        raise BadInputError("no transactions touch a member bank")
    cut = int(np.quantile(ts, history_fraction, method="lower"))
    return table, ts > cut, members, cut


def evaluate(transactions: pa.Table, patterns: pa.Table, config, history_fraction: float = 0.6,
             silo: bool = True, members: list[str] | None = None) -> dict:
    """Run detection as the flow does and score it; see the module docstring for the split."""
    table, is_new, members, cut = time_split(transactions, history_fraction, members)
    labels = _labels(table)
    scored = pd.DataFrame({"txn_id": table.column("txn_id").to_numpy(zero_copy_only=False)[is_new],
                           "label": np.nan_to_num(labels[is_new], nan=0.0)})
    truth = patterns.select(PATTERN_TABLE_SCHEMA.names).to_pandas()

    report = {
        "split": {"history_fraction": history_fraction,
                  "cut": pd.Timestamp(cut, unit="us", tz="UTC").isoformat(),
                  "history_transactions": int((~is_new).sum()),
                  "history_laundering": int(np.nansum(labels[~is_new])),
                  "scored_transactions": int(is_new.sum()),
                  "scored_laundering": int((scored["label"] == 1).sum())},
        "members": members,
        "config_hash": getattr(config, "hash", None),
    }

    start = time.perf_counter()
    joint_input = _detection_input(table, is_new, members)
    alerts, result = _run(joint_input, config, members)
    seconds = time.perf_counter() - start
    report["joint"] = score_predictions(scored, alerts, truth)
    report["joint"]["seconds"] = round(seconds, 2)
    report["joint"]["transactions_per_second"] = round(table.num_rows / max(seconds, 1e-9))
    report["model_hash"] = getattr(result, "model_hash", None)

    if silo:
        start = time.perf_counter()
        frames = []
        src = table.column("src_bank")
        dst = table.column("dst_bank")
        for bank in members:
            own = pc.or_(pc.equal(src, bank), pc.equal(dst, bank)).to_numpy(zero_copy_only=False)
            if not own.any():
                continue
            bank_input = _detection_input(table.filter(pa.array(own)), is_new[own], [bank])
            bank_alerts, _ = _run(bank_input, config, [bank])
            frames.append(bank_alerts)
        silo_alerts = pd.concat(frames, ignore_index=True) if frames else alerts.iloc[:0]
        report["silo"] = score_predictions(scored, silo_alerts, truth)
        report["silo"]["seconds"] = round(time.perf_counter() - start, 2)
        silo_f1 = report["silo"]["f1"]
        report["joint_over_silo_f1"] = (report["joint"]["f1"] / silo_f1) if silo_f1 else None
    return report


# ------------------------------------------------------------------ CLI
def _read_data(path: Path) -> tuple[pa.Table, pa.Table]:
    if path.is_dir():
        txn_path, pat_path = path / "transactions.parquet", path / "patterns.parquet"
    else:
        txn_path, pat_path = path, path.with_name("patterns.parquet")
    if not txn_path.exists():
        raise BadInputError(f"no transactions file at {txn_path}")
    try:
        from aml.core.schema import read_transactions
    except ImportError:  # older schema module: synth writes canonical Parquet anyway
        read_transactions = pq.read_table
    transactions = read_transactions(txn_path)
    if pat_path.exists():
        patterns = pq.read_table(pat_path)
    else:
        patterns = PATTERN_TABLE_SCHEMA.empty_table()
    return transactions, patterns


def _read_members(path) -> list[str] | None:
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BadInputError(f"cannot read members file: {exc.strerror}") from None
    members = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    if not members:
        raise BadInputError("members file lists no bank")
    return members


def format_report(report: dict) -> str:
    """A readable table of the figures."""
    lines = []
    s = report["split"]
    lines.append(f"split: history {s['history_transactions']} txns ({s['history_laundering']} laundering) "
                 f"up to {s['cut']}; scored {s['scored_transactions']} new txns "
                 f"({s['scored_laundering']} laundering)")
    modes = [m for m in ("joint", "silo") if m in report]
    lines.append("")
    lines.append(f"{'':<10}{'precision':>10}{'recall':>10}{'F1':>10}{'predicted':>11}{'alerts':>9}{'seconds':>9}")
    for m in modes:
        r = report[m]
        lines.append(f"{m:<10}{r['precision']:>10.3f}{r['recall']:>10.3f}{r['f1']:>10.3f}"
                     f"{r['predicted']:>11}{r['alerts']:>9}{r['seconds']:>9.1f}")
    if report.get("joint_over_silo_f1") is not None:
        lines.append(f"joint F1 / silo F1 = {report['joint_over_silo_f1']:.2f}")
    for m in modes:
        lines.append("")
        lines.append(f"[{m}] recall per typology")
        lines.append(f"  {'pattern':<20}{'txns':>8}{'recall':>9}{'instances':>11}{'inst.recall':>12}")
        for name, r in report[m]["per_typology"].items():
            lines.append(f"  {name:<20}{r['transactions']:>8}{r['recall']:>9.3f}"
                         f"{r['instances']:>11}{r['instance_recall']:>12.3f}")
        lines.append(f"[{m}] precision per detector")
        lines.append(f"  {'detector':<16}{'alerts':>8}{'txns':>8}{'precision':>11}{'recall':>9}")
        for name, r in report[m]["per_detector"].items():
            lines.append(f"  {name:<16}{r['alerts']:>8}{r['transactions']:>8}"
                         f"{r['precision']:>11.3f}{r['recall']:>9.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ several worlds
def world_data(spec: str, rows: int, days: int = 60, seed: int = 0) -> tuple[str, pa.Table, pa.Table]:
    """(name, transactions, patterns) for one `--worlds` entry: NAME (generated in memory with
    about `rows` rows over `days` days) or NAME=DIR (an `aml synth` output directory)."""
    name, _, directory = spec.partition("=")
    name = name.strip()
    if directory:
        transactions, patterns = _read_data(Path(directory))
        return name, transactions, patterns
    from aml.tools.synth import generate, rows_per_account_day

    accounts = max(200, int(round(rows / (rows_per_account_day(name) * days))))
    transactions, patterns = generate(accounts=accounts, days=days, seed=seed, world=name)
    return name, transactions, patterns


def evaluate_worlds(specs: list[str], config, rows: int = 500_000, days: int = 60, seed: int = 0,
                    silo: bool = True, members: list[str] | None = None) -> dict:
    """The same detection code and configuration on every world, each scored as `evaluate`
    scores one data set (the pooled model trains on each world's own labelled history, as a
    consortium's would; no threshold or setting is chosen per world). Worst world first."""
    reports = {}
    for spec in specs:
        name, transactions, patterns = world_data(spec, rows, days, seed)
        reports[name] = evaluate(transactions, patterns, config, silo=silo, members=members)
        reports[name]["rows"] = transactions.num_rows
    order = sorted(reports, key=lambda n: reports[n]["joint"]["f1"])
    return {"worlds": {n: reports[n] for n in order}, "worst": order[0] if order else None}


def format_worlds(result: dict) -> str:
    """A summary table (worst world first), then each world's full report."""
    lines = [f"{'world':<14}{'rows':>10}{'laund.':>8}{'joint P':>9}{'joint R':>9}{'joint F1':>10}"
             f"{'silo F1':>9}{'joint/silo':>11}"]
    for name, r in result["worlds"].items():
        j = r["joint"]
        silo_f1 = r["silo"]["f1"] if "silo" in r else float("nan")
        ratio = r.get("joint_over_silo_f1")
        lines.append(f"{name:<14}{r['rows']:>10}{r['split']['scored_laundering']:>8}{j['precision']:>9.3f}"
                     f"{j['recall']:>9.3f}{j['f1']:>10.3f}{silo_f1:>9.3f}"
                     f"{(f'{ratio:.2f}' if ratio is not None else '-'):>11}")
    names = sorted({t for r in result["worlds"].values() for t in r["joint"]["per_typology"]})
    lines.append("")
    lines.append("joint recall per typology (instance recall in brackets; - = not in that world)")
    lines.append(f"  {'pattern':<20}" + "".join(f"{n:>18}" for n in result["worlds"]))
    for t in names:
        cells = []
        for r in result["worlds"].values():
            x = r["joint"]["per_typology"].get(t)
            cells.append(f"{x['recall']:.2f} ({x['instance_recall']:.2f}) n={x['transactions']}" if x else "-")
        lines.append(f"  {t:<20}" + "".join(f"{c:>18}" for c in cells))
    for name, r in result["worlds"].items():
        lines.append("")
        lines.append(f"=== world {name}")
        lines.append(format_report(r))
    return "\n".join(lines)


def evaluate_command(args) -> int:
    from aml.enclave.detect.config import DetectionConfig

    config = DetectionConfig.load(args.config)
    members = _read_members(getattr(args, "members_file", None))
    worlds = getattr(args, "worlds", None)
    if worlds:
        specs = [w for w in worlds.split(",") if w.strip()]
        report = evaluate_worlds(specs, config, rows=args.rows, days=args.days, seed=args.seed,
                                 silo=not args.no_silo, members=members)
        print(format_worlds(report))
    else:
        if not args.data:
            raise BadInputError("evaluate: give a DATA directory or --worlds")
        transactions, patterns = _read_data(Path(args.data))
        report = evaluate(transactions, patterns, config, silo=not args.no_silo, members=members)
        print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
