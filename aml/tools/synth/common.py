"""What every synthetic world shares: currencies and their fixed USD rates, payment formats, the
time origin, and the assembly of generated edges into the canonical tables (`assemble`).

A world module generates edges as parallel numpy arrays (account indices, seconds since START,
USD value, format code, laundering instance or -1); `assemble` turns them into the canonical
transactions table and the pattern table, so every world writes exactly the same columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aml.core.errors import ConfigError
from aml.core.schema import PATTERN_TABLE_SCHEMA, TIMESTAMP_TYPE, TRANSACTION_SCHEMA

START = np.datetime64("2026-01-01T00:00:00", "s")  # a Thursday; day 0 of every data set

# Value of one unit of each currency in USD, the base currency. Fixed, so amounts can be
# compared across currencies exactly the way the generator converted them.
USD_PER_UNIT: dict[str, float] = {
    "USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CHF": 1.13, "JPY": 0.0067, "CNY": 0.138,
    "INR": 0.012, "CAD": 0.73, "AUD": 0.66, "MXN": 0.055, "BRL": 0.18, "RUB": 0.011,
    "SAR": 0.267, "ILS": 0.27, "SGD": 0.75, "HKD": 0.128, "SEK": 0.095, "NOK": 0.093,
    "DKK": 0.145, "PLN": 0.25, "ZAR": 0.055, "BTC": 60000.0,
}

CURRENCIES = tuple(USD_PER_UNIT)
CUR = {c: i for i, c in enumerate(CURRENCIES)}
RATE = np.array([USD_PER_UNIT[c] for c in CURRENCIES])
DECIMALS = np.array([0 if c == "JPY" else 8 if c == "BTC" else 2 for c in CURRENCIES])

FORMATS = ("ACH", "Wire", "Cheque", "Credit Card", "Cash", "Bitcoin", "Reinvestment")
ACH, WIRE, CHEQUE, CARD, CASH, BITCOIN, REINVEST = range(len(FORMATS))

DAY = 86_400
HOUR = 3_600


def round_amounts(value: np.ndarray, cur: np.ndarray) -> np.ndarray:
    scale = 10.0 ** DECIMALS[cur]
    return np.maximum(np.round(value * scale), 1.0) / scale


def assemble(e: dict[str, np.ndarray], names: list[str], account_bank: np.ndarray,
             bank_ids: list[str], account_currency: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """Canonical (transactions, patterns) tables from edges `e` (keys src, dst, t, usd, fmt,
    instance, optionally label; any order), instance names, each account's bank index and home
    currency. Without a `label` key, a row is laundering exactly when it belongs to an instance;
    with one, labelled rows outside every instance are laundering listed in no pattern."""
    order = np.argsort(e["t"], kind="stable")
    e = {k: v[order] for k, v in e.items()}
    n = len(order)
    accounts = len(account_bank)

    src_cur, dst_cur = account_currency[e["src"]], account_currency[e["dst"]]
    fmt = e["fmt"].copy()
    btc = CUR["BTC"]
    fmt[((src_cur == btc) | (dst_cur == btc)) & (fmt != REINVEST)] = BITCOIN
    amount = round_amounts(e["usd"] / RATE[src_cur], src_cur)
    received = round_amounts(e["usd"] / RATE[dst_cur], dst_cur)
    received = np.where(src_cur == dst_cur, amount, received)

    width = max(8, len(str(n)))
    txn_ids = pa.array([f"T{i:0{width}d}" for i in range(n)], pa.string())
    account_ids = pa.array([f"A{i:07d}" for i in range(accounts)], pa.string())
    banks = pa.array(bank_ids, pa.string())
    currencies = pa.array(CURRENCIES, pa.string())
    formats = pa.array(FORMATS, pa.string())
    timestamps = (START.astype("datetime64[us]") + e["t"].astype("timedelta64[s]")).astype("datetime64[us]")

    transactions = pa.Table.from_arrays(
        [
            txn_ids,
            pa.array(timestamps.astype(np.int64), TIMESTAMP_TYPE),
            banks.take(account_bank[e["src"]]),
            account_ids.take(e["src"]),
            banks.take(account_bank[e["dst"]]),
            account_ids.take(e["dst"]),
            pa.array(amount, pa.float64()),
            currencies.take(src_cur),
            pa.array(received, pa.float64()),
            currencies.take(dst_cur),
            formats.take(fmt),
            pa.array((e["label"] if "label" in e else e["instance"] >= 0).astype(np.int8), pa.int8()),
        ],
        schema=TRANSACTION_SCHEMA,
    )

    rows = np.flatnonzero(e["instance"] >= 0)
    inst = e["instance"][rows]
    by_pattern = np.lexsort((rows, inst))
    rows, inst = rows[by_pattern], inst[by_pattern]
    pattern_ids = pa.array([f"P{i:05d}" for i in range(len(names))], pa.string())
    patterns = pa.Table.from_arrays(
        [
            pattern_ids.take(inst),
            pa.array(names, pa.string()).take(inst),
            txn_ids.take(rows),
        ],
        schema=PATTERN_TABLE_SCHEMA,
    )
    return transactions, patterns


def write_tables(out: Path, transactions: pa.Table, patterns: pa.Table) -> dict:
    """Write out/transactions.parquet and out/patterns.parquet; return their row counts."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(transactions, out / "transactions.parquet", compression="zstd")
        pq.write_table(patterns, out / "patterns.parquet", compression="zstd")
    except OSError as exc:
        raise ConfigError(f"synth: cannot write the output directory ({exc.strerror})") from None
    return {"transactions": transactions.num_rows, "patterns": patterns.num_rows}


def check_common_args(banks: int, accounts: int, days: int, seed: int, min_banks: int = 2) -> None:
    if not min_banks <= banks <= 99:
        raise ConfigError(f"synth: --banks must be between {min_banks} and 99 (patterns must cross banks)")
    if not 200 <= accounts <= 9_999_999:
        raise ConfigError("synth: --accounts must be between 200 and 9,999,999")
    if not 7 <= days <= 3660:
        raise ConfigError("synth: --days must be between 7 and 3660")
    if seed < 0:
        raise ConfigError("synth: --seed must be a non-negative integer")
