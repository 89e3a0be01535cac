"""`python -m attacks.run` (`make attack`): the adversarial suite against the real CLI and flow.

Prints one row per attack class and level: cases tried, cases rejected with the expected
error code, and (flow classes) whether every honest bank's batch was still accepted and its
alert file delivered. Exit 0 when every class is at 100%, no batch was lost and no canary
leaked; 1 otherwise; 3 when some classes could not run (e.g. the flow is unavailable).

    python -m attacks.run [--quick] [--json FILE] [--workdir DIR] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m attacks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes and one crash step (used by the tests)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--workdir", metavar="DIR", help="work here and keep it (default: a fresh temp dir, removed)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-flow", action="store_true", help="skip the flow-level classes")
    return p.parse_args(argv)


def _table(results: list, lost: int, leaks: list[str]) -> str:
    head = f"{'class':<26} {'level':<9} {'tried':>6} {'right':>6} {'pct':>6}  others  status"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.not_run:
            lines.append(f"{r.cls:<26} {r.level:<9} {'-':>6} {'-':>6} {'-':>6}  {'-':<6}  not run: {r.not_run}")
            continue
        pct = 100.0 * r.right / r.tried if r.tried else 0.0
        others = {None: "-", True: "yes", False: "NO"}[r.others_processed]
        status = "ok" if r.ok else "FAIL"
        lines.append(f"{r.cls:<26} {r.level:<9} {r.tried:>6} {r.right:>6} {pct:>5.1f}%  {others:<6}  {status}")
        for f in r.failures[:5]:
            lines.append(f"    ! {f}")
    lines.append("-" * len(head))
    lines.append(f"batches lost: {lost}    canary leaks: {len(leaks)}")
    for leak in leaks[:10]:
        lines.append(f"    ! leak: {leak}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="aml-attack-"))
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    # Everything this process and its children write to a temp dir lands under `work`, where the
    # leak scan looks for the canaries.
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)

    from attacks.harness import Consortium, make_nights, write_batch
    from attacks.offline import bank_classes, container_classes, stale_batch

    rng = random.Random(args.seed)
    canary = "CNRY" + secrets.token_hex(6)
    sizes = dict(banks=4, accounts=200, days=8, n_nights=2) if args.quick else \
        dict(banks=5, accounts=600, days=21, n_nights=4)
    log = print
    log(f"# attack suite: workdir {work} ({'quick' if args.quick else 'full'}, seed {args.seed})", flush=True)
    members, nights = make_nights(seed=args.seed, canary=canary, **sizes)
    con = Consortium(work / "consortium", members)
    plain = work / "banks"  # the banks' own plaintext: the only place canaries may appear
    first = {b: write_batch(nights.nights[0][b], plain / f"night0-{b}.parquet") for b in members}

    stale_file, stale_dir = stale_batch(con, first[members[2]], work / "stale", members[2], sequence=50)
    results = []
    results += container_classes(con, nights.nights[0][members[0]], stale_file.read_bytes(), rng,
                                 args.quick, canary)
    results += bank_classes(con, first[members[0]], stale_dir, work / "bankside")
    from attacks.data_attacks import bomb_class, merge_classes

    results += bomb_class(con, nights.nights[0][members[1]], members[1], first_sequence=900)
    results += merge_classes(members, nights.nights[0], nights.nights[1] if len(nights.nights) > 1 else None,
                             canary)
    log(f"# container, bank and data classes done in {time.monotonic() - started:.0f} s", flush=True)

    lost, leaks, figures = 0, [], {}
    if args.no_flow:
        from attacks.harness import ClassResult

        results.append(ClassResult("flow", "flow", not_run="--no-flow given"))
    else:
        from attacks.flowrun import flow_classes

        flow_results, lost, leaks, figures = flow_classes(
            con, nights, first, stale_file, work, rng, args.quick, canary, log)
        results += flow_results

    print(_table(results, lost, leaks))
    elapsed = time.monotonic() - started
    print(f"# {len(results)} classes in {elapsed:.0f} s")
    failed = [r for r in results if not r.ok and r.not_run is None]
    not_run = [r for r in results if r.not_run]
    if args.json:
        Path(args.json).write_text(json.dumps({
            "classes": [r.to_json() for r in results], "lost_batches": lost, "leaks": leaks,
            "figures": figures, "seconds": round(elapsed, 1), "quick": args.quick,
            "ok": not failed and not lost and not leaks and not not_run,
        }, indent=1) + "\n")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    if failed or lost or leaks:
        return 1
    return 3 if not_run else 0


if __name__ == "__main__":
    sys.exit(main())
