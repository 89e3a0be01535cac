"""End to end at scale: seal -> `aml run` (real Prefect) -> `aml open`, on `aml synth` data.

    .venv/bin/python benchmarks/bench_e2e.py [--sizes 100000,1000000[,5000000]] [--json FILE] [--no-gfp]

Each size is a number of transactions; it becomes `aml synth --banks 8 --days D --accounts N`
with N = size / (1.7 * D) (docs/synthetic-data.md: 1.7 ordinary transactions per account per
day, about 0.7 % laundering on top). The last NEW_DAYS days lose their labels: they are the
"new" rows alerts are raised on; the rest is labelled history.

End to end is seal -> run -> open: what the consortium does every night. Split (cutting one
synthetic file into per-bank files) is data preparation and is shown, but not counted.
Seal and open run for the 8 banks in parallel (2 processes): each bank seals and opens its own
files on its own machine, independently of the others.

Stages: the bank side (split, seal, open) timed here; the flow's own stage durations (parsed
from `aml run`'s output: verify, unseal incl. validation, merge incl. reading history, detection
and its sub-stages when the pipeline reports them, seal of alerts, deliver + ledger commit; the
new history is written in a background thread during detection, its time shown apart); the Prefect overhead (the `aml run` wall time not covered by those: interpreter,
the temporary Prefect server, the enclave worker's start, task bookkeeping). The Prefect
database is created once before timing (a real deployment creates it on its first run only).
Peak RSS: the highest VmHWM among the `aml run` process's descendants that are
multiprocessing workers (the enclave worker), polled from /proc.
Snap ML: GraphFeaturePreprocessor's feature-only rate on the same edges (all rows touching a
member bank), fed in time order in batches of 2,048 edges, with the parameters of
benchmarks/bench_detection_vs_snapml.py (--no-gfp skips it).
Linearity: wall time per transaction at each size against the smallest size (within 20 %?).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BANKS = 8
DAYS = 30
NEW_DAYS = 7
TXNS_PER_ACCOUNT_DAY = 1.7
# Stages whose work grows with the rows (no start-ups): for the linearity check.
PROPORTIONAL = ("seal", "flow verify", "flow inside_merge", "flow inside_detect", "flow inside_seal",
                "flow deliver_commit", "open")
BANK_PROCESSES = 2


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "aml.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"aml {args[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class WorkerRSS(threading.Thread):
    """Polls the enclave worker's peak RSS (VmHWM) while `aml run` runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kib, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for child in _descendants(self.pid):
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"multiprocessing" in cmd:  # the spawned enclave worker
                    self.peak_kib = max(self.peak_kib, _hwm_kib(child))
            self.done.wait(0.25)


def _prefect_env(prefect_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    return env


def create_prefect_db(prefect_home: Path) -> float:
    """Start and stop `aml run`'s temporary server once: creates and migrates the database, a
    once-per-installation cost that is not part of a nightly run."""
    start = time.perf_counter()
    code = "from aml.operator.run import prefect_api\nwith prefect_api() as ready:\n    ready()\n"
    r = subprocess.run([sys.executable, "-c", code], env=_prefect_env(prefect_home), cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"creating the Prefect database failed: {r.stderr[-2000:]}")
    return time.perf_counter() - start


def run_flow(p: dict, prefect_home: Path) -> tuple[float, dict, int, str]:
    env = _prefect_env(prefect_home)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aml.cli", "run", "--enclave", p["enclave"], "--inbox", p["inbox"],
                             "--outbox", p["outbox"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    rss = WorkerRSS(proc.pid)
    rss.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    rss.done.set()
    rss.join()
    if proc.returncode != 0:
        raise SystemExit(f"aml run failed ({proc.returncode}): {err[-3000:]}")
    m = re.search(r"stage durations \(ms\): (.*)", out)
    millis = {k: int(v) for k, v in (part.rsplit(" ", 1) for part in m.group(1).split(", "))} if m else {}
    return seconds, millis, rss.peak_kib, out


def snapml_rate(edges, threads: int) -> dict:
    """GFP feature extraction alone (no model) over `edges`, fed in time order in batches."""
    try:
        from snapml import GraphFeaturePreprocessor
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        return {"unavailable": f"{type(exc).__name__}"}

    from aml.enclave.detect.config import DetectionConfig
    from bench_detection_vs_snapml import BATCH, gfp_params, raw_edge_array

    raw = raw_edge_array(edges.sort_by("timestamp"), DetectionConfig.load())
    gfp = GraphFeaturePreprocessor()
    gfp.set_params(gfp_params(threads))
    start = time.perf_counter()
    out = [gfp.transform(raw[i:i + BATCH]) for i in range(0, len(raw), BATCH)]
    seconds = time.perf_counter() - start
    del out
    return {"seconds": round(seconds, 2), "edges": int(len(raw)), "edges_per_second": round(len(raw) / seconds),
            "threads": threads}


def _seal_one(bank: str, p: dict) -> None:
    from aml.bank.seal import seal

    with contextlib.redirect_stderr(io.StringIO()):  # the SIMULATED-attestation warning, once per bank
        seal(bank=bank, key=p["keys"] / f"{bank}.key", attestation=p["enclave"] / "attestation.json",
             file=p["banks"] / f"{bank}.parquet", inbox=p["inbox"], policy=p["banks"] / "policy.json",
             allow_simulated=True)


def _open_one(bank: str, p: dict) -> int:
    from aml.bank.open import open_alerts

    sealed = sorted((p["outbox"] / bank).glob("*.amla"))
    with contextlib.redirect_stderr(io.StringIO()):
        return open_alerts(bank=bank, key=p["keys"] / f"{bank}.key", attestation=p["enclave"] / "attestation.json",
                           sealed=sealed, out=p["alerts"] / f"{bank}.parquet", policy=p["banks"] / "policy.json",
                           allow_simulated=True)


def _per_bank(fn, members: list[str], p: dict) -> list:
    """`fn(bank, p)` for every bank, BANK_PROCESSES at a time (banks work independently)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(BANK_PROCESSES, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(fn, members, [p] * len(members)))


def bench_size(size: int, work: Path, threads: int, seed: int, gfp: bool, prefect_home: Path) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import aml.bank.open  # noqa: F401  (imported before the bank processes fork: they inherit it)
    import aml.bank.seal  # noqa: F401
    from aml.bank.keygen import keygen
    from aml.tools.demo import pin_policy, unlabel_recent
    from aml.enclave.identity import init_enclave
    from aml.tools.split import choose_members, split_table

    accounts = max(200, round(size / (TXNS_PER_ACCOUNT_DAY * DAYS)))
    res: dict = {"size": size, "accounts": accounts, "days": DAYS, "banks": BANKS, "seconds": {}}
    sec = res["seconds"]
    synth_dir = work / "synth"
    t = time.perf_counter()
    _cli("synth", "--out", synth_dir, "--banks", BANKS, "--accounts", accounts, "--days", DAYS, "--seed", seed)
    sec["synth (not in e2e)"] = time.perf_counter() - t
    table = unlabel_recent(pq.read_table(synth_dir / "transactions.parquet"), NEW_DAYS)
    res["transactions"] = table.num_rows

    p = {n: work / n for n in ("keys", "banks", "enclave", "inbox", "outbox", "alerts")}
    for d in p.values():
        d.mkdir(parents=True, exist_ok=True)
    members = sorted(choose_members(table, BANKS))
    for bank in members:
        keygen(bank, p["keys"])
    init_enclave(p["enclave"], p["keys"])
    pin_policy(p["enclave"], p["banks"])  # the banks' pinned copy of the policy

    t = time.perf_counter()
    parts = split_table(table, members)
    for bank, part in parts.items():
        pq.write_table(part, p["banks"] / f"{bank}.parquet")
    sec["split (data prep, not in e2e)"] = time.perf_counter() - t
    res["rows_sealed"] = sum(part.num_rows for part in parts.values())
    touching = pc.or_(pc.is_in(table["src_bank"], pa.array(members)), pc.is_in(table["dst_bank"], pa.array(members)))
    edges = table.filter(touching)
    res["edges"] = edges.num_rows
    del parts

    t = time.perf_counter()
    _per_bank(_seal_one, members, p)
    sec["seal"] = time.perf_counter() - t

    run_seconds, millis, peak_kib, out = run_flow(p, prefect_home)
    res["flow_millis"], res["run_stdout"] = millis, out.splitlines()[:2]
    for k, v in millis.items():
        sec[f"flow {k}"] = v / 1000
    # Stages the flow times itself (top level; inside_* and detect sub-stages are parts of them).
    covered = sum(v for k, v in millis.items() if not k.startswith("inside_")) / 1000
    # (the history is written in the background, during detection: not a stage of its own)
    inside = sum(v for k, v in millis.items() if k.startswith("inside_") and not k.startswith("inside_detect_")
                 and not k.endswith("_background"))
    if "enclave_detect" in millis:
        sec["flow detect task overhead"] = (millis["enclave_detect"] - inside) / 1000
    sec["aml run total"] = run_seconds
    sec["prefect + process overhead"] = run_seconds - covered
    res["worker_peak_rss_mib"] = round(peak_kib / 1024)

    t = time.perf_counter()
    res["alerts_opened"] = sum(_per_bank(_open_one, members, p))
    sec["open"] = time.perf_counter() - t

    e2e = sec["seal"] + run_seconds + sec["open"]
    res["e2e_seconds"] = e2e
    res["e2e_with_split_seconds"] = e2e + sec["split (data prep, not in e2e)"]
    res["e2e_txn_per_s"] = round(res["transactions"] / e2e)
    res["e2e_no_prefect_startup_seconds"] = e2e - sec["prefect + process overhead"]
    res["outside_detection_seconds"] = e2e - millis.get("inside_detect", 0) / 1000
    detect_s = millis.get("inside_detect", 0) / 1000
    res["detect_edges_per_s"] = round(edges.num_rows / detect_s) if detect_s else None
    res["snapml"] = snapml_rate(edges, threads) if gfp else {"unavailable": "skipped (--no-gfp)"}
    if "edges_per_second" in res["snapml"] and res["detect_edges_per_s"]:
        res["snapml"]["ours_over_gfp"] = round(res["detect_edges_per_s"] / res["snapml"]["edges_per_second"], 3)
    return res


def print_table(results: list[dict]) -> None:
    sizes = [r["size"] for r in results]
    stages = []
    for r in results:
        stages += [s for s in r["seconds"] if s not in stages]
    head = f"{'stage (s)':<40}" + "".join(f"{s:>14,}" for s in sizes)
    print(head)
    print("-" * len(head))
    for s in stages:
        print(f"{s:<40}" + "".join(f"{r['seconds'].get(s, float('nan')):>14.2f}" for r in results))
    rows = [
        ("transactions", lambda r: f"{r['transactions']:,}"),
        ("rows sealed (both sides)", lambda r: f"{r['rows_sealed']:,}"),
        ("end to end: seal->run->open (s)", lambda r: f"{r['e2e_seconds']:.1f}"),
        ("  everything but detection (s)", lambda r: f"{r.get('outside_detection_seconds', float('nan')):.1f}"),
        ("  with split (s)", lambda r: f"{r.get('e2e_with_split_seconds', float('nan')):.1f}"),
        ("end to end (txn/s)", lambda r: f"{r['e2e_txn_per_s']:,}"),
        ("  w/o Prefect start-up (s)", lambda r: f"{r['e2e_no_prefect_startup_seconds']:.1f}"),
        ("enclave worker peak RSS (MiB)", lambda r: f"{r['worker_peak_rss_mib']:,}"),
        ("alerts opened", lambda r: f"{r['alerts_opened']:,}"),
        ("our detect (edges/s)", lambda r: f"{r['detect_edges_per_s'] or 0:,}"),
        ("Snap ML GFP features (edges/s)", lambda r: "n/a" if "unavailable" in r["snapml"]
         else f"{r['snapml']['edges_per_second']:,}"),
        ("ours / GFP features", lambda r: f"{r['snapml'].get('ours_over_gfp', float('nan')):.2f}"),
    ]
    base = results[0]
    per_txn = lambda r: r["e2e_no_prefect_startup_seconds"] / r["transactions"]  # noqa: E731
    rows.append(("us per txn (w/o start-up)", lambda r: f"{per_txn(r) * 1e6:.1f}"))
    rows.append(("vs smallest (within 20%?)", lambda r: f"{per_txn(r) / per_txn(base):.2f} "
                 + ("yes" if per_txn(r) / per_txn(base) <= 1.2 else "NO")))
    # Without fixed costs (Prefect, worker start): the stages whose work grows with the rows.
    per_row = lambda r: sum(r["seconds"].get(s, 0) for s in PROPORTIONAL) / r["transactions"]  # noqa: E731
    rows.append(("us per txn, row-bound stages", lambda r: f"{per_row(r) * 1e6:.1f}"))
    rows.append(("vs smallest (within 20%?)", lambda r: f"{per_row(r) / per_row(base):.2f} "
                 + ("yes" if per_row(r) / per_row(base) <= 1.2 else "NO")))
    for label, fn in rows:
        print(f"{label:<40}" + "".join(f"{fn(r):>14}" for r in results))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="transactions per run, comma-separated")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Snap ML GFP threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-gfp", action="store_true", help="skip the Snap ML GFP comparison (quick runs)")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON",
                    help="only print the table from earlier --json files (sizes merged, smallest first)")
    a = ap.parse_args(argv)
    if a.table:
        print_table(sorted((r for f in a.table for r in json.loads(Path(f).read_text())), key=lambda r: r["size"]))
        return 0
    sizes = [int(s) for s in a.sizes.split(",") if s]
    results = []
    with tempfile.TemporaryDirectory(dir=a.workdir, prefix="bench_e2e_") as tmp:
        prefect_home = Path(tmp) / "prefect_home"
        db_seconds = create_prefect_db(prefect_home)
        print(f"Prefect database created in {db_seconds:.1f} s (first run of an installation only; "
              "not counted)", file=sys.stderr, flush=True)
        for size in sizes:
            work = Path(tmp) / str(size)
            work.mkdir()
            r = bench_size(size, work, a.threads, a.seed, not a.no_gfp, prefect_home)
            r["prefect_db_creation_seconds"] = db_seconds
            results.append(r)
            print(f"done {size:,}: {r['e2e_seconds']:.1f} s end to end", file=sys.stderr, flush=True)
            if a.json:  # after every size, so a long run leaves figures behind
                Path(a.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)
    print(f"(seal and open: {BANK_PROCESSES} banks at a time, as banks do this on their own machines; "
          "split is data preparation, not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
