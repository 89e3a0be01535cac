"""Benchmark `aml synth`: wall time, rows/s and peak RSS for about 1 M transactions.

Run: .venv/bin/python benchmarks/bench_synth.py [--accounts 10000] [--days 60] [--write DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from aml.tools.synth import generate, write_synthetic


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--banks", type=int, default=8)
    p.add_argument("--accounts", type=int, default=10_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    start = time.perf_counter()
    txns, patterns = generate(banks=a.banks, accounts=a.accounts, days=a.days, seed=a.seed)
    gen_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_synthetic(Path(tmp), banks=a.banks, accounts=a.accounts, days=a.days, seed=a.seed)
        write_s = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024

    n = txns.num_rows
    print(f"generate: {n:,} transactions ({patterns.num_rows:,} laundering) in {gen_s:.2f} s "
          f"= {n / gen_s:,.0f} rows/s")
    print(f"generate + write parquet: {write_s:.2f} s = {n / write_s:,.0f} rows/s, {size / 1e6:.1f} MB on disk")
    print(f"peak RSS: {rss_mib:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
