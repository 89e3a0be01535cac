"""The pooled model: one classifier trained on every member bank's labelled history.

`PooledModel` is a scikit-learn estimator around `HistGradientBoostingClassifier`:

* training rows are assumed to be in time order (graph edges are); the last
  ``validation_fraction`` of them is held out to choose the decision threshold that maximises
  F1 of the laundering class, then the booster is refit on all rows with that threshold kept;
* with too few labels (fewer than ``min_positives`` laundering rows, or one class only) it falls
  back to an unsupervised `IsolationForest` anomaly score scaled to 0..1, and the threshold is
  the ``unsupervised_quantile`` of the training scores (so roughly that share of rows alerts).

`predict_proba` returns *calibrated* scores: a monotone piecewise-linear map that sends the
chosen threshold to 0.5, so "score >= 0.5" means "alert" whatever the model or mode.
`score_transactions` is the hook the detection pipeline calls.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.metrics import precision_recall_curve
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from aml.enclave.detect.features import FEATURE_NAMES, PATTERN_FEATURES, FeatureTable

MODEL_VERSION = "pooled-hgb-1"

# Rows scored per call: the boosters walk all rows once per tree, so a block that stays in
# the CPU cache scores several times faster than one pass over millions of rows (and the
# feature rows of one block are all that is held in float64 at a time).
PREDICT_BLOCK = 8192


def _rows(X, idx) -> np.ndarray:
    """Rows `idx` of X as float64: X is an array or a `FeatureTable` (rows made on demand)."""
    return X.take_rows(idx) if hasattr(X, "take_rows") else X[idx]


def _n_rows(X) -> int:
    return X.shape[0]

# Defaults for the `[model]` section of the detection config; every key is optional there.
MODEL_DEFAULTS = {
    "learning_rate": 0.1,
    "max_iter": 100,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 20,
    "l2_regularization": 0.0,
    "validation_fraction": 0.2,
    "min_positives": 20,
    "unsupervised_quantile": 0.999,
    "max_train_negatives": 250_000,
    "class_weight": None,
    "n_threads": 1,
    "random_state": 0,
}


class PooledModel(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees on transaction features with an F1-optimal threshold."""

    def __init__(self, learning_rate=0.1, max_iter=100, max_leaf_nodes=31, min_samples_leaf=20,
                 l2_regularization=0.0, validation_fraction=0.2, min_positives=20,
                 unsupervised_quantile=0.999, max_train_negatives=250_000, class_weight=None,
                 n_threads=1, random_state=0):
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.validation_fraction = validation_fraction
        self.min_positives = min_positives
        self.unsupervised_quantile = unsupervised_quantile
        self.max_train_negatives = max_train_negatives
        self.class_weight = class_weight
        self.n_threads = n_threads
        self.random_state = random_state

    def _booster(self) -> HistGradientBoostingClassifier:
        # No class weights by default: the F1-optimal threshold absorbs the 1-in-1,000
        # imbalance, and weighted fits cost ~3.5x the time for the same F1 on our data.
        # No early stopping, so the refit on all rows runs the same iterations.
        return HistGradientBoostingClassifier(
            learning_rate=self.learning_rate, max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization, class_weight=self.class_weight,
            early_stopping=False, random_state=self.random_state,
        )

    def fit(self, X, y=None, threshold_rows=None):
        """`X`: an array, or a `FeatureTable` whose rows are made only as training needs them.
        `threshold_rows` (bool mask, optional): the rows the F1-optimal threshold is chosen
        on. The pipeline passes the rows no typology instance covers, so the threshold is the
        best one for what the model adds on top of the rules, not for what they already find."""
        if not hasattr(X, "take_rows"):
            X = np.asarray(X, dtype=np.float64)
        # OpenMP threads: a fixed, small number (default 1). Oversubscribed cores make
        # scikit-learn's OpenMP loops many times slower, and results do not depend on it.
        with threadpool_limits(self.n_threads):
            return self._fit(X, y, threshold_rows)

    def _fit(self, X, y, threshold_rows=None):
        n = _n_rows(X)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.array([0, 1])
        plan = self._plan(n, y, threshold_rows)
        if plan is None:
            return self._fit_unsupervised(_rows(X, np.arange(n)))
        # Training works on row numbers; feature rows are materialised only for the rows
        # each fit or prediction uses.
        self.mode_ = "supervised"
        # The validation fit (for the threshold) and the final fit are independent: with two
        # cores, run them side by side. Each is the same fit it would be alone.
        with self._pool() as pool:
            threshold = pool.submit(self._choose_threshold, X, plan)
            estimator = pool.submit(lambda: self._booster().fit(
                _rows(X, plan["train"]), plan["train_y"]))
            self.threshold_, self.estimator_ = threshold.result(), estimator.result()
        return self

    def _plan(self, n: int, y, threshold_rows=None) -> dict | None:
        """Which rows (of n) each step of a supervised fit reads, decided from the labels
        alone; None when the fit is unsupervised (it reads every row).

        "train"/"train_y": the final fit. "val_train"/"val_train_y": the validation fit,
        "val"/"val_y": the rows its threshold is chosen on (no validation fit when
        "val_train" is None: the threshold is then 0.5)."""
        y = None if y is None else np.asarray(y, dtype=np.float64)
        known = np.zeros(n, bool) if y is None else ~np.isnan(y)
        yk = (y[known] if y is not None else np.zeros(0)).astype(int)
        n_pos = int(yk.sum())
        if n_pos < self.min_positives or n_pos == len(yk):
            return None
        known_idx = np.flatnonzero(known)
        n_neg = int((yk == 0).sum())
        cap = self.max_train_negatives
        rate = 1.0 if cap is None or n_neg <= cap else cap / n_neg
        keep = self._training_rows(yk, rate)
        plan = {"train": known_idx[keep], "train_y": yk[keep], "val_train": None}
        # Threshold: fit on the earlier part, choose on the latest slice of the labelled rows
        # (only the rows in `threshold_rows`, when given and they hold laundering).
        cut = int(len(yk) * (1.0 - self.validation_fraction))
        if yk[:cut].sum() < 1 or yk[cut:].sum() < 1 or len(np.unique(yk[:cut])) < 2:
            return plan
        vkeep = self._training_rows(yk[:cut], rate)
        val, val_y = known_idx[cut:], yk[cut:]
        if threshold_rows is not None:
            tk = np.asarray(threshold_rows, bool)[known][cut:]
            if val_y[tk].sum() >= 1:
                val, val_y = val[tk], val_y[tk]
        plan.update(val_train=known_idx[:cut][vkeep], val_train_y=yk[:cut][vkeep],
                    val=val, val_y=val_y)
        return plan

    def rows_read(self, n: int, y, threshold_rows=None) -> np.ndarray:
        """Bool mask of the rows of an n-row X that `fit(X, y, threshold_rows)` reads: a
        `FeatureTable` need only be built for those (and the rows to be scored)."""
        plan = self._plan(n, y, threshold_rows)
        mask = np.zeros(n, bool)
        if plan is None:
            mask[:] = True
            return mask
        mask[plan["train"]] = True
        if plan["val_train"] is not None:
            mask[plan["val_train"]] = True
            mask[plan["val"]] = True
        return mask

    def _workers(self) -> int:
        """Python threads for independent fits / blocks of rows, each with n_threads OpenMP
        threads: the cores there are (at most 2: two fits, and prediction scales no further
        on our machines)."""
        return max(1, min(2, (os.cpu_count() or 1) // max(int(self.n_threads), 1)))

    def _pool(self) -> ThreadPoolExecutor:
        # OpenMP's thread count is per thread: set it in each worker thread (for its life).
        return ThreadPoolExecutor(max_workers=self._workers(), initializer=threadpool_limits,
                                  initargs=(self.n_threads, "openmp"))

    def _training_rows(self, y, rate: float) -> np.ndarray:
        """All laundering rows and a fixed-seed `rate` sample of the clean ones, in time order.

        Bounds training time on large histories. The same rate is used for the validation
        fit and the final fit, so the threshold chosen on the former suits the latter."""
        if rate >= 1.0:
            return np.arange(len(y))
        neg = np.flatnonzero(y == 0)
        rng = np.random.default_rng(self.random_state)
        neg = rng.choice(neg, size=int(round(rate * len(neg))), replace=False)
        return np.sort(np.concatenate([np.flatnonzero(y == 1), neg]))

    def _choose_threshold(self, X, plan: dict) -> float:
        """F1-optimal threshold of a fit on the earlier labelled rows, on the latest ones."""
        if plan["val_train"] is None:
            return 0.5
        booster = self._booster().fit(_rows(X, plan["val_train"]), plan["val_train_y"])
        p = _predict_blocks(lambda rows: booster.predict_proba(rows)[:, 1], X, plan["val"])
        precision, recall, thresholds = precision_recall_curve(plan["val_y"], p)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
        return float(np.clip(thresholds[best], 1e-6, 1 - 1e-6)) if len(thresholds) else 0.5

    def _fit_unsupervised(self, X):
        self.mode_ = "unsupervised"
        self.estimator_ = IsolationForest(n_estimators=100, random_state=self.random_state).fit(X)
        raw = -self.estimator_.score_samples(X)
        self.raw_range_ = (float(raw.min()), float(raw.max()))
        scaled = self._scale_raw(raw)
        self.threshold_ = float(np.clip(np.quantile(scaled, self.unsupervised_quantile), 1e-6, 1 - 1e-6))
        return self

    def _scale_raw(self, raw):
        lo, hi = self.raw_range_
        return np.clip((raw - lo) / max(hi - lo, 1e-12), 0.0, 1.0)

    def raw_score(self, X, rows=None) -> np.ndarray:
        """Uncalibrated score in 0..1 (probability or scaled anomaly score) of each row of X,
        or of rows `rows` (row numbers) only."""
        check_is_fitted(self, "estimator_")
        if not hasattr(X, "take_rows"):
            X = np.asarray(X, dtype=np.float64)
        if self.mode_ == "supervised":
            score = lambda rows: self.estimator_.predict_proba(rows)[:, 1]  # noqa: E731
        else:
            score = lambda rows: self._scale_raw(-self.estimator_.score_samples(rows))  # noqa: E731
        with self._pool() as pool:
            idx = np.arange(_n_rows(X)) if rows is None else np.asarray(rows, dtype=np.int64)
            return _predict_blocks(score, X, idx, pool.submit)

    def decision_function(self, X) -> np.ndarray:
        """Calibrated score: the threshold maps to 0.5, monotone, in 0..1."""
        return calibrate(self.raw_score(X), self.threshold_, 0.5)

    def predict_proba(self, X) -> np.ndarray:
        p = self.decision_function(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) >= 0.5).astype(int)


def _predict_blocks(score, X, idx: np.ndarray, submit=None) -> np.ndarray:
    """score(rows of X) for rows `idx`, PREDICT_BLOCK rows at a time (each row's score does not
    depend on the others in its call). `submit(fn, *args) -> future` runs blocks in a pool."""
    out = np.empty(len(idx), dtype=np.float64)

    def block(start: int) -> None:
        out[start:start + PREDICT_BLOCK] = score(_rows(X, idx[start:start + PREDICT_BLOCK]))

    starts = range(0, len(idx), PREDICT_BLOCK)
    if submit is None:
        for start in starts:
            block(start)
    else:
        for future in [submit(block, start) for start in starts]:
            future.result()
    return out


def model_params(config=None) -> dict:
    """The `[model]` section of the detection config over the defaults."""
    params = dict(MODEL_DEFAULTS)
    section = _config_section(config, "model")
    params.update({k: section[k] for k in MODEL_DEFAULTS if k in section})
    return params


def _config_section(config, name: str) -> dict:
    """A TOML table from a DetectionConfig (``.section(name)``) or a plain dict; {} when absent."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        value = config.get(name)
    elif hasattr(config, "section"):
        value = config.section(name)
    else:
        value = getattr(config, name, None)
    return dict(value) if isinstance(value, Mapping) else {}


def model_hash(model: PooledModel | None = None, config=None) -> str:
    """sha256 over what determines the model: version, feature list, params, library versions."""
    params = model.get_params() if model is not None else model_params(config)
    blob = json.dumps({
        "model_version": MODEL_VERSION,
        "features": FEATURE_NAMES,
        "params": params,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "config": getattr(config, "hash", None),
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def calibrate(raw: np.ndarray, threshold: float, target: float = 0.5) -> np.ndarray:
    """Monotone piecewise-linear map of 0..1 scores sending `threshold` to `target`."""
    thr = float(np.clip(threshold, 1e-6, 1 - 1e-6))
    target = float(np.clip(target, 1e-6, 1 - 1e-6))
    raw = np.asarray(raw, dtype=np.float64)
    low = target * raw / thr
    high = target + (1.0 - target) * (raw - thr) / (1.0 - thr)
    return np.where(raw < thr, low, high).clip(0.0, 1.0)


def score_transactions(graph, instances, config, rows=None) -> tuple[np.ndarray, str]:
    """Train on the graph's labelled edges (history), score the edges in `rows` (bool per
    edge; default all). The pipeline passes the new edges: only those can alert.

    Returns (score per edge in [0, 1], NaN for edges not in `rows`; model hash). Scores are
    calibrated so that the model's F1-optimal threshold lands exactly on `[model] threshold`
    of the config (the cut-off the pipeline applies; 0.5 when absent): "score >= that
    threshold" is the model's own decision.

    Typology instances feed the pattern_* features only when `[model] use_pattern_features`
    is true: the model is trained on history edges, so the instances must cover history as
    well as new edges, or the features mean different things at training and scoring time.
    """
    n = len(graph)
    params = model_params(config)
    model = PooledModel(**params)
    digest = model_hash(model, config)
    if n == 0:
        return np.zeros(0), digest
    rows = np.ones(n, dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    section = _config_section(config, "model")
    use_patterns = bool(section.get("use_pattern_features", False))
    y = np.asarray(graph.label, dtype=np.float64)
    uncovered = np.ones(n, dtype=bool)
    if section.get("threshold_on_uncovered", True):
        for inst in instances or ():
            uncovered[inst.edge_idx] = False
    # Features only of the rows training reads and of the rows scored (windows still count
    # every edge): at 5M payments with 40 % new, about 60 % of the rows.
    X = FeatureTable(graph, instances if use_patterns else None,
                     rows=model.rows_read(n, y, uncovered) | rows)
    if not use_patterns:
        # Without instances the pattern_* columns are all zero: a constant column never
        # splits, so leaving it out gives the same trees and saves its histograms.
        X = X.select([c for c in FEATURE_NAMES if c not in PATTERN_FEATURES])
    model.fit(X, y, threshold_rows=uncovered)
    target = float(section.get("threshold", 0.5))
    scores = np.full(n, np.nan)
    idx = np.flatnonzero(rows)
    scores[idx] = calibrate(model.raw_score(X, idx), model.threshold_, target)
    return scores, digest
