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
import pyarrow as pa
import pyarrow.compute as pc

from aml.enclave.history import HISTORY_SCHEMA
from aml.schema import TRANSACTION_SCHEMA

MERGED_SCHEMA = pa.schema(list(HISTORY_SCHEMA) + [pa.field("is_new", pa.bool_(), nullable=False)])
_COMPARED = [c for c in TRANSACTION_SCHEMA.names if c not in ("txn_id", "label")]
_CARRIED = [c for c in TRANSACTION_SCHEMA.names if c != "label"]
_UNKNOWN_LABEL = -1  # stands for a null label while labels are combined with max()


@dataclass
class MergeResult:
    merged: pa.Table  # MERGED_SCHEMA, conflicts removed
    counts: dict[str, int]  # rows, new_rows, cross_bank, conflicts, history_rows

    def history(self) -> pa.Table:
        return self.merged.drop_columns(["is_new"])


def _stack(batches: list[tuple[str, pa.Table]], history: pa.Table | None
           ) -> tuple[pa.Table, np.ndarray, list[str], np.ndarray]:
    """All copies in one table (history first, then the batches in the order given), with, per
    row, the submitting bank (a code into the sorted bank names) and whether the copy is new."""
    tables, flat_banks, new = [], None, []
    names = {bank for bank, _ in batches}
    if history is not None and history.num_rows:
        submitted = _array(history.column("submitted_by"))
        tables.append(history.select(TRANSACTION_SCHEMA.names).take(pc.list_parent_indices(submitted)))
        flat_banks = pc.list_flatten(submitted)
        names |= set(pc.unique(flat_banks).to_pylist())
        new.append(np.zeros(len(flat_banks), dtype=bool))
    names = sorted(names)
    codes = [] if flat_banks is None else [pc.index_in(flat_banks, value_set=pa.array(names)).to_numpy()]
    for bank, table in batches:
        tables.append(table.select(TRANSACTION_SCHEMA.names))
        codes.append(np.full(table.num_rows, names.index(bank)))
        new.append(np.ones(table.num_rows, dtype=bool))
    # One contiguous table: gathering rows from it is much faster than from many chunks.
    stacked = pa.concat_tables([t.cast(TRANSACTION_SCHEMA) for t in tables]).combine_chunks()
    return stacked, np.concatenate(codes).astype(np.int64), names, np.concatenate(new)


def _array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _differs_from_previous(column: pa.Array) -> np.ndarray:
    """Per row after the first: does it differ from the row before (nulls equal nulls)?"""
    a, b = column.slice(1), column.slice(0, len(column) - 1)
    same = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
    return ~same.to_numpy(zero_copy_only=False)


def merge_batches(batches: list[tuple[str, pa.Table]], history: pa.Table | None = None) -> MergeResult:
    """`batches`: (bank, rows in TRANSACTION_SCHEMA) for this run; `history`: HISTORY_SCHEMA."""
    history_rows = history.num_rows if history is not None else 0
    stacked, bank, names, new = _stack(batches, history) if batches or history_rows else (None, None, [], None)
    if stacked is None or stacked.num_rows == 0:
        return MergeResult(MERGED_SCHEMA.empty_table(), {"rows": 0, "new_rows": 0, "cross_bank": 0,
                                                         "conflicts": 0, "history_rows": history_rows})

    # One key per (payment, bank), ordered by payment then bank name; a stable sort keeps the
    # copies of one key in arrival order, so the last of each run is the latest copy.
    txn = pc.dictionary_encode(_array(stacked["txn_id"])).indices.to_numpy().astype(np.int64)
    key = txn * len(names) + bank
    order = np.argsort(key, kind="stable")
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[order[1:]] != key[order[:-1]]
    rows = order[last]  # latest copy per (payment, bank), grouped by payment, banks in name order
    copies = stacked.take(pa.array(rows))
    # Defaults filled in before comparing, and kept filled in the output.
    copies = copies.set_column(copies.schema.get_field_index("amount_received"), "amount_received",
                               pc.coalesce(copies["amount_received"], copies["amount"]))
    copies = copies.set_column(copies.schema.get_field_index("receiving_currency"), "receiving_currency",
                               pc.coalesce(copies["receiving_currency"], copies["currency"]))
    copies = copies.combine_chunks()

    group = txn[rows]
    same_group = group[1:] == group[:-1]
    starts = np.flatnonzero(np.r_[True, ~same_group])
    sizes = np.diff(np.r_[starts, len(rows)])
    # A payment conflicts when any of its copies differs from the one before it (so from any other).
    differs = np.zeros(len(rows), dtype=bool)
    if same_group.any():
        pair = np.zeros(len(rows) - 1, dtype=bool)
        for name in _COMPARED:
            pair |= _differs_from_previous(_array(copies[name]))
        differs[1:] = pair & same_group
    conflicted = np.logical_or.reduceat(differs, starts)
    n_conflicts = int(conflicted.sum())

    keep_row = np.repeat(~conflicted, sizes)
    sizes_kept = sizes[~conflicted]
    kept_starts = np.r_[0, np.cumsum(sizes_kept)[:-1]].astype(np.int64)
    labels = pc.fill_null(_array(copies["label"]), _UNKNOWN_LABEL).to_numpy(zero_copy_only=False).astype(np.int8)
    if len(sizes_kept):
        best = np.maximum.reduceat(labels[keep_row], kept_starts)  # 1 beats 0 beats unknown
        any_new = np.logical_or.reduceat(new[rows][keep_row], kept_starts)
    else:
        best, any_new = np.zeros(0, np.int8), np.zeros(0, dtype=bool)
    unknown = best == _UNKNOWN_LABEL
    is_new = any_new & unknown

    offsets = pa.array(np.r_[0, np.cumsum(sizes_kept)].astype(np.int32), pa.int32())
    bank_names = pa.array(names, pa.string()).take(pa.array(bank[rows][keep_row]))
    first = starts[~conflicted]
    # Output order (timestamp, txn_id), worked out on those two columns, so every column is
    # gathered once.
    when = pa.table({"timestamp": _array(copies["timestamp"]).take(pa.array(first)),
                     "txn_id": _array(copies["txn_id"]).take(pa.array(first))})
    perm = pc.sort_indices(when, [("timestamp", "ascending"), ("txn_id", "ascending")]).to_numpy()
    first_sorted = pa.array(first[perm])
    columns = {name: _array(copies[name]).take(first_sorted) for name in _CARRIED}
    columns["label"] = pa.array(best[perm], pa.int8(), mask=unknown[perm])
    columns["submitted_by"] = pa.ListArray.from_arrays(offsets, bank_names).take(pa.array(perm))
    columns["is_new"] = pa.array(is_new[perm], pa.bool_())
    merged = pa.table([columns[f.name] for f in MERGED_SCHEMA], schema=MERGED_SCHEMA)
    counts = {
        "rows": merged.num_rows,
        "new_rows": int(is_new.sum()),
        "cross_bank": int((sizes_kept > 1).sum()),
        "conflicts": n_conflicts,
        "history_rows": history_rows,
    }
    return MergeResult(merged, counts)
