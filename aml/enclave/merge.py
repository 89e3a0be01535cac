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


def _stack(batches: list[tuple[str, pa.Table]], history: pa.Table | None) -> tuple[pa.Table, pa.Array, np.ndarray]:
    """All copies in one table (history first, then the batches in the order given), with the
    submitting bank and whether the copy is from this run, one entry per row."""
    tables, banks, new = [], [], []
    if history is not None and history.num_rows:
        submitted = history.column("submitted_by").combine_chunks()
        tables.append(history.select(TRANSACTION_SCHEMA.names).take(pc.list_parent_indices(submitted)))
        banks.append(pc.list_flatten(submitted))
        new.append(np.zeros(len(banks[-1]), dtype=bool))
    for bank, table in batches:
        tables.append(table.select(TRANSACTION_SCHEMA.names))
        banks.append(pa.array(np.full(table.num_rows, bank, dtype=object), pa.string()))
        new.append(np.ones(table.num_rows, dtype=bool))
    stacked = pa.concat_tables([t.cast(TRANSACTION_SCHEMA) for t in tables])
    return stacked, pa.concat_arrays([_array(b) for b in banks]), np.concatenate(new)


def _array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _codes(column) -> np.ndarray:
    """Integer codes for a string column: equal strings, equal codes (first-seen order)."""
    return pc.dictionary_encode(_array(column)).indices.to_numpy().astype(np.int64)


def _ranks(column) -> np.ndarray:
    """Integer codes for a string column with few distinct values, in the strings' order."""
    encoded = pc.dictionary_encode(_array(column))
    rank = np.argsort(np.argsort(encoded.dictionary.to_numpy(zero_copy_only=False), kind="stable"))
    return rank[encoded.indices.to_numpy()].astype(np.int64)


def _differs_from_first(column: pa.Array, rows: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per row: does `column` at `rows` differ from its group's first copy (nulls equal nulls)?"""
    a, b = column.take(rows), column.take(first)
    same = pc.fill_null(pc.equal(a, b), False)
    both_null = pc.and_(pc.is_null(a), pc.is_null(b))
    return ~pc.or_(same, both_null).to_numpy(zero_copy_only=False)


def merge_batches(batches: list[tuple[str, pa.Table]], history: pa.Table | None = None) -> MergeResult:
    """`batches`: (bank, rows in TRANSACTION_SCHEMA) for this run; `history`: HISTORY_SCHEMA."""
    history_rows = history.num_rows if history is not None else 0
    if not batches and not history_rows:
        return MergeResult(MERGED_SCHEMA.empty_table(), {"rows": 0, "new_rows": 0, "cross_bank": 0,
                                                         "conflicts": 0, "history_rows": 0})
    stacked, banks, new = _stack(batches, history)
    # Defaults filled in before comparing, and kept filled in the output.
    stacked = stacked.set_column(stacked.schema.get_field_index("amount_received"), "amount_received",
                                 pc.coalesce(stacked["amount_received"], stacked["amount"]))
    stacked = stacked.set_column(stacked.schema.get_field_index("receiving_currency"), "receiving_currency",
                                 pc.coalesce(stacked["receiving_currency"], stacked["currency"]))
    stacked = stacked.combine_chunks()

    # One key per (payment, bank), ordered by payment then bank name; a stable sort keeps the
    # copies of one key in arrival order, so the last of each run is the latest copy.
    txn = _codes(stacked["txn_id"])  # grouping only: the output is sorted by (timestamp, txn_id) below
    bank = _ranks(banks)
    key = txn * (int(bank.max()) + 1 if len(bank) else 1) + bank
    order = np.argsort(key, kind="stable")
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[order[1:]] != key[order[:-1]]
    rows = order[last]  # latest copy per (payment, bank), grouped by payment, banks in name order

    group_txn = txn[rows]
    starts = np.flatnonzero(np.r_[True, group_txn[1:] != group_txn[:-1]]) if len(rows) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(rows)])
    first = np.repeat(rows[starts], sizes)
    differs = np.zeros(len(rows), dtype=bool)
    multi = np.repeat(sizes > 1, sizes)  # only payments with more than one copy can disagree
    if multi.any():
        sub_rows, sub_first = rows[multi], first[multi]
        sub_differs = np.zeros(len(sub_rows), dtype=bool)
        for name in _COMPARED:
            sub_differs |= _differs_from_first(_array(stacked[name]), sub_rows, sub_first)
        differs[multi] = sub_differs
    conflicted = np.logical_or.reduceat(differs, starts) if len(starts) else np.zeros(0, dtype=bool)
    n_conflicts = int(conflicted.sum())

    keep_group = ~conflicted
    keep_row = np.repeat(keep_group, sizes)
    starts_kept = starts[keep_group]
    sizes_kept = sizes[keep_group]
    rows_kept = rows[keep_row]
    first_kept = rows[starts_kept]

    labels = pc.fill_null(_array(stacked["label"]), _UNKNOWN_LABEL).to_numpy(zero_copy_only=False).astype(np.int8)
    kept_starts_in_kept = np.r_[0, np.cumsum(sizes_kept)[:-1]].astype(np.int64) if len(sizes_kept) else np.zeros(0, np.int64)
    if len(rows_kept):
        best = np.maximum.reduceat(labels[rows_kept], kept_starts_in_kept)  # 1 beats 0 beats unknown
        any_new = np.logical_or.reduceat(new[rows_kept], kept_starts_in_kept)
    else:
        best, any_new = np.zeros(0, np.int8), np.zeros(0, dtype=bool)
    unknown = best == _UNKNOWN_LABEL

    offsets = pa.array(np.r_[0, np.cumsum(sizes_kept)].astype(np.int32), pa.int32())
    submitted_by = pa.ListArray.from_arrays(offsets, banks.take(pa.array(rows_kept)))
    columns = {name: _array(stacked[name]).take(pa.array(first_kept)) for name in _CARRIED}
    columns["label"] = pa.array(best, pa.int8(), mask=unknown)
    columns["submitted_by"] = submitted_by
    columns["is_new"] = pa.array(any_new & unknown, pa.bool_())
    merged = pa.table([columns[f.name] for f in MERGED_SCHEMA], schema=MERGED_SCHEMA)
    merged = merged.take(pc.sort_indices(merged, [("timestamp", "ascending"), ("txn_id", "ascending")]))
    counts = {
        "rows": merged.num_rows,
        "new_rows": int((any_new & unknown).sum()),
        "cross_bank": int((sizes_kept > 1).sum()),
        "conflicts": n_conflicts,
        "history_rows": history_rows,
    }
    return MergeResult(merged, counts)
