"""Stage two for K classes (issue 21): a synthetic 6-class cache in which text and image each carry half of
every class's evidence; K-way metrics against scikit-learn; the run folder, report and ablation with 6
classes; class weights, stopping metrics and the head's K outputs."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.__main__ import main
from pipeline.bench.synthetic import make_splits, write_cache
from pipeline.errors import UserError
from pipeline.train.bootstrap import multiclass_bootstrap_ci, paired_difference, weighted_multiclass_metrics
from pipeline.train.calibration import fit_temperature, fit_temperature_logits
from pipeline.train.fit import train_head
from pipeline.train.losses import class_weights
from pipeline.train.multiclass import multiclass_metrics
from tests.helpers import IMAGE_DIM, SMALL_FLAGS, TEXT_DIM, small_head, small_train

NAMES = ("true", "satire", "misleading", "imposter", "false_connection", "manipulated")


def six_way(rows=3000, seed=0, signal="both"):
    return make_splits(rows, TEXT_DIM, IMAGE_DIM, signal=signal, seed=seed, num_classes=6, val_share=0.15,
                       test_share=0.15)


@pytest.fixture(scope="module")
def six_way_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("six") / "cache"
    write_cache(cache, six_way(), class_names=NAMES)
    return cache


def random_probs(rows=400, k=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, rows)
    logits = rng.standard_normal((rows, k)) + 1.5 * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def test_k_way_metrics_equal_scikit_learn():
    from sklearn import metrics as sk
    from sklearn.preprocessing import label_binarize

    labels, probs = random_probs()
    pred = probs.argmax(axis=1)
    ours = multiclass_metrics(labels, probs, NAMES)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred), abs=1e-9)
    for average in ("macro", "weighted"):
        assert ours[f"f1_{average}"] == pytest.approx(sk.f1_score(labels, pred, average=average), abs=1e-9)
    assert ours["precision"] == pytest.approx(sk.precision_score(labels, pred, average="macro"), abs=1e-9)
    assert ours["recall"] == pytest.approx(sk.recall_score(labels, pred, average="macro"), abs=1e-9)
    precision, recall, f1, support = sk.precision_recall_fscore_support(labels, pred, labels=range(6))
    for index, name in enumerate(NAMES):
        scores = ours["per_class"][name]
        assert [scores["precision"], scores["recall"], scores["f1"]] == pytest.approx(
            [precision[index], recall[index], f1[index]], abs=1e-9)
        assert scores["support"] == support[index] and ours[f"f1_{name}"] == pytest.approx(f1[index], abs=1e-9)
    assert ours["confusion"] == sk.confusion_matrix(labels, pred, labels=range(6)).tolist()
    assert ours["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-9)
    onehot = label_binarize(labels, classes=range(6))
    assert ours["pr_auc"] == pytest.approx(sk.average_precision_score(onehot, probs, average="macro"), abs=1e-9)
    assert ours["brier"] == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, axis=1)), abs=1e-12)
    # Top-label ECE, by a plain loop over 15 equal-width bins of the top probability.
    confidence, hits = probs.max(axis=1), (pred == labels)
    bins = np.minimum((confidence * 15).astype(int), 14)
    ece = sum(abs(hits[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).sum()
              for b in range(15) if (bins == b).any()) / labels.size
    assert ours["ece"] == pytest.approx(ece, abs=1e-12)


def test_k_way_bootstrap_counts_match_the_point_estimates_and_intervals_hold_them():
    labels, probs = random_probs(seed=1)
    point = multiclass_metrics(labels, probs, NAMES)
    ones = weighted_multiclass_metrics(np.ones((1, labels.size)), labels, probs)
    for name, values in ones.items():
        assert values[0] == pytest.approx(point[name], abs=1e-9), name
    intervals = multiclass_bootstrap_ci(labels, probs, resamples=300, seed=0)
    for name, (low, high) in intervals.items():
        assert low < point[name] < high, name


def test_paired_difference_takes_k_way_probabilities():
    labels, good = random_probs(seed=2)
    bad = np.full_like(good, 1 / 6)
    bad[:, 0] += 1e-3  # always class 0
    result = paired_difference(labels, [(bad, None, good, None)], ("f1_macro", "accuracy"), 300, 0)
    good_f1 = multiclass_metrics(labels, good, NAMES)["f1_macro"]
    bad_f1 = multiclass_metrics(labels, bad, NAMES)["f1_macro"]
    assert result["f1_macro"]["diff"] == pytest.approx(good_f1 - bad_f1, abs=1e-9) and result["f1_macro"]["low"] > 0


def test_full_logit_temperature_is_the_margin_temperature_for_two_classes():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    logits = rng.standard_normal((500, 2)) * 3 + np.eye(2)[labels] * 2
    assert fit_temperature_logits(logits, labels) == pytest.approx(
        fit_temperature(logits[:, 1] - logits[:, 0], labels), rel=1e-4)


def test_fusion_beats_each_modality_on_six_classes():
    splits = six_way()
    scores = {}
    for modalities in (("text", "image"), ("text",), ("image",)):
        run = train_head(splits, small_head(modalities=modalities, num_classes=6), small_train(bootstrap=0),
                         class_names=NAMES)
        scores[modalities] = run.metrics["test"]["f1_macro"]
    assert scores[("text", "image")] > max(scores[("text",)], scores[("image",)]) + 0.05, scores


def test_six_class_run_folder_report_and_predictions(six_way_cache, tmp_path):
    out = tmp_path / "run"
    assert main(["train-head", "--cache-dir", str(six_way_cache), "--out", str(out), *SMALL_FLAGS,
                 "--bootstrap", "100", "--calibrate", "temperature", "--metric", "f1_satire"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert set(test["per_class"]) == set(NAMES) and np.array(test["confusion"]).shape == (6, 6)
    assert np.array(test["confusion"]).sum() == test["rows"] and "tuned" not in test
    assert test["decision"]["source"] == "argmax" and metrics["warnings"] == []
    assert test["baselines"]["majority"]["accuracy"] < test["ci95"]["accuracy"][0]
    assert 0.05 < test["calibration"]["temperature"] < 20
    frame = pd.read_csv(out / "predictions_test.csv")
    probs = frame[[f"prob_{name}" for name in NAMES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-9)
    assert (frame["pred"] == probs.argmax(axis=1)).all()
    assert (frame["pred_name"] == np.array(NAMES)[frame["pred"]]).all()
    assert json.loads((out / "run.json").read_text())["class_names"] == list(NAMES)
    assert json.loads((out / "head" / "head_config.json").read_text())["head"]["num_classes"] == 6
    page = (out / "report.html").read_text()
    assert 'id="per-class-test"' in page and 'id="confusion-test"' in page and 'id="baselines"' in page
    assert all(f"pred {name}" in page for name in NAMES) and "argmax" in page


def test_num_classes_is_no_flag_and_a_mismatch_is_refused(six_way_cache, tmp_path):
    with pytest.raises(SystemExit):  # argparse: no such flag, K comes from the cache
        main(["train-head", "--cache-dir", str(six_way_cache), "--out", str(tmp_path / "r"), *SMALL_FLAGS,
              "--num-classes", "2"])
    with pytest.raises(UserError, match="2 outputs but the labels have 6 classes"):
        train_head(six_way(600), small_head(), small_train(), class_names=NAMES)


def test_stopping_metric_must_name_a_class(six_way_cache, tmp_path):
    assert main(["train-head", "--cache-dir", str(six_way_cache), "--out", str(tmp_path / "r"), *SMALL_FLAGS,
                 "--metric", "f1_fake"]) == 2  # a UserError, named before any epoch
    with pytest.raises(UserError, match="f1_satire"):
        train_head(six_way(600), small_head(num_classes=6), small_train(metric="f1_real"), class_names=NAMES)


def test_class_weights_for_k_classes():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 3)
    balanced = class_weights(labels, "balanced", NAMES[:3])
    assert torch.allclose(balanced, torch.tensor([12 / 18, 12 / 9, 12 / 9]))
    assert torch.equal(class_weights(labels, "auto", NAMES[:3]), balanced)
    assert class_weights(labels, "1,2,3", NAMES[:3]).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(UserError, match="gives 2 numbers for 3 classes"):
        class_weights(labels, "1,2", NAMES[:3])
    with pytest.raises(UserError, match="no imposter rows"):
        class_weights(np.array([0, 1, 2, 4, 5]), "balanced", NAMES)


def test_ablation_with_six_classes(six_way_cache, tmp_path):
    out = tmp_path / "ablation"
    assert main(["ablate", "--cache-dir", str(six_way_cache), "--out", str(out), *SMALL_FLAGS, "--seeds", "0",
                 "--fusions", "concat", "--bootstrap", "100", "--no-report"]) == 0
    table = pd.read_csv(out / "ablation.csv")
    assert set(table["modalities"]) == {"text", "image", "text+image"}
    fused = table[table["modalities"] == "text+image"].iloc[0]
    assert fused["test_f1_macro_diff"] > 0 and "test_f1_satire" in table.columns


def test_two_classes_with_other_names_keep_the_binary_keys_and_add_their_own():
    splits = make_splits(1200, TEXT_DIM, IMAGE_DIM, signal="both", seed=1)
    run = train_head(splits, small_head(), small_train(metric="f1_yes", bootstrap=0), class_names=("no", "yes"))
    test = run.metrics["test"]
    assert set(test["per_class"]) == {"no", "yes"} and test["f1_yes"] == test["f1_real"]
    assert test["f1_no"] == test["f1_fake"] and "threshold" in test["tuned"]
    rows = run.predictions["test"]
    np.testing.assert_allclose(rows["prob_yes"], rows["prob_real"])
    np.testing.assert_allclose(rows["prob_no"] + rows["prob_yes"], 1)
    assert set(rows["pred_name"]) <= {"no", "yes"}


def test_a_class_absent_from_train_is_named():
    splits = six_way(900)
    train = splits["train"]
    splits["train"] = train.subset(np.flatnonzero(train.labels != 3))
    with pytest.raises(UserError, match="no rows of class imposter"):
        train_head(splits, small_head(num_classes=6), small_train(), class_names=NAMES)


def test_degenerate_k_way_temperatures_are_not_used():
    from pipeline.train.calibration import apply_temperature_logits, fit_usable_temperature_logits

    labels = np.arange(60) % 3
    separable = np.eye(3)[labels] * 5.0  # every row already right: the NLL falls all the way to T -> 0
    used, fitted, warning = fit_usable_temperature_logits(separable, labels)
    assert used == 1.0 and fitted < 1 and "every validation row is already on its right side" in warning
    noise = np.random.default_rng(0).standard_normal((60, 3))
    noise[np.arange(60), labels] -= 1.0  # the logits point away from the labels: no signal
    assert "carry no signal" in fit_usable_temperature_logits(noise, labels)[2]
    mixed = separable + np.random.default_rng(1).standard_normal((60, 3)) * 4
    used, fitted, warning = fit_usable_temperature_logits(mixed, labels)
    assert warning is None and used == fitted
    np.testing.assert_allclose(apply_temperature_logits(mixed, used).sum(axis=1), 1)
