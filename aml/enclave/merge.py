"""Merge the banks' batches with history and reconcile the copies of each payment.

A payment between two member banks arrives twice, once from each side. The one reconciliation
rule (`reconcile`, also used by `TransactionGraph` for tables with repeated payments):

- A payment is identified by **(txn_id, src_bank, dst_bank)**, not by txn_id alone: txn_ids are
  the banks' own references and may repeat across unrelated bank pairs. Only the two banks a
  row names may send a copy of it; a copy from any other bank is dropped and counted against
  its sender (validation already quarantines such rows as `foreign_row`; this is the backstop,
  and it holds for history rows too). So no bank can touch a payment between two other banks,
  whatever txn_ids it reuses.
- The same bank sending the same payment again (a later batch, a correction) replaces its own
  earlier copy: the latest copy from each bank counts.
- The two banks' copies that agree on every field but `label` become one row, with
  `submitted_by` listing both banks. Labels combine as "laundering if either bank says so"
  (1 beats 0 beats unknown): a bank's SAR history should not be outvoted.
- Copies that disagree on any other field (amount, accounts, time, ...) are a **conflict**:
  neither copy is dropped and neither is preferred. Each stays as its own bank's one-sided
  record (`submitted_by` = that bank alone), and the conflict is counted per submitting bank.
  So a bank cannot erase or rewrite its counterparty's copy; what it adds is no more than any
  one-sided payment it could report under a fresh txn_id. When it later sends a copy that
  agrees, the two become one payment again. `amount_received` / `receiving_currency` are
  compared after their defaults are filled in.
- `is_new` marks rows with a copy from this run's batches whose (combined) label is unknown:
  the rows alerts are raised on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aml.enclave.history import HISTORY_SCHEMA
from aml.core.schema import TRANSACTION_SCHEMA

MERGED_SCHEMA = pa.schema(list(HISTORY_SCHEMA) + [pa.field("is_new", pa.bool_(), nullable=False)])
_COMPARED = [c for c in TRANSACTION_SCHEMA.names if c not in ("txn_id", "label")]
_CARRIED = [c for c in TRANSACTION_SCHEMA.names if c != "label"]
_UNKNOWN_LABEL = -1  # stands for a null label while labels are combined with max()
_DEFAULTS = {"amount_received": "amount", "receiving_currency": "currency"}


@dataclass
class MergeResult:
    merged: pa.Table  # MERGED_SCHEMA
    counts: dict[str, int]  # rows, new_rows, cross_bank, conflicts, foreign_copies, history_rows
    # Per submitting bank: copies kept apart as conflicts / dropped as not the bank's payment.
    conflicts_by_bank: dict[str, int] = field(default_factory=dict)
    foreign_by_bank: dict[str, int] = field(default_factory=dict)

    def history(self) -> pa.Table:
        return self.merged.drop_columns(["is_new"])


class _Copies:
    """Every copy of every payment as one virtual table, made contiguous one column at a time:
    a column is built when asked for and dropped after use, so reconciling never holds a second
    copy of all the rows at once. `bank`: per copy, the submitting bank as a code into `names`
    (sorted); `new`: the copy comes from this run's batches (or, for the graph, is new)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.parts: list[tuple[pa.Table, pa.Array | None]] = []
        self._bank: list[np.ndarray] = []
        self._new: list[np.ndarray] = []

    def add(self, table: pa.Table, bank: np.ndarray, new: np.ndarray, take: pa.Array | None = None) -> None:
        """`table`'s rows (or the rows `take` picks, in that order) as copies."""
        self.parts.append((table, take))
        self._bank.append(np.asarray(bank, dtype=np.int64))
        self._new.append(np.asarray(new, dtype=bool))

    def done(self) -> "_Copies":
        self.bank = np.concatenate(self._bank) if self._bank else np.zeros(0, np.int64)
        self.new = np.concatenate(self._new) if self._new else np.zeros(0, bool)
        del self._bank, self._new
        return self

    def __len__(self) -> int:
        return len(self.bank)

    def raw(self, name: str) -> pa.Array:
        typ = TRANSACTION_SCHEMA.field(name).type
        chunks = []
        for table, take in self.parts:
            if name not in table.column_names:  # an optional column the table lacks
                chunks.append(pa.nulls(table.num_rows if take is None else len(take), typ))
            elif take is not None:
                chunks.append(_array(table.column(name)).cast(typ).take(take))
            else:
                chunks.extend(table.column(name).cast(typ).chunks)
        return pa.concat_arrays(chunks) if chunks else pa.array([], typ)

    def column(self, name: str) -> pa.Array:
        """The column over every copy, defaults filled in (they are compared filled in, and kept so)."""
        if name in _DEFAULTS:
            return pc.coalesce(self.raw(name), self.raw(_DEFAULTS[name]))
        return self.raw(name)


def _array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _differs_from_previous(column: pa.Array) -> np.ndarray:
    """Per row after the first: does it differ from the row before (nulls equal nulls)?"""
    a, b = column.slice(1), column.slice(0, len(column) - 1)
    same = pc.or_(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
    return ~same.to_numpy(zero_copy_only=False)


def _codes(values: pa.Array, names: pa.Array) -> np.ndarray:
    """Positions of `values` in `names`, -1 where absent."""
    return pc.fill_null(pc.index_in(values, value_set=names), -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _per_bank(names: list[str], bank: np.ndarray) -> dict[str, int]:
    counts = np.bincount(bank, minlength=len(names)) if len(bank) else np.zeros(len(names), np.int64)
    return {str(names[i]): int(k) for i, k in enumerate(counts) if k}


def reconcile(copies: _Copies, submitters: bool = True) -> MergeResult:
    """The one reconciliation rule (module docstring) over `copies`. `submitters`: the copies'
    banks are real submitting banks (checked against the row's banks and listed in
    `submitted_by`); False when each copy is only its own source (a table without provenance)."""
    names, bank = copies.names, copies.bank
    if len(bank) == 0:
        return MergeResult(MERGED_SCHEMA.empty_table(), {"rows": 0, "new_rows": 0, "cross_bank": 0,
                                                         "conflicts": 0, "foreign_copies": 0})
    txn_ids = copies.column("txn_id")
    src_names, dst_names = copies.column("src_bank"), copies.column("dst_bank")
    row_banks = pc.unique(pa.concat_arrays([src_names, dst_names]))
    row_banks = row_banks.take(pc.sort_indices(row_banks))
    src, dst = _codes(src_names, row_banks), _codes(dst_names, row_banks)
    built = {"txn_id": txn_ids, "src_bank": src_names, "dst_bank": dst_names}  # reused below
    n_banks = max(len(row_banks), 1)
    pair = src * n_banks + dst  # ordered like (src_bank, dst_bank) by name

    # A copy counts only when its bank is one of the two banks the row names.
    if submitters:
        own = _codes(pa.array(names, pa.string()), row_banks)[bank] if len(bank) else np.zeros(0, np.int64)
        valid = (own >= 0) & ((own == src) | (own == dst))
    else:
        valid = np.ones(len(bank), dtype=bool)
    foreign_by_bank = _per_bank(names, bank[~valid]) if submitters else {}
    del src, dst

    # One key per (payment, bank); a payment is (txn_id, src_bank, dst_bank). A stable sort keeps
    # the copies of one key in arrival order, so the last of each run is that bank's latest copy.
    txn = pc.dictionary_encode(txn_ids).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_names = max(len(names), 1)
    if (int(txn.max()) + 1) * n_banks * n_banks * n_names < 2**62:  # the usual case: no hashing
        payment = txn * (n_banks * n_banks) + pair
    else:  # many banks, or one pseudo-bank per row (the graph): compact codes first
        pair_id, pairs = pd.factorize(pair)
        payment = pd.factorize(txn * max(len(pairs), 1) + pair_id)[0].astype(np.int64)
        del pair_id
    del txn
    idx = np.flatnonzero(valid)
    key = payment[idx] * n_names + bank[idx]
    sort = np.argsort(key, kind="stable")
    order, key = idx[sort], key[sort]
    del sort
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[1:] != key[:-1]
    rows = order[last]  # latest copy per (payment, bank), grouped by payment, banks in name order
    del order, last, key, idx

    group = payment[rows]
    same_group = group[1:] == group[:-1]
    starts = np.flatnonzero(np.r_[True, ~same_group]) if len(rows) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(rows)])

    # Output order: (timestamp, txn_id, src_bank, dst_bank, submitting bank) of a row's first copy.
    def order_of(first: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        at = pa.array(first)
        when = pa.table({"timestamp": copies.column("timestamp").take(at), "txn_id": txn_ids.take(at),
                         "pair": pa.array(pair[first]), "bank": pa.array(bank[first])})
        return when, pc.sort_indices(when, [("timestamp", "ascending"), ("txn_id", "ascending"),
                                            ("pair", "ascending"), ("bank", "ascending")]).to_numpy()

    # One pass over the columns: each is built once, compared across the copies of a payment (a
    # payment conflicts when any copy differs from the one before it, so from any other), and
    # gathered at each payment's first copy, straight into output order.
    gfirst = rows[starts]
    gwhen, gperm = order_of(gfirst)
    gather = pa.array(gfirst[gperm])
    differs = np.zeros(len(rows), dtype=bool)
    pair_diff = np.zeros(max(len(rows) - 1, 0), dtype=bool)
    any_pairs = bool(same_group.any())
    copy_rows = pa.array(rows)
    columns: dict[str, pa.Array] = {}
    for name in _CARRIED:
        if name in ("timestamp", "txn_id"):
            columns[name] = gwhen.column(name).combine_chunks().take(pa.array(gperm))
            if not (any_pairs and name in _COMPARED):
                continue
        col = built.pop(name, None)
        col = copies.column(name) if col is None else col
        if any_pairs and name in _COMPARED:
            pair_diff |= _differs_from_previous(col.take(copy_rows))
        if name not in columns:
            columns[name] = col.take(gather)
        del col
    differs[1:] = pair_diff & same_group
    conflicted = np.logical_or.reduceat(differs, starts)
    in_conflict = np.repeat(conflicted, sizes)

    # Output rows ("units"): one per payment, except that each copy of a conflicted payment is a
    # row of its own, submitted by its bank alone.
    unit_start = np.r_[True, ~same_group] | in_conflict
    ustarts = np.flatnonzero(unit_start)
    usizes = np.diff(np.r_[ustarts, len(rows)])
    labels = pc.fill_null(copies.column("label"), _UNKNOWN_LABEL).to_numpy(zero_copy_only=False).astype(np.int8)
    best = np.maximum.reduceat(labels[rows], ustarts)  # 1 beats 0 beats unknown
    any_new = np.logical_or.reduceat(copies.new[rows], ustarts)
    del labels
    unknown = best == _UNKNOWN_LABEL
    is_new = any_new & unknown
    # each payment's first unit, in output order; then (only when some payment conflicts) the
    # other copies of conflicted payments, gathered on their own and sorted in
    perm = np.searchsorted(ustarts, starts)[gperm]
    if conflicted.any():
        extra = np.flatnonzero(in_conflict & ~np.r_[True, ~same_group])  # positions in rows
        xunits = np.searchsorted(ustarts, extra)
        xwhen, _ = order_of(rows[extra])
        xgather = pa.array(rows[extra])
        for name in _CARRIED:
            more = xwhen.column(name).combine_chunks() if name in ("timestamp", "txn_id") \
                else copies.column(name).take(xgather)
            columns[name] = pa.concat_arrays([columns[name], more])
        both = pa.table({"timestamp": columns["timestamp"], "txn_id": columns["txn_id"],
                         "pair": pa.array(np.r_[pair[gfirst[gperm]], pair[rows[extra]]]),
                         "bank": pa.array(np.r_[bank[gfirst[gperm]], bank[rows[extra]]])})
        fperm = pc.sort_indices(both, [("timestamp", "ascending"), ("txn_id", "ascending"),
                                       ("pair", "ascending"), ("bank", "ascending")])
        columns = {name: col.take(fperm) for name, col in columns.items()}
        perm = np.r_[perm, xunits][fperm.to_numpy()]
    del txn_ids, built
    # submitted_by: each output row's copies, in bank-name order, gathered without a loop
    sizes_out = usizes[perm]
    offsets = np.r_[0, np.cumsum(sizes_out)].astype(np.int64)
    sub_rows = rows[np.arange(offsets[-1]) + np.repeat(ustarts[perm] - offsets[:-1], sizes_out)]
    if submitters:
        bank_names = pa.array(names, pa.string()).take(pa.array(bank[sub_rows]))
    else:
        bank_names = pa.nulls(len(sub_rows), pa.string())
    columns["label"] = pa.array(best[perm], pa.int8(), mask=unknown[perm])
    columns["submitted_by"] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()), bank_names)
    columns["is_new"] = pa.array(is_new[perm], pa.bool_())
    merged = pa.table([columns[f.name] for f in MERGED_SCHEMA], schema=MERGED_SCHEMA)
    counts = {
        "rows": merged.num_rows,
        "new_rows": int(is_new.sum()),
        "cross_bank": int((usizes > 1).sum()),
        "conflicts": int(conflicted.sum()),
        "foreign_copies": int((~valid).sum()) if submitters else 0,
    }
    return MergeResult(merged, counts, _per_bank(names, bank[rows[in_conflict]]) if submitters else {},
                       foreign_by_bank)


def merge_batches(batches: list[tuple[str, pa.Table]], history: pa.Table | None = None) -> MergeResult:
    """`batches`: (bank, rows in TRANSACTION_SCHEMA) for this run, in arrival order; `history`:
    HISTORY_SCHEMA (each row expanded to one copy per submitting bank, before the batches)."""
    names = {bank for bank, _ in batches}
    submitted = parents = None
    if history is not None and history.num_rows:
        submitted = _array(history.column("submitted_by"))
        parents = pc.list_parent_indices(submitted)
        flat = pc.list_flatten(submitted)
        names |= set(pc.unique(flat).to_pylist())
    copies = _Copies(sorted(names))
    if parents is not None:
        flat_banks = _codes(pc.list_flatten(submitted), pa.array(copies.names, pa.string()))
        copies.add(history, flat_banks, np.zeros(len(flat_banks), dtype=bool), take=parents)
    for bank, table in batches:
        copies.add(table, np.full(table.num_rows, copies.names.index(bank)), np.ones(table.num_rows, dtype=bool))
    result = reconcile(copies.done())
    result.counts["history_rows"] = history.num_rows if history is not None else 0
    return result
