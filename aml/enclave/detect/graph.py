"""The temporal transaction graph every detector reads.

Nodes are (bank, account) pairs — the same account id at two banks is two accounts. Edges are
payments, sorted by time then txn_id, with amounts converted to the base currency. Adjacency is
CSR-style: `out_idx[out_ptr[n]:out_ptr[n+1]]` are the edge indices leaving node `n`, sorted by
time (same for `in_*`). Everything is built with numpy/pandas sorts, no per-edge Python loop.
"""

from __future__ import annotations

from functools import cached_property

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from aml.core.errors import ConfigError, SchemaError
from aml.core.schema import TRANSACTION_SCHEMA

_SEP = "\x1f"  # joins bank and account into one node key; never appears in ids


def _array(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _codes(values: pa.Array) -> tuple[np.ndarray, list]:
    """Dictionary-encode a string column: (small int codes, the distinct values)."""
    enc = pc.dictionary_encode(values)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    dictionary = enc.dictionary.to_pylist()
    dtype = np.int8 if len(dictionary) < 2**7 else np.int32
    return enc.indices.to_numpy(zero_copy_only=False).astype(dtype), dictionary


class TransactionGraph:
    """Payments as a directed temporal multigraph over (bank, account) nodes.

    Edge attributes are plain numpy arrays in edge order (`t`, `src`, `dst`, `amount`,
    `is_new`, `label`, ...); string columns are kept as small integer codes (`currency_code`,
    `format_code`) or in Arrow (`txn_id`), so a graph of millions of payments holds no Python
    string per payment. `edges` builds the pandas view of all of it on demand (tests, analysis).
    """

    def __init__(self, *, txn_id: pa.Array, t: np.ndarray, src: np.ndarray, dst: np.ndarray,
                 amount: np.ndarray, amount_orig: np.ndarray, label: np.ndarray,
                 is_new: np.ndarray, currency_code: np.ndarray, currencies: list,
                 format_code: np.ndarray, formats: list, src_submitted: np.ndarray,
                 dst_submitted: np.ndarray, submitted_by: pa.Array | None,
                 members: list[str] | None, node_bank: np.ndarray, node_account: np.ndarray,
                 hub_degree: int = 200):
        self.txn_id = txn_id
        self.t, self.src, self.dst = t, src, dst
        self.amount, self.amount_orig, self.label, self.is_new = amount, amount_orig, label, is_new
        self.currency_code, self.currencies = currency_code, currencies
        self.format_code, self.formats = format_code, formats
        # Whether the payer's / payee's bank submitted the payment (alert scoping): a bank sees
        # a payment only if it submitted it and is one of its two banks.
        self.src_submitted, self.dst_submitted = src_submitted, dst_submitted
        self._submitted_by = submitted_by  # the list column as given (None: the default)
        self._members = members
        self.node_bank = node_bank
        self.node_account = node_account
        self.n_nodes = len(node_bank)
        self.hub_degree = hub_degree
        self.out_ptr, self.out_idx = self._csr(self.src)
        self.in_ptr, self.in_idx = self._csr(self.dst)

    def __len__(self) -> int:
        return len(self.t)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_table(cls, table: pa.Table, config, members: list[str] | None = None
                   ) -> "TransactionGraph":
        """Build from TRANSACTION_SCHEMA columns (+ optional `is_new`, `submitted_by`).

        `is_new` defaults to "label is null". `submitted_by` defaults to the banks among
        src_bank/dst_bank that are members (`members`, default: every bank seen). Rows that
        repeat a payment (a payment between two members arrives from both sides) are reconciled
        by the enclave merge's rule (`_merge_duplicate_rows`): a payment is (txn_id, src_bank,
        dst_bank), never txn_id alone.
        """
        missing = [c for c in TRANSACTION_SCHEMA.names
                   if TRANSACTION_SCHEMA.field(c).nullable is False and c not in table.column_names]
        if missing:
            raise SchemaError(f"transaction table lacks required columns: {', '.join(missing)}")
        if not pa.types.is_timestamp(table.column("timestamp").type):
            raise SchemaError("transaction table column timestamp is not a timestamp")
        # (pc.unique is ~3x faster than pc.count_distinct on millions of ids)
        if table.num_rows and len(pc.unique(table.column("txn_id"))) < table.num_rows:
            table = cls._merge_duplicate_rows(table, members)
        n = table.num_rows
        ts = table.column("timestamp")
        t = pc.cast(pc.cast(ts, pa.timestamp("s", tz="UTC"), safe=False), pa.int64())
        t = t.to_numpy(zero_copy_only=False).astype(np.int64)
        txn = _array(table, "txn_id")

        # Time, then txn_id (Arrow sorts strings by UTF-8 bytes, i.e. by code point).
        order = pc.sort_indices(pa.table({"t": t, "txn_id": txn}),
                                sort_keys=[("t", "ascending"), ("txn_id", "ascending")])
        order = order.to_numpy(zero_copy_only=False)
        t = t[order]
        txn = txn.take(order)

        def take(name: str) -> pa.Array:
            return _array(table, name).take(order)

        src_bank, dst_bank = take("src_bank"), take("dst_bank")
        # Node ids: ranks of the sorted distinct "bank SEP account" keys.
        src_key = pc.binary_join_element_wise(src_bank, take("src_account"), _SEP)
        dst_key = pc.binary_join_element_wise(dst_bank, take("dst_account"), _SEP)
        keys = pa.concat_arrays([src_key, dst_key])
        del src_key, dst_key
        uniques = pc.unique(keys)
        uniques = uniques.take(pc.sort_indices(uniques))
        codes = pc.index_in(keys, value_set=uniques).to_numpy(zero_copy_only=False)
        del keys
        src = codes[:n].astype(np.int32)
        dst = codes[n:].astype(np.int32)
        del codes
        parts = pc.split_pattern(uniques, _SEP, max_splits=1)
        node_bank = np.asarray(pc.list_element(parts, 0).to_pylist(), dtype=object)
        node_account = np.asarray(pc.list_element(parts, 1).to_pylist(), dtype=object)

        currency_code, currencies = _codes(take("currency"))
        rates = np.array([config.rates.get(c, np.nan) for c in currencies], dtype=np.float64)
        rate = rates[currency_code] if n else np.zeros(0)
        if np.isnan(rate).any():
            raise ConfigError(
                f"{int(np.isnan(rate).sum())} transactions use a currency with no rate in the config")
        amount_orig = take("amount").to_numpy(zero_copy_only=False).astype(np.float64)
        amount = amount_orig * rate
        del rate
        format_code, formats = _codes(take("payment_format"))

        if "label" in table.column_names:
            label = take("label").cast(pa.float64()).fill_null(np.nan) \
                .to_numpy(zero_copy_only=False)
        else:
            label = np.full(n, np.nan)
        if "is_new" in table.column_names:
            is_new = take("is_new").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        else:
            is_new = np.isnan(label)

        if "submitted_by" in table.column_names:
            submitted_by = take("submitted_by")
            # Which rows list their payer's / payee's bank among the submitters.
            flat = pc.list_flatten(submitted_by)
            parent = pc.list_parent_indices(submitted_by)
            src_submitted = np.zeros(n, bool)
            dst_submitted = np.zeros(n, bool)
            if len(flat):
                hit_src = pc.equal(flat, src_bank.take(parent)).fill_null(False)
                hit_dst = pc.equal(flat, dst_bank.take(parent)).fill_null(False)
                parent = parent.to_numpy(zero_copy_only=False)
                src_submitted[parent[hit_src.to_numpy(zero_copy_only=False)]] = True
                dst_submitted[parent[hit_dst.to_numpy(zero_copy_only=False)]] = True
            member_list = None
        else:
            submitted_by = None
            member_list = sorted(set(members)) if members is not None else None
            if member_list is None:
                src_submitted = np.ones(n, bool)
                dst_submitted = np.ones(n, bool)
            else:
                banks = pa.array(member_list, type=pa.string())
                src_submitted = pc.is_in(src_bank, value_set=banks).to_numpy(zero_copy_only=False)
                dst_submitted = pc.is_in(dst_bank, value_set=banks).to_numpy(zero_copy_only=False)

        days = float(t.max() - t.min()) / 86_400 if n else 0.0
        return cls(txn_id=txn, t=t, src=src, dst=dst, amount=amount, amount_orig=amount_orig,
                   label=label, is_new=is_new, currency_code=currency_code,
                   currencies=currencies, format_code=format_code, formats=formats,
                   src_submitted=src_submitted, dst_submitted=dst_submitted,
                   submitted_by=submitted_by, members=member_list, node_bank=node_bank,
                   node_account=node_account, hub_degree=config.hub_degree(days))

    @staticmethod
    def _merge_duplicate_rows(table: pa.Table, members: list[str] | None) -> pa.Table:
        """Rows that repeat a payment become one edge, by the enclave merge's one rule
        (`aml.enclave.merge.reconcile`): a payment is (txn_id, src_bank, dst_bank); copies that
        agree become one edge (labels: the higher wins; new if any copy is new and the label is
        unknown); copies that disagree stay separate edges. With `submitted_by`, each listed bank
        is a submitting copy (only the row's own banks count); without it, each row is a copy
        of its own and `submitted_by` keeps its default (the member banks on the row).
        """
        from aml.enclave.merge import _Copies, reconcile

        n = table.num_rows
        if "is_new" in table.column_names:
            new = _array(table, "is_new").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        elif "label" in table.column_names:
            new = pc.is_null(_array(table, "label")).to_numpy(zero_copy_only=False)
        else:
            new = np.ones(n, dtype=bool)
        if "submitted_by" in table.column_names:
            submitted = _array(table, "submitted_by")
            parents = pc.list_parent_indices(submitted)
            flat = pc.list_flatten(submitted)
            names = sorted(pc.unique(flat).to_pylist())
            codes = pc.index_in(flat, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
            copies = _Copies(names)
            copies.add(table, codes, new[parents.to_numpy(zero_copy_only=False)], take=parents)
            return reconcile(copies.done()).merged
        copies = _Copies(range(n))
        copies.add(table, np.arange(n), new)
        return reconcile(copies.done(), submitters=False).merged.drop_columns(["submitted_by"])

    def _csr(self, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Edges are time-sorted, so a stable sort by node keeps each node's edges in time order.
        idx = np.argsort(node, kind="stable")
        counts = np.bincount(node, minlength=self.n_nodes)
        ptr = np.zeros(self.n_nodes + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return ptr, idx

    # ---------------------------------------------------------------- derived arrays
    @cached_property
    def out_degree(self) -> np.ndarray:
        return np.diff(self.out_ptr)

    @cached_property
    def in_degree(self) -> np.ndarray:
        return np.diff(self.in_ptr)

    @cached_property
    def degree(self) -> np.ndarray:
        return self.out_degree + self.in_degree

    @cached_property
    def is_hub(self) -> np.ndarray:
        return self.degree > self.hub_degree

    @cached_property
    def node_first_t(self) -> np.ndarray:
        """Time each account was first seen (as payer or payee)."""
        first = np.full(self.n_nodes, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, self.src, self.t)
        np.minimum.at(first, self.dst, self.t)
        return first

    @cached_property
    def pair_first(self) -> np.ndarray:
        """True for an edge that is the first payment from its src to its dst."""
        key = self.src.astype(np.int64) * max(self.n_nodes, 1) + self.dst
        _, first_pos = np.unique(key, return_index=True)  # first occurrence = earliest (time-sorted)
        out = np.zeros(len(key), dtype=bool)
        out[first_pos] = True
        return out

    @cached_property
    def payment_format(self) -> np.ndarray:
        """Payment format per edge (object array of the few distinct strings)."""
        return np.asarray(self.formats, dtype=object)[self.format_code] if len(self) \
            else np.empty(0, dtype=object)

    @cached_property
    def node_bank_code(self) -> np.ndarray:
        """Bank of each node as a small int code (same code = same bank)."""
        return pd.factorize(self.node_bank)[0].astype(np.int32) if self.n_nodes \
            else np.empty(0, np.int32)

    def txn_ids(self, edge_idx) -> list[str]:
        """txn_id strings of the given edges (in that order)."""
        idx = np.asarray(edge_idx, dtype=np.int64)
        return self.txn_id.take(pa.array(idx)).to_pylist() if len(idx) else []

    def submitted_by_of(self, edge_idx) -> list[tuple[str, ...]]:
        """The submitting banks of the given edges, as `edges["submitted_by"]` lists them."""
        idx = np.asarray(edge_idx, dtype=np.int64)
        if self._submitted_by is not None:
            return [tuple(s or ()) for s in self._submitted_by.take(pa.array(idx)).to_pylist()]
        member_set = set(self._members) if self._members is not None else None
        return [tuple(b for b in dict.fromkeys((s, d)) if member_set is None or b in member_set)
                for s, d in zip(self.node_bank[self.src[idx]], self.node_bank[self.dst[idx]])]

    @cached_property
    def edges(self) -> pd.DataFrame:
        """All edge attributes as one DataFrame, edge order (built on first use; detection
        itself reads the arrays)."""
        return pd.DataFrame({
            "txn_id": self.txn_id.to_numpy(zero_copy_only=False).astype(object),
            "t": self.t, "src": self.src, "dst": self.dst, "amount": self.amount,
            "src_bank": self.node_bank[self.src], "dst_bank": self.node_bank[self.dst],
            "payment_format": self.payment_format,
            "currency": np.asarray(self.currencies, dtype=object)[self.currency_code]
            if len(self) else np.empty(0, dtype=object),
            "label": self.label, "is_new": self.is_new,
            "submitted_by": self.submitted_by_of(np.arange(len(self))),
            "amount_orig": self.amount_orig,
        })

    def out_edges(self, node: int) -> np.ndarray:
        return self.out_idx[self.out_ptr[node]:self.out_ptr[node + 1]]

    def in_edges(self, node: int) -> np.ndarray:
        return self.in_idx[self.in_ptr[node]:self.in_ptr[node + 1]]

    def out_edges_between(self, node: int, t_lo: int, t_hi: int) -> np.ndarray:
        """Out-edges of `node` with t_lo <= t <= t_hi (time-sorted)."""
        e = self.out_edges(node)
        tt = self.t[e]
        return e[np.searchsorted(tt, t_lo, "left"):np.searchsorted(tt, t_hi, "right")]

    def in_edges_between(self, node: int, t_lo: int, t_hi: int) -> np.ndarray:
        e = self.in_edges(node)
        tt = self.t[e]
        return e[np.searchsorted(tt, t_lo, "left"):np.searchsorted(tt, t_hi, "right")]

    def subgraph_nx(self, edge_idx: np.ndarray) -> nx.MultiDiGraph:
        """A networkx view of a few edges (for explanations and small-graph algorithms)."""
        g = nx.MultiDiGraph()
        for e in np.asarray(edge_idx, dtype=np.int64):
            g.add_edge(int(self.src[e]), int(self.dst[e]), key=int(e), t=int(self.t[e]),
                       amount=float(self.amount[e]))
        return g

    def time_slice(self, start: int, stop: int) -> "TransactionGraph":
        """The edges `start:stop` (a contiguous run in time order) as a graph of their own that
        keeps this graph's nodes and its whole-graph facts (hub flags, degrees, first-seen
        times, first-payment flags), so a detector reads the same account facts on a slice as
        on the whole graph. Edge `i` of the slice is edge `start + i` here. Used by
        `aml.enclave.detect.partition`; slicing a slice works the same way."""
        m = len(self)
        start = min(max(0, int(start)), m)
        stop = min(max(start, int(stop)), m)
        # Whole-graph facts, computed here once (per node, or per edge but over all history).
        node_facts = {"out_degree", "in_degree", "degree", "is_hub", "node_first_t",
                      "node_bank_code", "node_bank", "node_account"}
        for name in ("out_degree", "in_degree", "degree", "is_hub", "node_first_t", "pair_first"):
            getattr(self, name)
        rebuilt = {"out_ptr", "out_idx", "in_ptr", "in_idx", "edges"}
        sub = object.__new__(type(self))
        for name, value in self.__dict__.items():
            if name in rebuilt:
                continue
            if name not in node_facts and isinstance(value, np.ndarray) and len(value) == m:
                value = value[start:stop]  # per-edge array (numpy pickles only the view)
            elif name not in node_facts and isinstance(value, (pa.Array, pa.ChunkedArray)) \
                    and len(value) == m:
                # Copied: a pickled Arrow slice would carry the whole parent buffer.
                value = value.take(pa.array(np.arange(start, stop, dtype=np.int64)))
            sub.__dict__[name] = value
        sub.out_ptr, sub.out_idx = sub._csr(sub.src)
        sub.in_ptr, sub.in_idx = sub._csr(sub.dst)
        return sub
