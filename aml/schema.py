"""The canonical transaction schema: the single source of truth for columns.

Readers (canonical CSV, Parquet, IBM AMLworld) and validation live in this module too, so
every other module imports column names from here instead of spelling them again.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

TRANSACTION_SCHEMA = pa.schema(
    [
        pa.field("txn_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("src_bank", pa.string(), nullable=False),
        pa.field("src_account", pa.string(), nullable=False),
        pa.field("dst_bank", pa.string(), nullable=False),
        pa.field("dst_account", pa.string(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("amount_received", pa.float64(), nullable=True),
        pa.field("receiving_currency", pa.string(), nullable=True),
        pa.field("payment_format", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=True),
    ],
    metadata={"aml.schema_version": str(SCHEMA_VERSION)},
)

COLUMNS = TRANSACTION_SCHEMA.names
REQUIRED_COLUMNS = [f.name for f in TRANSACTION_SCHEMA if not f.nullable]
OPTIONAL_COLUMNS = [f.name for f in TRANSACTION_SCHEMA if f.nullable]

# ISO 4217 codes the consortium accepts (plus BTC, as AMLworld has it).
CURRENCIES = frozenset(
    {
        "USD", "EUR", "GBP", "CHF", "JPY", "CNY", "INR", "CAD", "AUD", "MXN", "BRL",
        "RUB", "SAR", "ILS", "SGD", "HKD", "SEK", "NOK", "DKK", "PLN", "ZAR", "BTC",
    }
)

PAYMENT_FORMATS = frozenset(
    {"ACH", "Wire", "Cheque", "Credit Card", "Cash", "Bitcoin", "Reinvestment"}
)

# What `aml open` writes: one row per alert for one bank (contract.md, "Alerts").
ALERT_PATTERNS = (
    "fan_out", "fan_in", "cycle", "scatter_gather", "gather_scatter", "bipartite",
    "stack", "random_chain", "structuring", "pass_through", "model",
)

ALERT_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("bank", pa.string(), nullable=False),
        pa.field("pattern", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("accounts", pa.list_(pa.string()), nullable=False),
        pa.field("txn_ids", pa.list_(pa.string()), nullable=False),
        pa.field("start", TIMESTAMP_TYPE, nullable=False),
        pa.field("end", TIMESTAMP_TYPE, nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("institutions", pa.int32(), nullable=False),
        pa.field("hops", pa.int32(), nullable=False),
        pa.field("explanation", pa.string(), nullable=False),
    ]
)

PATTERN_TABLE_SCHEMA = pa.schema(
    [
        pa.field("pattern_id", pa.string(), nullable=False),
        pa.field("pattern", pa.string(), nullable=False),
        pa.field("txn_id", pa.string(), nullable=False),
    ]
)
