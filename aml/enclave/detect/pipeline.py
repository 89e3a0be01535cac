"""Detection entry point: graph -> typology detectors -> pooled model -> per-bank alerts."""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aml.enclave.detect.alerts import cut_alerts, empty_alert_table
from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.graph import TransactionGraph
from aml.enclave.detect.partition import PartitionMapper, detect_typologies
from aml.enclave.detect.typologies import build_detectors
from aml.enclave.detect.typologies.base import PatternInstance

NO_MODEL = "none"


@dataclass
class DetectionResult:
    """What one detection run produced. Only `alerts_for(bank)` output may leave the enclave
    (sealed to that bank); `counts` and the hashes are safe to log."""

    banks: list[str]
    counts: dict[str, int]
    instances: list[PatternInstance]
    model_hash: str
    config_hash: str
    graph: TransactionGraph | None = field(default=None, repr=False)
    # Model score per edge: new edges only, NaN for history edges (never scored).
    edge_scores: np.ndarray | None = field(default=None, repr=False)
    # Wall time per stage (graph, each detector, model, alerts), in ms: safe to log.
    millis: dict[str, int] = field(default_factory=dict)
    _alerts: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    def alerts_for(self, bank: str) -> pa.Table:
        return self._alerts.get(bank, empty_alert_table())

    def flagged_txn_ids(self, pattern: str | None = None) -> set[str]:
        """txn_ids of every alerted instance (all banks), optionally of one pattern only."""
        if self.graph is None:
            return set()
        edges = [np.asarray(i.edge_idx, dtype=np.int64) for i in self.instances
                 if pattern in (None, i.pattern)]
        if not edges:
            return set()
        return {str(x) for x in self.graph.txn_ids(np.unique(np.concatenate(edges)))}


def _banks(table: pa.Table, members: list[str] | None) -> list[str]:
    if members is not None:
        return sorted(set(members))
    if "submitted_by" in table.column_names:
        banks = pc.unique(pc.list_flatten(table.column("submitted_by"))).to_pylist()
    else:
        banks = pc.unique(pa.chunked_array(
            table.column("src_bank").chunks + table.column("dst_bank").chunks)).to_pylist()
    return sorted(b for b in banks if b is not None)


def _score_with_model(graph, instances, config):
    """Call aml.enclave.detect.model.score_transactions when that module ships (it is optional).

    Only the module's absence is tolerated: if it exists but fails, the run fails, rather
    than silently alerting without the model."""
    if importlib.util.find_spec("aml.enclave.detect.model") is None:
        return None, NO_MODEL
    model = importlib.import_module("aml.enclave.detect.model")
    score = getattr(model, "score_transactions", None)
    if score is None:
        return None, NO_MODEL
    # Only new edges are scored (model alerts need a new payment); history edges get NaN.
    scores, model_hash = score(graph, instances, config, rows=graph.is_new)
    return np.asarray(scores, dtype=np.float64), str(model_hash)


def model_instances(graph, scores: np.ndarray, covered: np.ndarray, threshold: float
                    ) -> list[PatternInstance]:
    """Model-only alerts: new edges scoring >= threshold that no typology alert covers, grouped
    into connected pieces (through non-hub accounts) so one analyst case is one alert."""
    flagged = np.flatnonzero(graph.is_new & (scores >= threshold) & ~covered)
    if len(flagged) == 0:
        return []
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # Hubs would glue unrelated payments together: give each hub endpoint its own dummy node.
    src, dst = graph.src[flagged].astype(np.int64), graph.dst[flagged].astype(np.int64)
    n = graph.n_nodes
    dummy = n + np.arange(len(flagged))
    src = np.where(graph.is_hub[src], dummy, src)
    dst = np.where(graph.is_hub[dst], dummy + len(flagged), dst)
    size = n + 2 * len(flagged)
    m = coo_matrix((np.ones(len(flagged)), (src, dst)), shape=(size, size))
    _, comp = connected_components(m, directed=False)
    edge_comp = comp[src]
    out = []
    for c in np.unique(edge_comp):
        e = flagged[edge_comp == c]
        out.append(PatternInstance("model", e, float(scores[e].max()),
                                   {"hops": 1, "model_edges": len(e)}))
    return out


def _since(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def run_detection(merged: pa.Table, config: DetectionConfig | None = None, *,
                  members: list[str] | None = None,
                  alert_key: bytes | None = None,
                  placeholder_key: bytes | None = None, partitions: int = 1,
                  map_partitions: PartitionMapper | None = None) -> DetectionResult:
    """Detect typologies (and model-scored payments) over the merged batches of all members.

    `merged` has TRANSACTION_SCHEMA columns, optionally `is_new` and `submitted_by` (see
    TransactionGraph.from_table). `members` defaults to the banks in `submitted_by`, or to
    every bank seen. `alert_key` keys the alert ids (the enclave derives it from its storage key
with `aml.enclave.detect.alerts.alert_key`; without it ids are random per call). `placeholder_key`
fixes the anonymised placeholders (tests only; default: derived from the alert key).
    `partitions` > 1 runs the typology detectors per time partition, through
    `map_partitions` (default: one after another here; the enclave passes a Dask map).
    """
    config = config or DetectionConfig.load()
    millis: dict[str, int] = {}
    start = time.perf_counter()
    banks = _banks(merged, members)
    graph = TransactionGraph.from_table(merged, config, members=banks)
    millis["graph"] = _since(start)
    alert_cfg = config.section("alerts")
    require_new = bool(alert_cfg.get("require_new_edge", True))

    # Typology detectors, optionally split by time window (aml/enclave/detect/partition.py): the
    # instances are the same either way.
    found: list[PatternInstance] = detect_typologies(graph, build_detectors(config), partitions,
                                                     map_partitions, millis)
    # The model sees every instance (history too: it trains on history edges); alerts are
    # raised only for instances that contain a new payment.
    instances = [i for i in found if not require_new or graph.is_new[i.edge_idx].any()]

    start = time.perf_counter()
    scores, model_hash = _score_with_model(graph, found, config)
    if scores is not None:
        covered = np.zeros(len(graph), dtype=bool)
        for inst in instances:
            covered[inst.edge_idx] = True
        threshold = float(config.model.get("threshold", 0.8))
        instances.extend(model_instances(graph, scores, covered, threshold))
    millis["model"] = _since(start)

    start = time.perf_counter()
    alerts = cut_alerts(graph, instances, banks, currency=config.base_currency,
                        max_placeholders=int(alert_cfg.get("max_placeholders", 5)),
                        alert_key=alert_key, placeholder_key=placeholder_key)
    millis["alerts"] = _since(start)
    counts: dict[str, int] = {}
    for table in alerts.values():
        for p in table.column("pattern").to_pylist():
            counts[p] = counts.get(p, 0) + 1
    return DetectionResult(banks=banks, counts=counts, instances=instances,
                           model_hash=model_hash, config_hash=config.hash, graph=graph,
                           edge_scores=scores, millis=millis, _alerts=alerts)
