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

from aml.errors import ConfigError, SchemaError
from aml.schema import TRANSACTION_SCHEMA

_SEP = "\x1f"  # joins bank and account into one node key; never appears in ids


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


class TransactionGraph:
    """Payments as a directed temporal multigraph over (bank, account) nodes."""

    def __init__(self, edges: pd.DataFrame, node_bank: np.ndarray, node_account: np.ndarray,
                 hub_degree: int = 200):
        self.edges = edges
        self.node_bank = node_bank
        self.node_account = node_account
        self.n_nodes = len(node_bank)
        self.hub_degree = hub_degree
        # Plain numpy views for hot paths (a DataFrame column lookup per call adds up).
        self.t = edges["t"].to_numpy()
        self.src = edges["src"].to_numpy()
        self.dst = edges["dst"].to_numpy()
        self.amount = edges["amount"].to_numpy()
        self.is_new = edges["is_new"].to_numpy()
        self.payment_format = edges["payment_format"].to_numpy()
        self.out_ptr, self.out_idx = self._csr(self.src)
        self.in_ptr, self.in_idx = self._csr(self.dst)

    def __len__(self) -> int:
        return len(self.edges)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_table(cls, table: pa.Table, config, members: list[str] | None = None
                   ) -> "TransactionGraph":
        """Build from TRANSACTION_SCHEMA columns (+ optional `is_new`, `submitted_by`).

        `is_new` defaults to "label is null". `submitted_by` defaults to the banks among
        src_bank/dst_bank that are members (`members`, default: every bank seen). Rows that
        share a txn_id (a payment between two members arrives from both sides) become one edge
        whose `submitted_by` is the union.
        """
        missing = [c for c in TRANSACTION_SCHEMA.names
                   if TRANSACTION_SCHEMA.field(c).nullable is False and c not in table.column_names]
        if missing:
            raise SchemaError(f"transaction table lacks required columns: {', '.join(missing)}")
        n = table.num_rows
        ts = table.column("timestamp")
        if not pa.types.is_timestamp(ts.type):
            raise SchemaError("transaction table column timestamp is not a timestamp")
        t = pc.cast(pc.cast(ts, pa.timestamp("s", tz="UTC"), safe=False), pa.int64())
        df = pd.DataFrame({
            "txn_id": _column(table, "txn_id").astype(object),
            "t": t.to_numpy(zero_copy_only=False).astype(np.int64),
            "src_bank": _column(table, "src_bank").astype(object),
            "src_account": _column(table, "src_account").astype(object),
            "dst_bank": _column(table, "dst_bank").astype(object),
            "dst_account": _column(table, "dst_account").astype(object),
            "amount_orig": _column(table, "amount").astype(np.float64),
            "currency": _column(table, "currency").astype(object),
            "payment_format": _column(table, "payment_format").astype(object),
        })
        if "label" in table.column_names:
            label = table.column("label").cast(pa.float64()).fill_null(np.nan)
            df["label"] = label.to_numpy(zero_copy_only=False)
        else:
            df["label"] = np.full(n, np.nan)
        if "is_new" in table.column_names:
            df["is_new"] = table.column("is_new").fill_null(False).to_numpy(zero_copy_only=False)
        else:
            df["is_new"] = np.isnan(df["label"].to_numpy())
        if "submitted_by" in table.column_names:
            df["submitted_by"] = [tuple(s or ()) for s in table.column("submitted_by").to_pylist()]
        else:
            member_set = set(members) if members is not None else None
            df["submitted_by"] = [
                tuple(b for b in dict.fromkeys((s, d)) if member_set is None or b in member_set)
                for s, d in zip(df["src_bank"], df["dst_bank"])
            ]

        if n and df["txn_id"].duplicated().any():
            df = cls._merge_duplicate_rows(df)

        rates = pd.Series(dict(config.rates), dtype=np.float64)
        rate = df["currency"].map(rates).to_numpy(dtype=np.float64)
        if np.isnan(rate).any():
            raise ConfigError(
                f"{int(np.isnan(rate).sum())} transactions use a currency with no rate in the config")
        df["amount"] = df["amount_orig"].to_numpy() * rate

        df = df.sort_values(["t", "txn_id"], kind="stable").reset_index(drop=True)
        src_key = df["src_bank"] + _SEP + df["src_account"]
        dst_key = df["dst_bank"] + _SEP + df["dst_account"]
        codes, uniques = pd.factorize(pd.concat([src_key, dst_key], ignore_index=True), sort=True)
        m = len(df)
        df["src"] = codes[:m].astype(np.int32)
        df["dst"] = codes[m:].astype(np.int32)
        parts = pd.Series(np.asarray(uniques, dtype=object)).str.split(_SEP, n=1, expand=True) \
            if len(uniques) else pd.DataFrame({0: [], 1: []})
        node_bank = np.asarray(parts[0], dtype=object)
        node_account = np.asarray(parts[1], dtype=object)
        cols = ["txn_id", "t", "src", "dst", "amount", "src_bank", "dst_bank", "payment_format",
                "currency", "label", "is_new", "submitted_by", "amount_orig"]
        edges = df[cols].copy()
        edges["is_new"] = edges["is_new"].astype(bool)
        days = float(edges["t"].max() - edges["t"].min()) / 86_400 if len(edges) else 0.0
        return cls(edges, node_bank, node_account, hub_degree=config.hub_degree(days))

    @staticmethod
    def _merge_duplicate_rows(df: pd.DataFrame) -> pd.DataFrame:
        """One edge per txn_id; submitted_by is the union over its rows.

        Only the duplicated ids go through the (slower) group-by. A row is new if any copy is
        unlabelled; of two labels the higher (confirmed laundering) wins.
        """
        dup = df["txn_id"].duplicated(keep=False).to_numpy()
        single, multi = df[~dup], df[dup]
        union = (multi[["txn_id", "submitted_by"]].explode("submitted_by").dropna()
                 .groupby("txn_id", sort=False)["submitted_by"]
                 .agg(lambda s: tuple(dict.fromkeys(s))))
        grouped = multi.groupby("txn_id", sort=False)
        merged = multi.drop_duplicates("txn_id").set_index("txn_id")
        merged["submitted_by"] = [union.get(t, ()) for t in merged.index]
        merged["is_new"] = grouped["is_new"].any().reindex(merged.index)
        merged["label"] = grouped["label"].max().reindex(merged.index)
        return pd.concat([single, merged.reset_index()], ignore_index=True)

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
    def edge_banks_submitted(self) -> np.ndarray:
        return self.edges["submitted_by"].to_numpy()

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
