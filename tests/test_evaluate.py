"""`aml evaluate`: exact metrics on a hand-made case, and a small end-to-end run."""

from __future__ import annotations

import json
from argparse import Namespace

import pandas as pd
import pytest

from aml.tools.evaluate import evaluate, evaluate_command, format_report, score_predictions


def test_score_predictions_exact_values():
    scored = pd.DataFrame({"txn_id": ["t1", "t2", "t3", "t4", "t5", "t6"],
                           "label": [1, 1, 1, 0, 0, 0]})
    alerts = pd.DataFrame({
        "alert_id": ["a1", "a1", "a2", "a2", "a3", "a4"],
        "bank": ["B1"] * 6,
        "pattern": ["fan_out", "fan_out", "model", "model", "model", "cycle"],
        # h1 is history: outside the scored part, it must not count
        "txn_id": ["t1", "t4", "t1", "t2", "t5", "h1"],
    })
    patterns = pd.DataFrame({"pattern_id": ["P1", "P1", "P2", "P0"],
                             "pattern": ["fan_out", "fan_out", "cycle", "cycle"],
                             "txn_id": ["t1", "t2", "t3", "h1"]})
    r = score_predictions(scored, alerts, patterns)
    # predicted {t1, t2, t4, t5}, laundering {t1, t2, t3}: tp 2
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert (r["predicted"], r["laundering"], r["true_positives"]) == (4, 3, 2)
    assert r["alerts"] == 3
    assert r["per_detector"]["fan_out"]["precision"] == pytest.approx(0.5)
    assert r["per_detector"]["model"]["precision"] == pytest.approx(2 / 3)
    assert r["per_detector"]["model"]["recall"] == pytest.approx(2 / 3)
    assert "cycle" not in r["per_detector"]  # its only txn is history
    assert r["per_typology"]["fan_out"] == {"transactions": 2, "recall": 1.0, "instances": 1,
                                            "instance_recall": 1.0}
    assert r["per_typology"]["cycle"]["recall"] == 0.0
    assert r["per_typology"]["cycle"]["transactions"] == 1


def test_score_predictions_counts_disguised_laundering_outside_patterns():
    scored = pd.DataFrame({"txn_id": ["t1", "t2"], "label": [1, 1]})
    alerts = pd.DataFrame({"alert_id": ["a"], "bank": ["B"], "pattern": ["model"], "txn_id": ["t2"]})
    patterns = pd.DataFrame({"pattern_id": ["P1"], "pattern": ["cycle"], "txn_id": ["t1"]})
    r = score_predictions(scored, alerts, patterns)
    assert r["per_typology"]["(no pattern)"]["recall"] == 1.0
    assert r["per_typology"]["cycle"]["recall"] == 0.0


def test_no_alerts_gives_zeros():
    scored = pd.DataFrame({"txn_id": ["t1"], "label": [1]})
    empty = pd.DataFrame({"alert_id": [], "bank": [], "pattern": [], "txn_id": []})
    r = score_predictions(scored, empty, pd.DataFrame({"pattern_id": [], "pattern": [], "txn_id": []}))
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from aml.tools.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, banks=3, accounts=300, days=20, seed=2)
    return out


def test_evaluate_small_synth_joint_and_silo(synth_dir):
    import pyarrow.parquet as pq

    from aml.enclave.detect.config import DetectionConfig

    tx = pq.read_table(synth_dir / "transactions.parquet")
    pat = pq.read_table(synth_dir / "patterns.parquet")
    r = evaluate(tx, pat, DetectionConfig.load(), silo=True)
    assert r["split"]["scored_transactions"] > 0
    assert r["split"]["history_transactions"] > r["split"]["scored_transactions"]
    for mode in ("joint", "silo"):
        for key in ("precision", "recall", "f1"):
            assert 0.0 <= r[mode][key] <= 1.0
        assert set(r[mode]) >= {"per_typology", "per_detector", "alerts", "predicted", "seconds"}
        for v in r[mode]["per_typology"].values():
            assert 0.0 <= v["recall"] <= 1.0
    assert r["joint"]["laundering"] == r["split"]["scored_laundering"] > 0
    assert r["joint"]["recall"] > 0.0
    assert "joint_over_silo_f1" in r
    assert "joint" in format_report(r) and "silo" in format_report(r)


def test_evaluate_command_writes_json(synth_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = evaluate_command(Namespace(data=str(synth_dir), config=None, json=str(out), no_silo=True))
    assert rc == 0
    report = json.loads(out.read_text())
    assert "silo" not in report and 0.0 <= report["joint"]["f1"] <= 1.0
    assert "precision" in capsys.readouterr().out


def test_evaluate_rejects_missing_data(tmp_path):
    from aml.core.errors import BadInputError

    with pytest.raises(BadInputError):
        evaluate_command(Namespace(data=str(tmp_path), config=None, json=None, no_silo=True))


def test_members_file_limits_the_consortium(synth_dir, tmp_path):
    members = tmp_path / "members.txt"
    members.write_text("B01\nB02\n")
    out = tmp_path / "eval.json"
    rc = evaluate_command(Namespace(data=str(synth_dir), config=None, json=str(out), no_silo=True,
                                    members_file=str(members)))
    assert rc == 0
    assert json.loads(out.read_text())["members"] == ["B01", "B02"]


def test_evaluate_worlds_on_tiny_data(capsys):
    """`aml evaluate --worlds`: the same detection on each world, worst world first."""
    args = Namespace(data=None, worlds="original,amlsim", rows=6_000, days=14, seed=1,
                     config=None, json=None, no_silo=True, members_file=None)
    assert evaluate_command(args) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()
    assert table[0].split()[:2] == ["world", "rows"]
    f1 = [float(line.split()[5]) for line in table[1:]]
    assert {line.split()[0] for line in table[1:]} == {"original", "amlsim"}
    assert f1 == sorted(f1)  # worst first
    assert "=== world original" in out and "=== world amlsim" in out
