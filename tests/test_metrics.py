import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from pipeline.train.metrics import compute_metrics, tune_threshold

REQUIRED = ("accuracy", "f1_macro", "f1_fake", "f1_real", "precision", "recall", "roc_auc", "pr_auc",
            "confusion_matrix", "loss", "threshold")


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    prob = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    metrics = compute_metrics(labels, prob, threshold=0.5, loss=0.25)
    pred = (prob > 0.5).astype(int)
    assert set(REQUIRED) <= set(metrics)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert metrics["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert metrics["f1_fake"] == pytest.approx(f1_score(labels, pred, pos_label=0))
    assert metrics["f1_real"] == pytest.approx(f1_score(labels, pred, pos_label=1))
    assert metrics["precision"] == pytest.approx(precision_score(labels, pred, average="macro"))
    assert metrics["recall"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert metrics["confusion_matrix"][1][1] == int(((labels == 1) & (pred == 1)).sum())
    assert metrics["loss"] == 0.25 and metrics["threshold"] == 0.5


def test_one_class_data_gives_null_auc_not_a_crash():
    metrics = compute_metrics(np.zeros(20, dtype=int), np.linspace(0, 1, 20))
    assert metrics["roc_auc"] is None and metrics["pr_auc"] is None
    json.dumps(metrics)  # JSON-able: None becomes null


def test_tuned_threshold_maximises_macro_f1():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    prob = np.clip(0.35 + 0.3 * labels + rng.normal(0, 0.15, 400), 0, 1)  # best cut is near 0.5, skewed low
    threshold = tune_threshold(labels, prob)
    best = compute_metrics(labels, prob, threshold)["f1_macro"]
    for other in np.linspace(0, 1, 51):
        assert compute_metrics(labels, prob, other)["f1_macro"] <= best + 1e-12


def test_tuned_threshold_separates_separable_data():
    labels = np.array([0, 0, 0, 1, 1])
    threshold = tune_threshold(labels, np.array([0.1, 0.2, 0.3, 0.35, 0.9]))
    assert 0.3 < threshold < 0.35
    assert compute_metrics(labels, [0.1, 0.2, 0.3, 0.35, 0.9], threshold)["accuracy"] == 1.0
