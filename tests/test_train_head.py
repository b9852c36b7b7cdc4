import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.bench.synthetic import write_cache
from pipeline.embed.cache import CachedSplit
from pipeline.errors import UserError
from pipeline.model.head import FusionHead
from pipeline.train.fit import fit, load_cached_splits, predict, to_features, train_head
from pipeline.train.losses import class_weights
from pipeline.train.metrics import compute_metrics
from tests.helpers import small_head, small_splits, small_train


def _strip_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("metric", ["f1_macro", "loss"])
def test_early_stopping_waits_patience_epochs_and_restores_the_best(metric):
    splits = small_splits("text", rows=1500, seed=3)
    splits["train"].labels[:] = np.random.default_rng(0).integers(0, 2, len(splits["train"]))  # noise: overfits
    config = small_train(patience=3, max_epochs=40, metric=metric, lr=1e-2)
    torch.manual_seed(0)
    model = FusionHead(small_head())
    data = {name: (to_features(splits[name], "cpu"), torch.from_numpy(splits[name].labels)) for name in splits}
    weights = class_weights(splits["train"].labels)
    result = fit(model, data["train"], data["val"], config, weights)
    scores = [row["val_loss" if metric == "loss" else f"val_{metric}"] for row in result.history]
    assert len(result.history) == result.best_epoch + config.patience < config.max_epochs
    best = min(scores) if metric == "loss" else max(scores)
    assert scores.index(best) + 1 == result.best_epoch  # the first epoch reaching the best score
    prob, loss = predict(model, *data["val"], weights)
    restored = loss if metric == "loss" else compute_metrics(splits["val"].labels, prob)[metric]
    assert restored == pytest.approx(best, abs=1e-6)


def test_same_seed_same_metrics_other_seed_other_metrics():
    splits = small_splits("both", rows=1500)
    first, second = (train_head(splits, small_head(), small_train(seed=7)) for _ in range(2))
    assert first.metrics == second.metrics
    assert _strip_seconds(first.fit.history) == _strip_seconds(second.fit.history)
    other = train_head(splits, small_head(), small_train(seed=8))
    assert other.metrics != first.metrics


def test_threshold_depends_on_validation_only():
    splits = small_splits("both", rows=1500)
    flipped = dict(splits)
    test = splits["test"]
    flipped["test"] = CachedSplit(test.ids, np.where(np.arange(len(test)) % 3 == 0, 1 - test.labels, test.labels),
                                  test.text_emb, test.image_emb)
    base, changed = (train_head(s, small_head(), small_train(seed=1)) for s in (splits, flipped))
    assert base.metrics["val"] == changed.metrics["val"]
    assert base.metrics["test"]["tuned"]["threshold"] == changed.metrics["test"]["tuned"]["threshold"]
    assert _strip_seconds(base.fit.history) == _strip_seconds(changed.fit.history)
    np.testing.assert_array_equal(base.predictions["test"]["prob_real"], changed.predictions["test"]["prob_real"])
    assert base.metrics["test"]["f1_macro"] != changed.metrics["test"]["f1_macro"]


def test_fusion_beats_each_modality_when_the_label_needs_both():
    splits = small_splits("xor", rows=4000, strength=4.0)
    scores = {modalities: train_head(splits, small_head(modalities=modalities), small_train())
              .metrics["test"]["f1_macro"] for modalities in ("text", "image", "text,image")}
    assert scores["text,image"] > max(scores["text"], scores["image"]) + 0.2, scores


def test_image_head_stays_at_chance_when_only_text_carries_signal():
    splits = small_splits("text", rows=4000, strength=4.0)
    text = train_head(splits, small_head(modalities="text"), small_train()).metrics["test"]
    image = train_head(splits, small_head(modalities="image"), small_train()).metrics["test"]
    assert text["f1_macro"] > 0.8
    assert abs(image["roc_auc"] - 0.5) < 0.1 and image["f1_macro"] < 0.6, image


def test_one_class_training_split_is_a_clear_error():
    splits = small_splits("text", rows=500)
    splits["train"].labels[:] = 1
    with pytest.raises(UserError, match="no fake rows"):
        train_head(splits, small_head(), small_train())


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no manifest"):
        load_cached_splits(tmp_path)


def test_cache_of_another_format_is_a_clear_error(xor_cache, tmp_path):
    manifest = json.loads((xor_cache / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(dict(manifest, format_version=0)))
    with pytest.raises(UserError, match="cache format 0.*re-embed"):
        load_cached_splits(tmp_path)


def test_cache_missing_a_split_is_a_clear_error(tmp_path):
    splits = small_splits("text", rows=300)
    write_cache(tmp_path, {"train": splits["train"], "val": splits["val"]})
    with pytest.raises(UserError, match="no test split"):
        load_cached_splits(tmp_path)


def test_cache_with_one_class_validation_is_refused_whatever_the_metric(tmp_path):
    """It used to train on f1 with every val metric 0 and a threshold tuned on nothing (issue 19)."""
    splits = small_splits("text", rows=600)
    val = splits["val"]
    splits["val"] = CachedSplit(val.ids, np.zeros_like(val.labels), val.text_emb, val.image_emb)
    for metric in ("f1_macro", "roc_auc"):
        with pytest.raises(UserError, match="the val split has one class only: no real rows"):
            train_head(splits, small_head(), replace(small_train(max_epochs=3), metric=metric))
