"""Classification metrics for the 2-way fake (0) / real (1) task, used by every stage.

Conventions:
- A row is predicted real when prob_real > threshold; at 0.5 this is the
  argmax of the two logits (a tie goes to fake, as argmax picks index 0).
- precision, recall: macro averages over fake and real (each class counts
  equally, matching f1_macro); per class as precision_fake, recall_real, ...
- roc_auc, pr_auc: threshold-free, with real as the positive class; pr_auc is
  average precision. Both are None (JSON null) when the data has one class.
- confusion_matrix: rows = true fake, true real; columns = predicted fake, real (also as `confusion`, the
  key of K-class runs, with `per_class` and `f1_weighted`: multiclass.class_table).
- ece (15 equal-width confidence bins) and brier: is prob_real a probability? (calibration.py)
- ci95 (score_probabilities only): {metric: [low, high]}, a seeded 95% percentile
  bootstrap over rows of accuracy, f1_macro, f1_fake, f1_real, roc_auc, pr_auc (bootstrap.py).
"""

import numpy as np

from pipeline.data.splits import CLASS_NAMES
from pipeline.runs.threshold import decide_from_labels
from pipeline.train.baselines import baselines
from pipeline.train.bootstrap import bootstrap_ci, with_interval
from pipeline.train.calibration import brier_score, expected_calibration_error
from pipeline.train.multiclass import class_table


def compute_metrics(labels, prob_real, threshold=0.5, loss=None, class_names=CLASS_NAMES):
    """Every binary metric of one split; `class_names` (the label column's two names) name `per_class` and
    add `f1_<name>` beside f1_fake and f1_real when they are other names."""
    # Imported here: scikit-learn takes seconds to import, and `python -m pipeline --help` imports this module.
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.asarray(labels, dtype=np.int64)
    prob_real = np.asarray(prob_real, dtype=np.float64)
    pred = (prob_real > threshold).astype(np.int64)
    confusion = np.bincount(2 * labels + pred, minlength=4).reshape(2, 2)  # [true, predicted]
    metrics = {"accuracy": _ratio(np.trace(confusion), confusion.sum())}
    for index, name in enumerate(CLASS_NAMES):
        true_positive = confusion[index, index]
        metrics[f"precision_{name}"] = _ratio(true_positive, confusion[:, index].sum())
        metrics[f"recall_{name}"] = _ratio(true_positive, confusion[index, :].sum())
        metrics[f"f1_{name}"] = _ratio(2 * true_positive, confusion[:, index].sum() + confusion[index, :].sum())
    for kind in ("precision", "recall", "f1"):
        metrics[f"{kind}_macro" if kind == "f1" else kind] = float(
            np.mean([metrics[f"{kind}_{n}"] for n in CLASS_NAMES]))
    one_class = len(np.unique(labels)) < 2
    metrics["roc_auc"] = None if one_class else float(roc_auc_score(labels, prob_real))
    metrics["pr_auc"] = None if one_class else float(average_precision_score(labels, prob_real))
    metrics["ece"] = expected_calibration_error(labels, prob_real)
    metrics["brier"] = brier_score(labels, prob_real)
    metrics["confusion_matrix"] = confusion.tolist()
    metrics.update(class_table(labels, pred, class_names))
    for name in class_names:
        metrics.setdefault(f"f1_{name}", metrics["per_class"][name]["f1"])
    metrics["loss"] = None if loss is None else float(loss)
    metrics["threshold"] = float(threshold)
    metrics["rows"] = int(labels.size)
    return metrics


def _ratio(numerator, denominator):
    # An empty class (no true or no predicted rows) scores 0, as sklearn's zero_division=0 does.
    return float(numerator / denominator) if denominator else 0.0


def tune_threshold(labels, prob_real):
    """The threshold that maximises macro-F1 on these (validation) rows.

    Every distinct cut of the sorted probabilities is scored at once with
    cumulative counts; the chosen threshold is the midpoint between the last
    row called real and the first called fake. Ties go to the cut nearest 0.5.
    """
    labels = np.asarray(labels, dtype=np.int64)
    prob_real = np.asarray(prob_real, dtype=np.float64)
    order = np.argsort(-prob_real, kind="stable")
    probs, truth = prob_real[order], labels[order]
    # Cut k predicts the k most probable rows real: k = 0 .. n.
    true_pos = np.concatenate([[0], np.cumsum(truth)])
    false_pos = np.concatenate([[0], np.cumsum(1 - truth)])
    positives, negatives = truth.sum(), truth.size - truth.sum()
    false_neg, true_neg = positives - true_pos, negatives - false_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_real = np.nan_to_num(2 * true_pos / (2 * true_pos + false_pos + false_neg))
        f1_fake = np.nan_to_num(2 * true_neg / (2 * true_neg + false_neg + false_pos))
    macro = (f1_real + f1_fake) / 2
    # A cut between equal probabilities cannot be made by any threshold.
    cuts = np.concatenate([[0], np.flatnonzero(probs[:-1] > probs[1:]) + 1, [probs.size]])
    thresholds = np.array([_threshold_at(probs, k) for k in cuts])
    best = thresholds[macro[cuts] == macro[cuts].max()]
    return float(best[np.argmin(np.abs(best - 0.5))])


def _threshold_at(probs, k):
    if k == 0:
        return 1.0  # nobody is real: no probability exceeds 1
    if k == probs.size:
        return float(np.nextafter(probs[-1], -np.inf))  # everybody is real
    return float((probs[k - 1] + probs[k]) / 2)


PRESENCE_GROUPS = ("both", "text_only", "image_only")


def presence_groups(has_text, has_image):
    """(N,) group name per row: both, text_only or image_only (a row with neither is never cached)."""
    has_text, has_image = np.asarray(has_text, dtype=bool), np.asarray(has_image, dtype=bool)
    return np.where(has_text & has_image, "both", np.where(has_text, "text_only", "image_only"))


def weighted_log_loss(labels, prob_real, class_weights=None):
    """The class-weighted cross-entropy of `losses.weighted_cross_entropy`, from probabilities."""
    labels = np.asarray(labels, dtype=np.int64)
    prob = np.clip(np.where(labels == 1, prob_real, 1 - np.asarray(prob_real, dtype=np.float64)), 1e-12, 1.0)
    weights = np.ones(2) if class_weights is None else np.asarray(class_weights, dtype=np.float64)
    return float(np.sum(weights[labels] * -np.log(prob)) / np.sum(weights[labels]))


def score_probabilities(ids, labels, probs, losses, groups=None, class_weights=None, bootstrap=1000, seed=0,
                        train_labels=None, class_names=CLASS_NAMES):
    """Tune the threshold on val only, then score val and test at 0.5 and at that threshold.

    Shared by head training and end-to-end fine-tuning; each argument maps "val"
    and "test" to that split's ids, 0/1 labels, prob_real and loss. With
    `groups` (split -> `presence_groups`), each split's metrics gain
    `by_presence`: the same metrics (and "tuned") for each group present, the
    loss from `class_weights` as in training. With `bootstrap` > 0 resamples,
    the split's metrics dicts get `ci95` (seeded by `seed`; the tuned threshold
    is held fixed inside the resamples). Each split's metrics also get `decision`: the run's decision
    threshold by the one threshold rule (pipeline.runs.threshold), at which `pred` is decided
    (`pred_tuned` at the tuned threshold, `pred_at_0.5` at 0.5). With `train_labels`, each split gets
    `baselines` (pipeline.train.baselines). The predictions end with prob_<class name> (prob_fake; prob_real
    keeps its place) and pred_name; `class_names` are the two classes' names (default fake, real).
    """
    threshold = tune_threshold(labels["val"], probs["val"])
    decision = decide_from_labels(threshold, labels["val"])
    metrics, predictions = {}, {}
    for name, prob in probs.items():
        metrics[name] = compute_metrics(labels[name], prob, loss=losses[name], class_names=class_names)
        metrics[name]["tuned"] = compute_metrics(labels[name], prob, threshold=threshold, loss=losses[name],
                                                 class_names=class_names)
        metrics[name]["decision"] = decision.as_dict()
        if train_labels is not None:
            metrics[name]["baselines"] = baselines(labels[name], train_labels, class_names)
        if bootstrap:
            for values in (metrics[name], metrics[name]["tuned"]):
                values["ci95"] = bootstrap_ci(labels[name], prob, values["threshold"], bootstrap, seed)
        if groups is not None:
            metrics[name]["by_presence"] = {}
            for group in PRESENCE_GROUPS:
                rows = np.asarray(groups[name]) == group
                if rows.any():
                    y, p = np.asarray(labels[name])[rows], np.asarray(prob)[rows]
                    loss = weighted_log_loss(y, p, class_weights)
                    metrics[name]["by_presence"][group] = {
                        **compute_metrics(y, p, loss=loss, class_names=class_names),
                        "tuned": compute_metrics(y, p, threshold=threshold, loss=loss, class_names=class_names)}
        predictions[name] = {"id": ids[name], "label": labels[name], "prob_real": prob,
                             "pred": (prob > decision.threshold).astype(np.int64),
                             "pred_tuned": (prob > threshold).astype(np.int64),
                             "pred_at_0.5": (prob > 0.5).astype(np.int64)}
        # Every class's probability and the decided class's name, as K-class runs write them (after
        # the binary columns, which keep their places).
        for column, values in ((f"prob_{class_names[0]}", 1 - np.asarray(prob, dtype=np.float64)),
                               (f"prob_{class_names[1]}", np.asarray(prob, dtype=np.float64))):
            predictions[name].setdefault(column, values)
        predictions[name]["pred_name"] = np.array(class_names, dtype=object)[predictions[name]["pred"]]
    return metrics, predictions


SHOWN = ("accuracy", "f1_macro", "f1_fake", "f1_real", "precision", "recall", "roc_auc", "pr_auc", "loss",
         "threshold")


def shown(metrics):
    """The headline metrics, rounded, for `Validation metrics: {...}` lines (K > 2: those it has, f1_weighted)."""
    keys = SHOWN if "f1_fake" in metrics else [k for k in (*SHOWN, "f1_weighted") if k in metrics]
    return {key: None if metrics[key] is None else round(metrics[key], 4) for key in keys}


def shown_baselines(metrics):
    """`majority (fake) accuracy 0.600, f1_macro 0.375; stratified ...` ('' without baselines)."""
    values = metrics.get("baselines") or {}
    return "; ".join(f"{name}{' (' + b['class'] + ')' if 'class' in b else ''} accuracy {b['accuracy']:.3f}, "
                     f"f1_macro {b['f1_macro']:.3f}" for name, b in values.items())


def shown_by_presence(metrics):
    """One line per presence group: rows, accuracy and macro-F1 at 0.5 ('' without by_presence)."""
    groups = metrics.get("by_presence") or {}
    return "; ".join(f"{group} {m['rows']} rows: accuracy {m['accuracy']:.4f}, f1_macro {m['f1_macro']:.4f}"
                     for group, m in groups.items())
def with_intervals(metrics, names=("accuracy", "f1_macro", "f1_fake", "f1_real", "roc_auc", "pr_auc")):
    """`accuracy 0.874 [0.83, 0.92], f1_macro ...`: each metric with its 95% interval when it has one."""
    if "f1_fake" not in metrics:  # K > 2 classes
        names = ("accuracy", "f1_macro", "f1_weighted", "roc_auc", "pr_auc")
    intervals = metrics.get("ci95") or {}
    return ", ".join(f"{name} {with_interval(metrics[name], intervals.get(name))}" for name in names)
