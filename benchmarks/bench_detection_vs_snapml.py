"""Our detection vs IBM Snap ML's GraphFeaturePreprocessor (GFP) + gradient boosting.

Both sides get the same `aml synth` transactions (rows touching a member bank) and the same
time split (`aml.tools.evaluate.time_split`: first 60 % labelled history, last 40 % scored):

* ours: `aml.tools.evaluate.evaluate(..., silo=False)`, i.e. `run_detection` — typology detectors,
  our vectorised features, the pooled model, alert cutting — as the enclave flow runs it;
* Snap ML: GFP with fan, degree, scatter-gather, temporal-cycle and length-constrained
  simple-cycle patterns (1-day windows, scatter-gather 6 h, cycles up to length 10, vertex
  statistics on amount), fed in time order in batches of 2,048 edges the way IBM's papers
  stream it (`transform` per batch: each batch is inserted into GFP's in-memory graph and
  gets its features), then the same `PooledModel` (HistGradientBoostingClassifier, balanced
  classes, F1-optimal threshold on the latest 20 % of history) on raw + GFP features.

Printed: F1 / precision / recall on the scored part, and edges per second (all rows given to
the method / wall-clock seconds). Usage:

    .venv/bin/python benchmarks/bench_detection_vs_snapml.py --transactions 200000
    .venv/bin/python benchmarks/bench_detection_vs_snapml.py --world amlsim --transactions 500000
    .venv/bin/python benchmarks/bench_detection_vs_snapml.py --data /path/to/synth_dir
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.model import PooledModel
from aml.tools.evaluate import evaluate, score_predictions, time_split

BATCH = 2048


def gfp_params(threads: int) -> dict:
    day = 86_400
    bins = list(range(2, 10))
    return {
        "num_threads": threads,
        "time_window": day,
        "vertex_stats": True,
        "vertex_stats_cols": [4],  # amount in the base currency
        "vertex_stats_feats": [0, 1, 2, 3, 4, 8, 9, 10],
        "fan": True, "fan_tw": day, "fan_bins": bins,
        "degree": True, "degree_tw": day, "degree_bins": bins,
        "scatter-gather": True, "scatter-gather_tw": 6 * 3600, "scatter-gather_bins": bins,
        "temp-cycle": True, "temp-cycle_tw": day, "temp-cycle_bins": bins,
        "lc-cycle": True, "lc-cycle_tw": day, "lc-cycle_len": 10, "lc-cycle_bins": bins,
    }


def load_data(args) -> tuple[pa.Table, pa.Table]:
    if args.data:
        d = Path(args.data)
        return pq.read_table(d / "transactions.parquet"), pq.read_table(d / "patterns.parquet")
    from aml.tools.synth import generate, rows_per_account_day

    accounts = max(200, int(round(args.transactions / (rows_per_account_day(args.world) * 60))))
    return generate(accounts=accounts, days=60, seed=args.seed, world=args.world)


def raw_edge_array(table: pa.Table, config) -> np.ndarray:
    """[edge id, src node, dst node, unix s, amount (base), format code, currency code]."""
    df = table.select(["src_bank", "src_account", "dst_bank", "dst_account",
                       "amount", "currency", "payment_format"]).to_pandas()
    src = df["src_bank"] + "\x1f" + df["src_account"]
    dst = df["dst_bank"] + "\x1f" + df["dst_account"]
    codes, _ = pd.factorize(pd.concat([src, dst], ignore_index=True))
    n = len(df)
    rate = df["currency"].map(dict(config.rates)).to_numpy(np.float64)
    t = table.column("timestamp").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
    return np.column_stack([
        np.arange(n, dtype=np.float64), codes[:n], codes[n:], t,
        df["amount"].to_numpy(np.float64) * rate,
        pd.factorize(df["payment_format"])[0], pd.factorize(df["currency"])[0],
    ]).astype(np.float64)


def run_snapml(table: pa.Table, is_new: np.ndarray, patterns: pa.Table, config, threads: int) -> dict:
    try:
        from snapml import GraphFeaturePreprocessor
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    start = time.perf_counter()
    raw = raw_edge_array(table, config)
    gfp = GraphFeaturePreprocessor()
    gfp.set_params(gfp_params(threads))
    t_gfp = time.perf_counter()
    out = np.vstack([gfp.transform(raw[i:i + BATCH]) for i in range(0, len(raw), BATCH)])
    gfp_seconds = time.perf_counter() - t_gfp
    X = out[:, 4:]  # raw amount/format/currency + the engineered features (ids and time dropped)
    labels = table.column("label").cast(pa.float64()).fill_null(np.nan).to_numpy()
    y = np.where(is_new, np.nan, labels)
    hist = ~is_new
    model = PooledModel().fit(X[hist], y[hist])
    pred = model.predict(X[is_new]).astype(bool)
    seconds = time.perf_counter() - start
    txn = table.column("txn_id").to_numpy(zero_copy_only=False)
    scored = pd.DataFrame({"txn_id": txn[is_new], "label": np.nan_to_num(labels[is_new])})
    hits = txn[is_new][pred]
    alerts = pd.DataFrame({"alert_id": hits, "bank": "", "pattern": "gfp_model", "txn_id": hits})
    res = score_predictions(scored, alerts, patterns.to_pandas())
    res.update({"seconds": round(seconds, 2), "gfp_seconds": round(gfp_seconds, 2),
                "edges_per_second": round(len(raw) / seconds),
                "gfp_edges_per_second": round(len(raw) / gfp_seconds),
                "features": int(X.shape[1]), "threshold": model.threshold_, "mode": model.mode_})
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=200_000,
                    help="approximate size of the generated data set (ignored with --data)")
    ap.add_argument("--data", default=None, help="an `aml synth` output directory instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", default="original",
                    help="data world to generate (aml synth --world; ignored with --data)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="GFP threads (our side uses scikit-learn's defaults)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--peer-only", action="store_true",
                    help="run only the Snap ML side (our figures come from `aml evaluate`)")
    args = ap.parse_args(argv)

    config = DetectionConfig.load()
    transactions, patterns = load_data(args)
    table, is_new, members, _ = time_split(transactions)
    print(f"data: {table.num_rows} transactions at members {','.join(members)}; "
          f"scored (new) {int(is_new.sum())}, laundering among them "
          f"{int(np.nansum(table.column('label').cast(pa.float64()).fill_null(0).to_numpy()[is_new]))}")

    if args.peer_only:
        snap = run_snapml(table, is_new, patterns, config, args.threads)
        if "unavailable" in snap:
            print(f"snapml unavailable: {snap['unavailable']}")
            return 1
        print(f"Snap ML GFP + HistGradientBoosting: F1 {snap['f1']:.3f} precision "
              f"{snap['precision']:.3f} recall {snap['recall']:.3f} ({snap['seconds']:.1f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps({"snapml": snap, "rows": table.num_rows},
                                                  indent=2, default=str) + "\n")
        return 0
    start = time.perf_counter()
    ours_report = evaluate(transactions, patterns, config, silo=False, members=members)
    ours = ours_report["joint"]
    ours["edges_per_second"] = round(table.num_rows / (time.perf_counter() - start))

    snap = run_snapml(table, is_new, patterns, config, args.threads)

    print(f"\n{'method':<34}{'F1':>7}{'prec.':>7}{'recall':>7}{'seconds':>9}{'edges/s':>10}")
    print(f"{'enclave-aml run_detection':<34}{ours['f1']:>7.3f}{ours['precision']:>7.3f}"
          f"{ours['recall']:>7.3f}{ours['seconds']:>9.1f}{ours['edges_per_second']:>10}")
    if "unavailable" in snap:
        print(f"snapml unavailable: {snap['unavailable']}")
    else:
        print(f"{'Snap ML GFP + HistGradientBoosting':<34}{snap['f1']:>7.3f}{snap['precision']:>7.3f}"
              f"{snap['recall']:>7.3f}{snap['seconds']:>9.1f}{snap['edges_per_second']:>10}")
        print(f"  (GFP feature extraction alone: {snap['gfp_seconds']:.1f} s, "
              f"{snap['gfp_edges_per_second']} edges/s, {args.threads} threads)")
        print("\nrecall per typology (ours / Snap ML):")
        for name, r in ours["per_typology"].items():
            other = snap["per_typology"].get(name, {}).get("recall", float("nan"))
            print(f"  {name:<20}{r['recall']:>7.3f}{other:>9.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ours": ours, "snapml": snap, "rows": table.num_rows},
                                              indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
