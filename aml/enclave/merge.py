"""Merge the banks' batches with history and reconcile the two copies of cross-bank payments.

A payment between two member banks arrives twice, once from each side, with the same txn_id.
Rules (applied to this run's rows and the history together):

- The same bank sending the same txn_id again (a later batch, a correction) replaces its own
  earlier copy: the latest copy from each bank counts.
- Copies from different banks that agree on every field but `label` become one row, with
  `submitted_by` listing both banks. Labels combine as "laundering if either bank says so"
  (1 beats 0 beats unknown): a bank's SAR history should not be outvoted.
- Copies that disagree on any other field (amount, accounts, time, ...) are a conflict: the
  payment is kept out of detection and out of history, and counted. Neither side can be
  trusted over the other, and guessing would put one bank's view into the other's alerts.
  `amount_received` / `receiving_currency` are compared after their defaults are filled in.
- `is_new` marks rows from this run's batches whose (combined) label is unknown: the rows
  alerts are raised on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from aml.enclave.history import HISTORY_SCHEMA
from aml.schema import TRANSACTION_SCHEMA

MERGED_SCHEMA = pa.schema(list(HISTORY_SCHEMA) + [pa.field("is_new", pa.bool_(), nullable=False)])
_COMPARED = [c for c in TRANSACTION_SCHEMA.names if c != "label"]


@dataclass
class MergeResult:
    merged: pa.Table  # MERGED_SCHEMA, conflicts removed
    counts: dict[str, int]  # rows, new_rows, cross_bank, conflicts, history_rows

    def history(self) -> pa.Table:
        return self.merged.drop_columns(["is_new"])


def _frame(table: pa.Table, bank_of_row, new: bool) -> pd.DataFrame:
    df = table.select(TRANSACTION_SCHEMA.names).to_pandas()
    df["label"] = df["label"].astype("float64")  # NaN = unknown
    df["_bank"] = bank_of_row
    df["_new"] = new
    return df


def merge_batches(batches: list[tuple[str, pa.Table]], history: pa.Table | None = None) -> MergeResult:
    """`batches`: (bank, rows in TRANSACTION_SCHEMA) for this run; `history`: HISTORY_SCHEMA."""
    frames = []
    history_rows = 0
    if history is not None and history.num_rows:
        history_rows = history.num_rows
        banks = history.column("submitted_by").to_pylist()
        lengths = np.fromiter((len(b) for b in banks), dtype=np.int64, count=len(banks))
        exploded = history.take(pa.array(np.repeat(np.arange(len(banks)), lengths)))
        frames.append(_frame(exploded, [b for bs in banks for b in bs], new=False))
    for bank, table in batches:
        frames.append(_frame(table, bank, new=True))
    if not frames:
        return MergeResult(MERGED_SCHEMA.empty_table(), {"rows": 0, "new_rows": 0, "cross_bank": 0,
                                                         "conflicts": 0, "history_rows": 0})
    df = pd.concat(frames, ignore_index=True)
    # Latest copy per (payment, bank): history first, batches in the order given.
    df = df.drop_duplicates(["txn_id", "_bank"], keep="last")

    compared = df[_COMPARED].copy()
    compared["amount_received"] = compared["amount_received"].fillna(compared["amount"])
    compared["receiving_currency"] = compared["receiving_currency"].fillna(compared["currency"])
    df["amount_received"] = compared["amount_received"]
    df["receiving_currency"] = compared["receiving_currency"]
    row_hash = pd.util.hash_pandas_object(compared, index=False)
    variants = row_hash.groupby(df["txn_id"].to_numpy()).transform("nunique").to_numpy()
    conflicted = variants > 1
    n_conflicts = int(df.loc[conflicted, "txn_id"].nunique())
    df = df.loc[~conflicted].sort_values(["txn_id", "_bank"], kind="stable")

    grouped = df.groupby("txn_id", sort=False)
    first = grouped.head(1).set_index("txn_id")
    submitted = grouped["_bank"].agg(list)
    label = grouped["label"].max()
    any_new = grouped["_new"].any()

    out = first[TRANSACTION_SCHEMA.names[1:]].copy()
    out["label"] = label
    out["submitted_by"] = submitted
    out["is_new"] = any_new & label.isna()
    out = out.rename_axis("txn_id").reset_index()
    out = out.sort_values(["timestamp", "txn_id"], kind="stable").reset_index(drop=True)
    out["label"] = out["label"].astype("Int8")
    merged = pa.Table.from_pandas(out, schema=MERGED_SCHEMA, preserve_index=False).replace_schema_metadata(None)
    counts = {
        "rows": merged.num_rows,
        "new_rows": int(out["is_new"].sum()),
        "cross_bank": int((submitted.str.len() > 1).sum()),
        "conflicts": n_conflicts,
        "history_rows": history_rows,
    }
    return MergeResult(merged, counts)
