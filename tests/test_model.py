"""The pooled model: supervised fit with an F1 threshold, unsupervised fallback, sklearn API."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import f1_score

from aml.enclave.detect.config import DetectionConfig
from aml.enclave.detect.model import (PooledModel, calibrate, model_hash, model_params,
                              score_transactions)


def separable(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 2.3).astype(float)
    return X, y


def small(**kw):
    return PooledModel(max_iter=30, min_positives=10, **kw)


def test_supervised_fit_beats_chance_and_sets_threshold():
    X, y = separable()
    Xt, yt = separable(seed=1)
    m = small().fit(X, y)
    assert m.mode_ == "supervised"
    assert 0.0 < m.threshold_ < 1.0
    pred = m.predict(Xt)
    assert f1_score(yt, pred) > 0.7
    # a constant guess of the minority class scores roughly its prevalence
    assert f1_score(yt, pred) > 5 * f1_score(yt, np.ones_like(yt))
    p = m.predict_proba(Xt)
    assert p.shape == (len(Xt), 2) and np.allclose(p.sum(axis=1), 1.0)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.array_equal(pred, (p[:, 1] >= 0.5).astype(int))


def test_deterministic():
    X, y = separable()
    a = small().fit(X, y).decision_function(X)
    b = small().fit(X, y).decision_function(X)
    assert np.array_equal(a, b)


def test_unknown_labels_are_ignored_in_training():
    X, y = separable()
    y_partial = y.copy()
    y_partial[::3] = np.nan
    m = small().fit(X, y_partial)
    assert m.mode_ == "supervised"


@pytest.mark.parametrize("labels", ["none", "one_class", "too_few"])
def test_unsupervised_fallback(labels):
    X, y = separable()
    X[:5] += 8.0  # five obvious outliers
    if labels == "none":
        y = np.full(len(X), np.nan)
    elif labels == "one_class":
        y = np.zeros(len(X))
    else:
        y = np.zeros(len(X))
        y[:3] = 1
    m = small(unsupervised_quantile=0.99).fit(X, y)
    assert m.mode_ == "unsupervised"
    s = m.decision_function(X)
    assert ((s >= 0) & (s <= 1)).all()
    assert (s[:5] >= 0.5).all()  # the outliers alert
    assert 0.005 < m.predict(X).mean() < 0.02  # about 1 % alert at the 0.99 quantile


def test_get_params_clone_and_hash():
    m = small(learning_rate=0.2)
    assert m.get_params()["learning_rate"] == 0.2
    c = clone(m)
    assert c.get_params() == m.get_params()
    assert model_hash(m) == model_hash(clone(m))
    assert model_hash(m) != model_hash(small(learning_rate=0.3))
    assert len(model_hash(m)) == 64


def test_calibrate_maps_threshold_to_target_monotonically():
    raw = np.linspace(0, 1, 101)
    out = calibrate(raw, 0.2, 0.8)
    assert out[20] == pytest.approx(0.8)
    assert out[0] == 0.0 and out[-1] == pytest.approx(1.0)
    assert (np.diff(out) >= 0).all()


def test_model_params_read_from_config_section_with_defaults():
    params = model_params({"model": {"max_iter": 7, "threshold": 0.8}})
    assert params["max_iter"] == 7
    assert params["learning_rate"] == 0.1
    assert "threshold" not in params
    assert model_params(DetectionConfig.load())["random_state"] == 0


def test_score_transactions_on_a_graph():
    from aml.enclave.detect.graph import TransactionGraph
    from aml.tools.synth import generate

    transactions, _ = generate(banks=3, accounts=300, days=20, seed=1)
    config = DetectionConfig.load()
    graph = TransactionGraph.from_table(transactions, config)
    scores, digest = score_transactions(graph, [], config)
    assert scores.shape == (len(graph.edges),)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert len(digest) == 64
    target = float(config.model.get("threshold", 0.5))
    labels = graph.edges["label"].to_numpy()
    flagged = scores >= target
    # trained and scored on the same labelled edges: alerts should be mostly laundering
    assert labels[flagged].mean() > 0.5


def test_threshold_is_chosen_on_the_given_rows_only():
    """The pipeline passes the rows no typology covers: the cut-off is tuned on those."""
    X, y = separable()
    full = small().fit(X, y)
    same = small().fit(X, y, threshold_rows=np.ones(len(y), bool))
    assert same.threshold_ == full.threshold_
    clear = np.abs(X[:, 0] + 0.5 * X[:, 1] - 2.3) > 0.6  # rows far from the class boundary
    restricted = small().fit(X, y, threshold_rows=clear)
    assert restricted.threshold_ != full.threshold_
    # training itself is unchanged: same booster, same raw scores
    assert np.array_equal(restricted.raw_score(X), full.raw_score(X))
