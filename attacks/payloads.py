"""Malformed batch payloads a member bank could sign and send (the bank signs whatever it
sends, so the enclave must cope): random bytes, CSV instead of Parquet, wrong types, missing
columns, null floods, extreme values, huge strings, rows about other banks' customers.

Every generator is seeded and deterministic. `expected` is what the enclave must answer:
a batch error code, or "accepted" with exactly `rows` quarantined per reason.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from aml.core.schema import TIMESTAMP_TYPE, TRANSACTION_SCHEMA


@dataclass(frozen=True)
class Payload:
    name: str
    data: bytes
    row_count: int  # what the (honest-looking) header claims
    expected: frozenset[str]  # batch codes, or {"accepted"}
    rows: dict[str, int] = field(default_factory=dict)  # quarantine reason -> rows, when accepted
    kind: str = "batch"


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, pa.field(name, values.type), values)


def _relaxed(table: pa.Table) -> pa.Table:
    """The table with every field nullable, so nulls can be planted where the schema forbids."""
    return table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))


def malformed_payloads(base: pa.Table, bank: str, other_banks: list[str], rng: random.Random,
                       canary: str, n_bad: int = 5) -> list[Payload]:
    """Malformed variants of `base` (a bank's genuine batch, TRANSACTION_SCHEMA, >= 2*n_bad rows)."""
    base = base.slice(0, max(2 * n_bad + 2, min(base.num_rows, 200)))
    n = base.num_rows
    out: list[Payload] = []

    out.append(Payload("random_bytes", rng.randbytes(rng.randrange(64, 4096)), n, frozenset({"format"})))
    out.append(Payload("parquet_magic_then_noise", b"PAR1" + rng.randbytes(512) + b"PAR1", n,
                       frozenset({"format"})))
    csv = io.BytesIO()
    pa_csv.write_csv(base, csv)
    out.append(Payload("csv_not_parquet", csv.getvalue(), n, frozenset({"format"})))

    words = pa.array([canary if i == 0 else f"x{rng.randrange(10**6)}" for i in range(n)], pa.string())
    out.append(Payload("wrong_type_amount", parquet_bytes(_replace(base, "amount", words)), n,
                       frozenset({"format"})))
    out.append(Payload("wrong_type_label", parquet_bytes(_replace(base, "label", pa.array(["maybe"] * n))), n,
                       frozenset({"format"})))
    out.append(Payload("missing_columns", parquet_bytes(base.drop_columns(["currency", "dst_account"])), n,
                       frozenset({"format"})))
    out.append(Payload("no_columns_at_all", parquet_bytes(pa.table({"x": pa.array(range(n))})), n,
                       frozenset({"format"})))

    relaxed = _relaxed(base)
    nulls = _replace(relaxed, "src_account", pa.nulls(n, pa.string()))
    out.append(Payload("null_flood_required", parquet_bytes(nulls), n, frozenset({"format"})))
    flood = relaxed
    for name in ("amount_received", "receiving_currency", "label"):
        flood = _replace(flood, name, pa.nulls(n, flood.schema.field(name).type))
    # optional columns all null: legal (defaults apply), nothing quarantined
    out.append(Payload("null_flood_optional", parquet_bytes(flood), n, frozenset({"accepted"}), {}))

    out.append(Payload("row_count_lies", parquet_bytes(base), n + 7, frozenset({"format"})))
    out.append(Payload("kind_is_alerts", parquet_bytes(base), n, frozenset({"format"}), kind="alerts"))

    # extreme values: the first n_bad rows get amounts that are not positive finite numbers,
    # the next n_bad timestamps two centuries ahead; 1e308 elsewhere is large but legal
    amount = base["amount"].to_numpy().copy()
    amount[:n_bad] = np.resize(np.array([0.0, -1.0, np.nan, np.inf, -np.inf]), n_bad)
    amount[2 * n_bad] = 1e308
    ts = base["timestamp"].cast(pa.int64()).to_numpy().copy()
    ts[n_bad : 2 * n_bad] = np.datetime64("2226-01-01T00:00:00", "us").astype(np.int64)
    extreme = _replace(base, "amount", pa.array(amount, pa.float64()))
    extreme = _replace(extreme, "timestamp", pa.array(ts, pa.int64()).cast(TIMESTAMP_TYPE))
    out.append(Payload("extreme_values", parquet_bytes(extreme), n, frozenset({"accepted"}),
                       {"bad_amount": n_bad, "future_timestamp": n_bad}))

    # huge strings: 256 KiB account ids are over the per-value cap ([limits] max_string_bytes,
    # 64 KiB): the batch is refused before it is decoded
    huge = "Z" * (256 << 10)
    huge_acc = pa.array([huge + str(i) if i < 3 else v for i, v in enumerate(base["src_account"].to_pylist())])
    huge_table = _replace(base, "src_account", huge_acc)
    out.append(Payload("huge_strings", parquet_bytes(huge_table), n, frozenset({"too_large"})))

    # rows that touch none of the sender's accounts: quarantined as foreign_row, the rest kept
    a, b = other_banks[0], other_banks[-1]
    src_bank = base["src_bank"].to_pylist()
    dst_bank = base["dst_bank"].to_pylist()
    txn = base["txn_id"].to_pylist()
    for i in range(n_bad):
        src_bank[i], dst_bank[i] = a, b
        txn[i] = f"{canary}-foreign-{i}"
    foreign = _replace(_replace(_replace(base, "src_bank", pa.array(src_bank)), "dst_bank", pa.array(dst_bank)),
                       "txn_id", pa.array(txn))
    out.append(Payload("foreign_rows", parquet_bytes(foreign), n, frozenset({"accepted"}), {"foreign_row": n_bad}))

    # duplicates: an exact copy is dropped, a conflicting copy quarantines both
    dup = pa.concat_tables([base, base.slice(0, 2)])
    out.append(Payload("duplicate_rows", parquet_bytes(dup), n + 2, frozenset({"accepted"}), {"duplicate": 2}))

    # random tables: seeded random column sets and types (what a broken exporter might write)
    for k in range(3):
        cols = {}
        for name in rng.sample(TRANSACTION_SCHEMA.names, rng.randrange(1, len(TRANSACTION_SCHEMA.names))):
            kind = rng.choice(["int", "float", "str", "bytes"])
            if kind == "int":
                cols[name] = pa.array([rng.randrange(-2**63, 2**63) for _ in range(n)], pa.int64())
            elif kind == "float":
                cols[name] = pa.array([rng.uniform(-1e300, 1e300) for _ in range(n)], pa.float64())
            elif kind == "str":
                cols[name] = pa.array([rng.randbytes(8).hex() for _ in range(n)], pa.string())
            else:
                cols[name] = pa.array([rng.randbytes(8) for _ in range(n)], pa.binary())
        out.append(Payload(f"random_table_{k}", parquet_bytes(pa.table(cols)), n, frozenset({"format"})))
    return out


# --- decompression bombs (issue 14, finding 4) ------------------------------------------------

def _tiled(base: pa.Table, n: int) -> pa.Table:
    """`n` rows made of `base`'s rows over and over (txn_ids repeat: never reached)."""
    idx = pa.array(np.arange(n) % base.num_rows)
    return base.take(idx)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def lie_about_sizes(data: bytes, fake: int = 1000) -> bytes:
    """The same Parquet file with every uncompressed size in its footer (field-6 / field-2 i64s
    following their neighbour) replaced by `fake`, written as a padded varint of the same
    length: the pages are untouched, the footer now claims the data is small."""
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len
    footer = bytearray(data[start:-8])
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    sizes = {meta.row_group(g).column(c).total_uncompressed_size
             for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
    sizes |= {meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)}
    for size in sorted(sizes, reverse=True):
        true = _varint(size << 1)  # zigzag of a positive i64
        if len(true) < 2:
            continue
        padded = bytearray(_varint(fake << 1).ljust(len(true), b"\x80"))
        padded[len(_varint(fake << 1)) - 1] |= 0x80  # continue through the padding...
        padded[-1] = 0x00  # ...and stop at the last byte (a non-minimal varint of `fake`)
        footer = footer.replace(b"\x16" + true, b"\x16" + bytes(padded))
    return data[:start] + bytes(footer) + data[-8:]


def bomb_payloads(base: pa.Table) -> list[Payload]:
    """Small signed batches that would decode to far more than the per-row budget allows. Each
    must be refused (`too_large`, or `format` for an encoding that expands without bound)
    before it is decoded; an oversized column the schema does not have is never read."""
    out: list[Payload] = []

    def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
        return _replace(table, name, values)

    def write(table: pa.Table, **kw) -> bytes:
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", store_schema=False, **kw)
        return sink.getvalue()

    # one 64 KiB account id, referenced by 8192 rows through the dictionary: 512 MiB decoded
    n = 8192
    t = _tiled(base, n)
    one = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["A" * (64 << 10)]))
    out.append(Payload("dictionary_bomb_512MiB", write(with_column(t, "src_account", one)), n,
                       frozenset({"too_large"})))
    # one 1 MiB account id among 8192 rows: within the batch's budget, over the per-value cap
    t = _tiled(base, n)
    ids = t["dst_account"].to_pylist()
    ids[0] = "B" * (1 << 20)
    out.append(Payload("string_over_cap", write(with_column(t, "dst_account", pa.array(ids))), n,
                       frozenset({"too_large"})))
    # plain (no dictionary) constant strings, zstd: the footer honestly declares 64 MiB
    k = 2048
    t = _tiled(base, k)
    plain = pa.array(["C" * (32 << 10)] * k)
    plain_bomb = write(with_column(t, "src_account", plain), use_dictionary=False)
    out.append(Payload("plain_zstd_bomb", plain_bomb, k, frozenset({"too_large"})))
    # the same file with a footer that lies (claims ~1 KB): the page headers still tell
    out.append(Payload("lying_footer_bomb", lie_about_sizes(plain_bomb), k, frozenset({"too_large"})))
    # DELTA_BYTE_ARRAY: every value may repeat most of its predecessor, so a page of a few KiB
    # can stand for any amount of data: refused as an encoding
    t = _tiled(base, 512)
    delta = write(t, use_dictionary=False, column_encoding={"src_account": "DELTA_BYTE_ARRAY"})
    out.append(Payload("delta_byte_array", delta, 512, frozenset({"format"})))
    # a bomb in a column the schema does not have is never decoded: the batch is accepted
    extra = base.append_column("junk", pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(base.num_rows, np.int32)), pa.array(["D" * (60 << 10)])))
    out.append(Payload("bomb_in_extra_column", write(extra), base.num_rows, frozenset({"accepted"}), {}))
    return out
