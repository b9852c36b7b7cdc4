"""Baselines and the run's sanity warnings (issue 21, item 5): each warning fires on a case built for it and
stays silent on a normal run (the binary pinned run, test_binary_pinned.py, and the 6-class run, test_kway.py,
both assert `warnings == []`)."""

import json

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.bench.synthetic import write_cache
from pipeline.train.baselines import baselines
from pipeline.train.fit import train_head
from pipeline.train.run_warnings import run_warnings
from tests.helpers import SMALL_FLAGS, small_head, small_splits, small_train

BINARY = ("fake", "real")


def test_majority_baseline_equals_scikit_learn_on_a_constant_prediction():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    train, labels = rng.integers(0, 4, 500) ** 2 % 5, rng.integers(0, 5, 300)  # class 1 most frequent in train
    names = tuple(f"c{i}" for i in range(5))
    majority = baselines(labels, train, names)["majority"]
    constant = np.full(labels.size, np.bincount(train).argmax())
    assert majority["class"] == names[constant[0]]
    assert majority["accuracy"] == pytest.approx(accuracy_score(labels, constant), abs=1e-12)
    assert majority["f1_macro"] == pytest.approx(
        f1_score(labels, constant, average="macro", labels=range(5), zero_division=0), abs=1e-12)


def test_stratified_baseline_is_the_mean_of_random_guessing_in_train_shares():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    train, labels = rng.choice(3, 2000, p=[0.6, 0.3, 0.1]), rng.choice(3, 1000, p=[0.5, 0.3, 0.2])
    stratified = baselines(labels, train, ("a", "b", "c"))["stratified"]
    shares = np.bincount(train) / train.size
    guesses = [rng.choice(3, labels.size, p=shares) for _ in range(400)]
    assert stratified["accuracy"] == pytest.approx(np.mean([np.mean(g == labels) for g in guesses]), abs=3e-3)
    assert stratified["f1_macro"] == pytest.approx(np.mean([f1_score(labels, g, average="macro") for g in guesses]),
                                                   abs=3e-3)


def _metrics(accuracy, interval, majority):
    test = {"accuracy": accuracy, "ci95": {"accuracy": interval}, "decision": {"source": "default"},
            "baselines": {"majority": {"class": "real", "accuracy": majority, "f1_macro": 0.4}}}
    return {"val": test, "test": test}


def test_one_class_only_fires_and_two_classes_are_silent():
    many = np.full(60, 30)
    fired = run_warnings(_metrics(0.9, [0.85, 0.95], 0.5), np.ones(80, dtype=int), np.repeat([0, 1], many[:2]),
                         BINARY)
    assert fired == ["warning: the model predicts one class only on test: all 80 rows real; it tells nothing "
                     "apart (check the labels, --class-weights and --lr)"]
    assert run_warnings(_metrics(0.9, [0.85, 0.95], 0.5), np.arange(80) % 2, np.repeat([0, 1], 30), BINARY) == []


def test_accuracy_interval_not_above_the_majority_baseline_fires():
    two = np.arange(80) % 2
    fired = run_warnings(_metrics(0.74, [0.69, 0.79], 0.70), two, np.repeat([0, 1], 30), BINARY)
    assert len(fired) == 1 and "not above the majority baseline 0.700 (always real" in fired[0]
    assert run_warnings(_metrics(0.8, [0.71, 0.86], 0.70), two, np.repeat([0, 1], 30), BINARY) == []


def test_too_small_a_val_split_names_the_rule():
    two, small_val = np.arange(80) % 2, np.repeat([0, 1], [40, 12])
    fired = run_warnings(_metrics(0.9, [0.85, 0.95], 0.5), two, small_val, BINARY)
    assert fired == ["warning: fewer than 30 rows of class real in val (12): threshold 0.5, not tuned (the rule: "
                     "the threshold tuned on val when val has at least 30 rows of each class, else 0.5)"]
    six = tuple(f"c{i}" for i in range(6))
    six_val = np.repeat(np.arange(6), [40, 40, 40, 40, 40, 10])
    assert run_warnings(_metrics(0.9, [0.85, 0.95], 0.2), two, six_val, six) == []  # argmax: nothing to tune
    calibrated = run_warnings(_metrics(0.9, [0.85, 0.95], 0.2), two, six_val, six, calibrate="temperature")
    assert len(calibrated) == 1 and "fewer than 30 rows of class c5 in val (10): the temperature" in calibrated[0]


def test_a_head_that_learns_nothing_is_flagged():
    splits = small_splits("text", rows=1500, seed=4, real_share=0.15)  # val: 22 real rows, so threshold 0.5
    rng = np.random.default_rng(0)
    for split in splits.values():
        rng.shuffle(split.labels)  # no signal left; the balance stays
    run = train_head(splits, small_head(), small_train(class_weights="none", bootstrap=200, max_epochs=5))
    assert run.metrics["test"]["warnings"] == run.warnings
    assert any("predicts one class only on test" in line for line in run.warnings), run.warnings
    assert any("not above the majority baseline" in line for line in run.warnings), run.warnings


def test_train_head_prints_writes_and_shows_the_warnings(tmp_path, capsys):
    cache = tmp_path / "cache"
    write_cache(cache, small_splits("both", rows=400, seed=1))  # 40 val rows: fewer than 30 of each class
    out = tmp_path / "run"
    assert main(["train-head", "--cache-dir", str(cache), "--out", str(out), *SMALL_FLAGS, "--bootstrap", "100"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    small = [line for line in metrics["warnings"] if "rows of class" in line and "threshold 0.5, not tuned" in line]
    printed = capsys.readouterr().out
    assert small and all(line in printed for line in metrics["warnings"])
    assert metrics["test"]["warnings"] == metrics["warnings"]
    page = (out / "report.html").read_text()
    assert 'id="warnings-banner"' in page and "threshold 0.5, not tuned" in page
