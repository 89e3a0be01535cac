"""`aml synth`: labelled multi-bank data sets from independently designed worlds.

Each world is its own module and cites its own sources (docs/synthetic-data.md):
- `original`: the project's first generator (aml.tools.synth.original);
- `amlworld` / `amlworld_li`: built from the description of IBM's AMLworld (Altman et al.,
  NeurIPS 2023), at its HI and LI laundering rates;
- `amlsim`: built from the public IBM/AMLSim repository's parameter files and Java classes.
All write the same canonical transactions and pattern tables (aml.tools.synth.common.assemble).
Worlds are instruments, not levers: a world changes only to model its source more faithfully.
"""

from __future__ import annotations

from pathlib import Path

from aml.core.errors import ConfigError
from aml.tools.synth.common import write_tables
from aml.tools.synth.original import (  # noqa: F401  (the original world's public names)
    DISGUISED, LAUNDERING_SHARE, NON_MEMBER_BANKS, PATTERNS, START, TXNS_PER_ACCOUNT_DAY,
    TYPOLOGIES, USD_PER_UNIT, generate as _generate_original,
)

WORLDS = ("original", "amlworld", "amlworld_li", "amlsim")
DEFAULT_WORLD = "original"


def _module(world: str):
    """(module, extra generate() arguments) of a world."""
    if world == "original":
        from aml.tools.synth import original as mod
    elif world in ("amlworld", "amlworld_li"):
        from aml.tools.synth import amlworld as mod
        return mod, {"rate": "li" if world == "amlworld_li" else "hi"}
    elif world == "amlsim":
        from aml.tools.synth import amlsim as mod
    else:
        raise ConfigError(f"synth: unknown world (choose one of: {', '.join(WORLDS)})")
    return mod, {}


def default_banks(world: str = DEFAULT_WORLD) -> int:
    """Bank count a world uses when --banks is not given."""
    return _module(world)[0].DEFAULT_BANKS


def rows_per_account_day(world: str = DEFAULT_WORLD) -> float:
    """About how many rows an account makes per day in a world (to size a data set)."""
    return _module(world)[0].TXNS_PER_ACCOUNT_DAY


def generate(banks: int | None = None, accounts: int = 10_000, days: int = 60, seed: int = 0,
             world: str = DEFAULT_WORLD):
    """Return (transactions in TRANSACTION_SCHEMA, patterns in PATTERN_TABLE_SCHEMA)."""
    mod, extra = _module(world)
    return mod.generate(banks=mod.DEFAULT_BANKS if banks is None else banks,
                        accounts=accounts, days=days, seed=seed, **extra)


def write_synthetic(out: Path, banks: int | None = None, accounts: int = 10_000, days: int = 60,
                    seed: int = 0, world: str = DEFAULT_WORLD) -> dict:
    """Write out/transactions.parquet and out/patterns.parquet; return their row counts."""
    transactions, patterns = generate(banks=banks, accounts=accounts, days=days, seed=seed, world=world)
    return write_tables(out, transactions, patterns)
