"""Trustworthy evaluation: bootstrap intervals, paired comparisons, calibration, --eval-ids."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.train.bootstrap import bootstrap_ci, paired_difference, weighted_metrics
from pipeline.train.calibration import apply_temperature, expected_calibration_error, fit_temperature
from pipeline.train.metrics import compute_metrics
from tests.helpers import SMALL_FLAGS


def test_weighted_metrics_equal_the_metrics_of_the_resampled_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    prob = np.round(np.clip(0.3 * labels + 0.7 * rng.random(300), 0, 1), 2)  # rounded: ties in the ranking
    counts = np.bincount(rng.integers(0, 300, 300), minlength=300)
    rows = np.repeat(np.arange(300), counts)
    got = weighted_metrics(counts[None].astype(float), labels, prob, 0.5)
    expected = compute_metrics(labels[rows], prob[rows])
    for name, values in got.items():
        assert values[0] == pytest.approx(expected[name], abs=1e-12), name


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    p, n, repetitions = 0.8, 400, 200
    covered, widths = 0, []
    for seed in range(repetitions):
        rng = np.random.default_rng(1000 + seed)
        correct = rng.random(n) < p
        labels = np.ones(n, dtype=np.int64)
        prob = np.where(correct, 0.9, 0.1)
        low, high = bootstrap_ci(labels, prob, resamples=1000, seed=seed, names=("accuracy",))["accuracy"]
        covered += low <= p <= high
        widths.append(high - low)
    assert 0.90 <= covered / repetitions <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.1)


def test_bootstrap_is_seeded_and_undefined_auc_is_none():
    labels, prob = np.array([1, 1, 1, 1]), np.array([0.9, 0.2, 0.7, 0.6])
    first = bootstrap_ci(labels, prob, seed=3)
    assert first == bootstrap_ci(labels, prob, seed=3)
    assert first["roc_auc"] is None and first["accuracy"] is not None


def test_paired_difference_of_identical_heads_is_zero_with_p_one():
    rng = np.random.default_rng(0)
    labels, prob = rng.integers(0, 2, 500), rng.random(500)
    result = paired_difference(labels, [(prob, 0.5, prob, 0.5)])
    for values in result.values():
        assert values == {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}


def test_paired_difference_detects_a_planted_five_point_gain():
    rng = np.random.default_rng(1)
    n = 2000
    labels = rng.integers(0, 2, n)
    correct_a = rng.random(n) < 0.75
    fixed = rng.choice(np.flatnonzero(~correct_a), size=n // 20, replace=False)  # +5 points for B
    correct_b = correct_a.copy()
    correct_b[fixed] = True

    def prob(correct):
        return np.where(correct == (labels == 1), 0.8, 0.2)

    result = paired_difference(labels, [(prob(correct_a), 0.5, prob(correct_b), 0.5)])
    assert result["accuracy"]["diff"] == pytest.approx(0.05)
    assert result["accuracy"]["low"] > 0 and result["accuracy"]["p"] < 0.01
    assert result["f1_macro"]["low"] > 0


def test_temperature_scaling_undoes_an_overconfident_head():
    rng = np.random.default_rng(0)
    margins = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-margins))).astype(np.int64)  # calibrated by construction
    val, test = slice(0, 10000), slice(10000, None)
    honest = apply_temperature(margins[test], 1.0)
    overconfident = apply_temperature(3 * margins[test], 1.0)
    before = expected_calibration_error(labels[test], honest)
    assert expected_calibration_error(labels[test], overconfident) > before + 0.05
    temperature = fit_temperature(3 * margins[val], labels[val])
    assert temperature == pytest.approx(3, rel=0.1)
    calibrated = apply_temperature(3 * margins[test], temperature)
    assert expected_calibration_error(labels[test], calibrated) < 0.02
    assert np.array_equal(calibrated > 0.5, overconfident > 0.5)  # accuracy unchanged


def test_train_head_reports_intervals_calibration_and_eval_ids(xor_cache, tmp_path, capsys):
    from pipeline.embed.cache import load_split

    test_ids = load_split(xor_cache, "test").ids
    ids_file = tmp_path / "ids.tsv"
    ids_file.write_text("split\tid\n" + "".join(f"test\t{key}\n" for key in test_ids[:120]))
    ids_file.write_text(ids_file.read_text() + "".join(f"val\t{key}\n" for key in load_split(xor_cache, "val").ids))
    out = tmp_path / "run"
    assert main(["train-head", "--cache-dir", str(xor_cache), "--out", str(out), "--max-epochs", "4",
                 "--calibrate", "temperature", "--bootstrap", "200", "--eval-ids", str(ids_file), *SMALL_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "Test (120 rows, eval-ids only; 95% bootstrap intervals): accuracy 0." in printed
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["rows"] == 120 and test["eval_ids"]["kept"] == 120 and test["eval_ids"]["of"] == 200
    low, high = test["ci95"]["f1_macro"]
    assert low <= test["f1_macro"] <= high and set(test["tuned"]["ci95"]) == set(test["ci95"])
    assert {"ece", "brier"} <= set(test) and test["calibration"]["method"] == "temperature"
    temperature = json.loads((out / "head" / "head_config.json").read_text())["extra"]["calibration"]["temperature"]
    assert temperature == test["calibration"]["temperature"] > 0
    assert (out / "reliability.png").stat().st_size > 0
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert len(predictions) == 120


def test_calibration_does_not_change_accuracy_at_half(xor_cache, tmp_path):
    results = {}
    for mode in ("off", "temperature"):
        out = tmp_path / mode
        assert main(["train-head", "--cache-dir", str(xor_cache), "--out", str(out), "--max-epochs", "3",
                     "--bootstrap", "0", "--calibrate", mode, *SMALL_FLAGS]) == 0
        results[mode] = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert results["off"][split]["accuracy"] == results["temperature"][split]["accuracy"]
        assert "ci95" not in results["off"][split]


def test_bad_flags_name_the_fix(xor_cache, tmp_path, capsys):
    assert main(["train-head", "--cache-dir", str(xor_cache), "--calibrate", "platt", "--bootstrap", "-1"]) == 2
    error = capsys.readouterr().err
    assert "--calibrate 'platt'" in error and "off, temperature" in error and "--bootstrap -1" in error
    empty = tmp_path / "empty.txt"
    empty.write_text("nobody\n")
    assert main(["train-head", "--cache-dir", str(xor_cache), "--out", str(tmp_path / "r"),
                 "--eval-ids", str(empty), *SMALL_FLAGS]) == 2
    assert "none of its ids is a val row" in capsys.readouterr().err


def test_ablate_compares_every_variant_with_the_reference(xor_cache, tmp_path, capsys):
    out = tmp_path / "ablation"
    # xor's label needs both halves of every row: dropping one in training (modality dropout) would only hide
    # the fusion gain this test looks for.
    assert main(["ablate", "--cache-dir", str(xor_cache), "--out", str(out), "--fusions", "concat",
                 "--seeds", "0", "1", "--max-epochs", "3", "--patience", "1", "--bootstrap", "200",
                 "--modality-dropout", "0", *SMALL_FLAGS]) == 0
    runs = pd.read_csv(out / "ablation.csv")
    assert {"reference", "test_f1_macro_diff", "test_f1_macro_diff_low", "test_f1_macro_diff_high",
            "test_f1_macro_diff_p", "test_accuracy_diff_p"} <= set(runs.columns)
    text = runs[runs["modalities"] == "text"]
    assert (text["test_f1_macro_diff"] == 0).all() and (text["test_f1_macro_diff_p"] == 1).all()
    pooled = pd.read_csv(out / "comparisons.csv")
    assert len(pooled) == 3 and (pooled["reference"] == "text").all()
    table = (out / "ablation.md").read_text()
    assert "Δ test f1_macro vs text [95% CI]" in table and "| reference |" in table
    fused = pooled[pooled["modalities"] == "text+image"].iloc[0]
    assert fused["test_f1_macro_diff_low"] > 0  # xor needs both modalities: fusion is clearly better
    assert "* |" in table
    assert main(["ablate", "--cache-dir", str(xor_cache), "--out", str(tmp_path / "x"), "--reference",
                 "text+image/gated", "--fusions", "concat", *SMALL_FLAGS]) == 2
    assert "not a variant of this grid; use one of: text, image, text+image/concat" in capsys.readouterr().err


def test_eval_ids_keep_the_half_posts_presence(tmp_path):
    """--eval-ids cuts val and test to the listed rows and keeps each row's presence masks with it."""
    from pipeline.bench.synthetic import write_cache
    from tests.helpers import small_splits

    splits = small_splits("both", rows=1500, missing_image=0.3)
    write_cache(tmp_path / "cache", splits)
    listed = list(splits["test"].ids[::2])
    lines = ["split\tid"] + [f"val\t{key}" for key in splits["val"].ids] + [f"test\t{key}" for key in listed]
    (tmp_path / "ids.txt").write_text("\n".join(lines) + "\n")
    assert main(["train-head", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 "--eval-ids", str(tmp_path / "ids.txt"), "--max-epochs", "2", "--no-report", *SMALL_FLAGS]) == 0
    groups = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["by_presence"]
    text_only = int((~splits["test"].has_image[::2]).sum())
    assert text_only > 0 and groups["text_only"]["rows"] == text_only
    assert groups["both"]["rows"] == len(listed) - text_only
