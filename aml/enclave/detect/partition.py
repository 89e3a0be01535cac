"""Typology detection split by time window, with an overlap that makes it exact.

The graph, its whole-graph account facts (hub flags, degrees, first payments), the features
and the model stay global. What is split is the combinatorial part: the typology detectors.
Each partition owns a *core* time range; it runs the detectors on a slice of the graph that
extends the core by each detector's *reach* (how far back and forward of the edges an instance
can have, any computation that produces it reads), and keeps only the instances whose earliest
edge lies in its core. The cores tile time, so every instance is kept by exactly one
partition; the union then goes through the same `merge_overlapping` as a single-process run.

Why this is exact (docs/scaling.md, "Scale-out on Dask", has the long form): every
time-local detector computes an instance from one time bucket of width W (two tilings of
time, see `window_buckets`) plus per-edge facts read within a bounded distance of the bucket's
edges. A bucket that holds an edge of the core lies within (lo - W, hi + W); with the slice
covering that plus the per-edge look-ups, such a bucket is computed from the same edges and
the same global account facts as on the whole graph, so it yields the same instances. A bucket
cut by the slice's ends cannot hold a core edge, so what it yields is dropped by the
ownership rule. `tests/test_partition.py` checks partitioned == whole-graph instances per
detector.

A detector whose instances are not bounded in time (random_chain: a connected component of
forward links can run for weeks; whether it has more than max_component_edges edges decides
it) runs once on the whole graph; it is one vectorised pass, cheap next to the others.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from aml.enclave.detect.typologies.base import HOUR, PatternInstance, merge_overlapping

# map_partitions(jobs) -> [run_partition(job) for job in jobs], in order; may run them anywhere.
PartitionMapper = Callable[[Iterable["PartitionJob"]], list[dict[str, list[PatternInstance]]]]


def detector_reach(detector) -> tuple[int, int] | None:
    """(seconds before, seconds after) a partition's core that `detector` needs to reproduce
    every instance whose earliest edge is in the core; None if it is not time-local.

    Read from the detector's own parameters (so from the config). Per detector, with W its
    bucket width and D its dwell: a bucket holding a core edge spans (lo - W, hi + W); the
    extra terms are the per-edge look-ups around the bucket's edges."""
    base = _bucket_reach(detector)
    if base is None:
        return None
    # Detectors that add linked hops (payments up to L before or after the pattern's own,
    # `link_dwell_hours`): an instance may start up to L before its bucket, and the links of
    # the bucket's edges are read up to L either side.
    link = int(round(float(getattr(detector, "link_dwell_hours", 0) or 0) * HOUR))
    return base[0] + link, base[1] + 2 * link


def _bucket_reach(detector) -> tuple[int, int] | None:
    name = getattr(detector, "name", "")
    hours = lambda x: int(round(float(x) * HOUR))  # noqa: E731
    if name in ("fan_out", "fan_in"):
        # +-batch/2 for the payroll-batch filter; fan-out's funding look-up reaches W before
        # the star, fan-in's onward look-up W after it.
        w, b = hours(detector.window_hours), int(detector.batch_minutes * 30)
        return 2 * w + b, 2 * w + b
    if name == "scatter_gather":
        # Buckets over first hops; second hops up to W later; +-W neighbour counts on both.
        w = hours(detector.window_hours)
        return 2 * w, 3 * w
    if name == "gather_scatter":
        w = hours(detector.window_hours)  # outflow up to W after the first inflow
        return w, 2 * w
    if name == "cycle":
        w, d = hours(detector.window_hours), hours(detector.max_dwell_hours)
        return w + d, w + d  # +-D: the forward-link pruning of the bucket's edges
    if name in ("bipartite", "stack", "structuring"):
        w = hours(detector.window_hours)
        return w, w
    if name == "pass_through":
        # Buckets of 2D; an instance's earliest edge may be a feeding hop up to D before the
        # bucket; forward links +-D around the bucket's edges.
        d = hours(detector.max_dwell_hours)
        return 3 * d, 4 * d
    return None  # random_chain, and any detector not analysed here: whole graph


def overlap_s(detectors) -> tuple[int, int]:
    """The partition overlap (before, after) in seconds: the largest reach among the
    time-local detectors (the "longest pattern window" of the enabled configuration)."""
    reaches = [r for r in (detector_reach(d) for d in detectors) if r is not None]
    if not reaches:
        return 0, 0
    return max(r[0] for r in reaches), max(r[1] for r in reaches)


@dataclass(frozen=True)
class Partition:
    """Core time range [lo, hi) and the edge index ranges (of the time-sorted graph) of the
    core and of the extended slice [lo - before, hi + after]."""

    index: int
    lo: int
    hi: int
    core: tuple[int, int]
    span: tuple[int, int]


def time_partitions(t: np.ndarray, n_partitions: int, overlap: int | tuple[int, int]
                    ) -> list[Partition]:
    """Split sorted edge times `t` into up to `n_partitions` consecutive cores holding about
    equal numbers of edges (so workers get equal work), each with its extended slice.

    Cores tile [t[0], t[-1]] without gaps, so every edge is in exactly one core. Edges at one
    instant never straddle two cores; cores that would be empty are dropped."""
    before, after = (overlap, overlap) if np.isscalar(overlap) else overlap
    t = np.asarray(t)
    m = len(t)
    if m == 0:
        return []
    n = max(1, min(int(n_partitions), m))
    bounds = [int(t[(i * m) // n]) for i in range(n)] + [int(t[-1]) + 1]
    bounds = sorted(set(bounds))
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        core = (int(np.searchsorted(t, lo, "left")), int(np.searchsorted(t, hi, "left")))
        # One second of margin each side: the detectors' window tests are inclusive.
        span = (int(np.searchsorted(t, lo - before - 1, "left")),
                int(np.searchsorted(t, hi + after, "right")))
        out.append(Partition(len(out), lo, hi, core, span))
    return out


@dataclass
class PartitionJob:
    """What one partition task needs: its bounds, its slice of the graph (edge `i` of the
    slice is global edge `partition.span[0] + i`) and the time-local detectors."""

    partition: Partition
    graph: object  # TransactionGraph slice
    detectors: list


def _shifted(inst: PatternInstance, offset: int) -> PatternInstance:
    return PatternInstance(inst.pattern, inst.edge_idx + offset, inst.score, inst.evidence)


def run_partition(job: PartitionJob) -> dict[str, list[PatternInstance]]:
    """The raw (unmerged) instances this partition owns, per detector, in global edge ids.

    Each detector runs on the narrower slice its own reach needs (the job's slice is cut for
    the detector with the largest reach)."""
    p, g = job.partition, job.graph
    core_lo, core_hi = p.core
    out: dict[str, list[PatternInstance]] = {}
    for det in job.detectors:
        before, after = detector_reach(det)
        start = int(np.searchsorted(g.t, p.lo - before - 1, "left"))
        stop = int(np.searchsorted(g.t, p.hi + after, "right"))
        sub = g.time_slice(start, stop)
        offset = p.span[0] + start
        owned = []
        for inst in det.fit(sub).detect(sub):
            if len(inst.edge_idx) and core_lo <= int(inst.edge_idx.min()) + offset < core_hi:
                owned.append(_shifted(inst, offset))
        out[det.name] = owned
    return out


def canonical_order(instances: list[PatternInstance]) -> list[PatternInstance]:
    """Instances sorted by their edges (then best score first), so merging does not depend on
    the order detectors emit or partitions finish (ties in merge_overlapping pick the first)."""
    return sorted(instances, key=lambda i: (int(i.edge_idx[0]) if len(i.edge_idx) else -1,
                                            len(i.edge_idx), i.edge_idx.tobytes(), -i.score))


def _serial(jobs: Iterable[PartitionJob]) -> list[dict[str, list[PatternInstance]]]:
    return [run_partition(job) for job in jobs]


def partition_jobs(graph, parts: list[Partition], detectors: list) -> Iterator[PartitionJob]:
    """One job per partition, built lazily (a mapper can ship each and drop it)."""
    for p in parts:
        yield PartitionJob(p, graph.time_slice(*p.span), detectors)


def detect_typologies(graph, detectors: list, partitions: int = 1,
                      map_partitions: PartitionMapper | None = None,
                      millis: dict[str, int] | None = None) -> list[PatternInstance]:
    """Every detector's merged instances over `graph`, in detector order.

    partitions <= 1: each detector on the whole graph (one process). Otherwise the time-local
    detectors run per time partition through `map_partitions` (default: one after another in
    this process) and the rest on the whole graph; the result is the same either way.
    `millis`, if given, receives each detector's wall time (partitioned ones: all together)."""
    millis = {} if millis is None else millis
    start = time.perf_counter()
    local = [d for d in detectors if partitions > 1 and detector_reach(d) is not None]
    raw: dict[str, list[PatternInstance]] = {d.name: [] for d in local}
    if local:
        parts = time_partitions(graph.t, partitions, overlap_s(local))
        mapper = map_partitions or _serial
        for result in mapper(partition_jobs(graph, parts, local)):
            for name, found in result.items():
                raw[name].extend(found)
        millis["partitioned_detectors"] = int((time.perf_counter() - start) * 1000)
    found: list[PatternInstance] = []
    for det in detectors:
        start = time.perf_counter()
        instances = raw[det.name] if det.name in raw else det.fit(graph).detect(graph)
        found.extend(merge_overlapping(canonical_order(instances)))
        millis[det.name] = int((time.perf_counter() - start) * 1000)
    return found
