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


class _Stacked:
    """Every copy (history first, expanded to one row per submitting bank, then the batches in
    the order given) as one virtual table, made contiguous one column at a time: a column is
    built when asked for and dropped after use, so the merge never holds a second copy of all
    the rows at once. `bank`: per row, a code into the sorted bank names; `new`: from a batch."""

    def __init__(self, batches: list[tuple[str, pa.Table]], history: pa.Table | None):
        self.history, self.parents = None, None
        self.batches = [table for _, table in batches]
        names = {bank for bank, _ in batches}
        codes, new = [], []
        if history is not None and history.num_rows:
            submitted = _array(history.column("submitted_by"))
            self.history, self.parents = history, pc.list_parent_indices(submitted)
            flat_banks = pc.list_flatten(submitted)
            names |= set(pc.unique(flat_banks).to_pylist())
            codes.append(flat_banks)
            new.append(np.zeros(len(flat_banks), dtype=bool))
        self.names = sorted(names)
        if codes:
            codes[0] = pc.index_in(codes[0], value_set=pa.array(self.names)).to_numpy()
        for bank, table in batches:
            codes.append(np.full(table.num_rows, self.names.index(bank)))
            new.append(np.ones(table.num_rows, dtype=bool))
        self.bank = np.concatenate(codes).astype(np.int64) if codes else np.zeros(0, np.int64)
        self.new = np.concatenate(new) if new else np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.bank)

    def raw(self, name: str) -> pa.Array:
        field = TRANSACTION_SCHEMA.field(name)
        chunks = []
        if self.history is not None:
            chunks.append(_array(self.history.column(name)).cast(field.type).take(self.parents))
        for table in self.batches:
            chunks.extend(table.column(name).cast(field.type).chunks)
        return pa.concat_arrays(chunks) if chunks else pa.array([], field.type)

    def column(self, name: str) -> pa.Array:
        """The column over every copy, defaults filled in (they are compared filled in, and kept so)."""
        if name in _DEFAULTS:
            return pc.coalesce(self.raw(name), self.raw(_DEFAULTS[name]))
        return self.raw(name)


_DEFAULTS = {"amount_received": "amount", "receiving_currency": "currency"}


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
    stacked = _Stacked(batches, history)
    if len(stacked) == 0:
        return MergeResult(MERGED_SCHEMA.empty_table(), {"rows": 0, "new_rows": 0, "cross_bank": 0,
                                                         "conflicts": 0, "history_rows": history_rows})
    bank, names = stacked.bank, stacked.names

    # One key per (payment, bank), ordered by payment then bank name; a stable sort keeps the
    # copies of one key in arrival order, so the last of each run is the latest copy.
    txn_ids = stacked.column("txn_id")
    txn = pc.dictionary_encode(txn_ids).indices.to_numpy().astype(np.int64)
    key = txn * len(names) + bank
    order = np.argsort(key, kind="stable")
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[order[1:]] != key[order[:-1]]
    del key
    rows = order[last]  # latest copy per (payment, bank), grouped by payment, banks in name order
    del order, last

    group = txn[rows]
    del txn
    same_group = group[1:] == group[:-1]
    starts = np.flatnonzero(np.r_[True, ~same_group])
    sizes = np.diff(np.r_[starts, len(rows)])
    first = rows[starts]  # per payment, its first copy (in stacked rows)
    # Output order (timestamp, txn_id) of each payment's first copy, worked out on those two
    # columns; every column is then gathered once, straight into that order.
    when = pa.table({"timestamp": stacked.column("timestamp").take(pa.array(first)),
                     "txn_id": txn_ids.take(pa.array(first))})
    perm = pc.sort_indices(when, [("timestamp", "ascending"), ("txn_id", "ascending")]).to_numpy()
    final = pa.array(first[perm])
    del txn_ids

    # A payment conflicts when any of its copies differs from the one before it (so from any
    # other); compared and gathered column by column.
    pair = np.zeros(max(len(rows) - 1, 0), dtype=bool)
    any_pairs = bool(same_group.any())
    copies = pa.array(rows)
    columns: dict[str, pa.Array] = {}
    for name in _CARRIED:
        if name == "timestamp" or name == "txn_id":
            columns[name] = when.column(name).combine_chunks().take(pa.array(perm))
            if name == "txn_id":
                continue
        col = stacked.column(name)
        if any_pairs and name in _COMPARED:
            pair |= _differs_from_previous(col.take(copies))
        if name not in columns:
            columns[name] = col.take(final)
        del col
    differs = np.zeros(len(rows), dtype=bool)
    differs[1:] = pair & same_group
    conflicted = np.logical_or.reduceat(differs, starts)
    n_conflicts = int(conflicted.sum())

    keep_row = np.repeat(~conflicted, sizes)
    sizes_kept = sizes[~conflicted]
    kept_starts = np.r_[0, np.cumsum(sizes_kept)[:-1]].astype(np.int64)
    labels = pc.fill_null(stacked.column("label"), _UNKNOWN_LABEL).to_numpy(zero_copy_only=False).astype(np.int8)
    if len(sizes_kept):
        best = np.maximum.reduceat(labels[rows][keep_row], kept_starts)  # 1 beats 0 beats unknown
        any_new = np.logical_or.reduceat(stacked.new[rows][keep_row], kept_starts)
    else:
        best, any_new = np.zeros(0, np.int8), np.zeros(0, dtype=bool)
    unknown = best == _UNKNOWN_LABEL
    is_new = any_new & unknown

    # Conflicted payments leave the output (in output order: kept, sorted by perm).
    kept_perm = perm[~conflicted[perm]] if n_conflicts else perm
    if n_conflicts:
        keep_out = pa.array(~conflicted[perm])
        columns = {name: col.filter(keep_out) for name, col in columns.items()}
    # perm indexes all payments; the kept payments' own order, as positions among the kept:
    rank = np.cumsum(~conflicted) - 1
    kept_order = rank[kept_perm]
    offsets = pa.array(np.r_[0, np.cumsum(sizes_kept)].astype(np.int32), pa.int32())
    bank_names = pa.array(names, pa.string()).take(pa.array(bank[rows][keep_row]))
    columns["label"] = pa.array(best[kept_order], pa.int8(), mask=unknown[kept_order])
    columns["submitted_by"] = pa.ListArray.from_arrays(offsets, bank_names).take(pa.array(kept_order))
    columns["is_new"] = pa.array(is_new[kept_order], pa.bool_())
    merged = pa.table([columns[f.name] for f in MERGED_SCHEMA], schema=MERGED_SCHEMA)
    counts = {
        "rows": merged.num_rows,
        "new_rows": int(is_new.sum()),
        "cross_bank": int((sizes_kept > 1).sum()),
        "conflicts": n_conflicts,
        "history_rows": history_rows,
    }
    return MergeResult(merged, counts)
