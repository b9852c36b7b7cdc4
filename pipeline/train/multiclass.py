"""Classification metrics for K classes (labels 0..K-1, one probability column per class), used when K > 2,
and the per-class table and K x K confusion that every run, binary too, writes.

Conventions (K > 2; the binary ones stay in metrics.py):
- The decision is the argmax of the K probabilities (a tie goes to the lowest label, as argmax does); no
  threshold is tuned: one number cannot trade K classes off against each other.
- precision, recall: macro averages over the K classes; f1_macro the same; f1_weighted weights each class's
  F1 by its support (rows of that class). `f1_<class name>` per class, for early stopping and the tables.
- per_class: {name: {precision, recall, f1, support}}; confusion: K x K counts, rows = true class, columns
  = predicted class, both in label order (also as confusion_matrix, the binary runs' key).
- roc_auc, pr_auc: one-vs-rest, each class's probability against the rest, macro-averaged over the classes
  that have rows and non-rows here (pr_auc is average precision); None with fewer than two such classes.
- ece: top-label calibration, rows binned by the largest probability (15 bins); brier: multi-class Brier,
  the mean over rows of sum_k (p_k - [label = k])^2 (for K = 2 twice the binary runs' brier).
"""

import numpy as np

from pipeline.train.baselines import baselines
from pipeline.train.bootstrap import multiclass_bootstrap_ci
from pipeline.train.calibration import ECE_BINS

ARGMAX_RULE = "the argmax of the K probabilities (no threshold is tuned for K > 2)"
ARGMAX_DECISION = {"source": "argmax", "threshold": None, "rule": ARGMAX_RULE}


def confusion_of(labels, pred, num_classes):
    """(K, K) counts, rows = true class, columns = predicted class."""
    labels, pred = np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return np.bincount(num_classes * labels + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_scores(confusion, class_names):
    """{name: {precision, recall, f1, support}} of a confusion matrix; an empty class scores 0 (zero_division=0)."""
    confusion = np.asarray(confusion)
    scores = {}
    for index, name in enumerate(class_names):
        hit, predicted, support = confusion[index, index], confusion[:, index].sum(), confusion[index, :].sum()
        scores[name] = {"precision": _ratio(hit, predicted), "recall": _ratio(hit, support),
                        "f1": _ratio(2 * hit, predicted + support), "support": int(support)}
    return scores


def class_table(labels, pred, class_names):
    """The keys every split's metrics get, binary too: per_class, confusion and f1_weighted."""
    confusion = confusion_of(labels, pred, len(class_names))
    per_class = per_class_scores(confusion, class_names)
    rows = confusion.sum()
    weighted = sum(s["f1"] * s["support"] for s in per_class.values()) / rows if rows else 0.0
    return {"per_class": per_class, "confusion": confusion.tolist(), "f1_weighted": float(weighted)}


def _ratio(numerator, denominator):
    return float(numerator / denominator) if denominator else 0.0


def multiclass_metrics(labels, probs, class_names, loss=None):
    """Every metric of one split for K classes, from (N,) labels and (N, K) probabilities."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    table = class_table(labels, pred, class_names)
    per_class = table["per_class"]
    metrics = {"accuracy": _ratio(int((pred == labels).sum()), labels.size),
               "f1_macro": float(np.mean([s["f1"] for s in per_class.values()])),
               "f1_weighted": table["f1_weighted"],
               "precision": float(np.mean([s["precision"] for s in per_class.values()])),
               "recall": float(np.mean([s["recall"] for s in per_class.values()]))}
    metrics.update({f"f1_{name}": scores["f1"] for name, scores in per_class.items()})
    metrics.update(one_vs_rest_auc(labels, probs))
    metrics["ece"] = top_label_ece(labels, probs)
    metrics["brier"] = multiclass_brier(labels, probs)
    metrics["per_class"], metrics["confusion"] = per_class, table["confusion"]
    metrics["confusion_matrix"] = table["confusion"]
    metrics["loss"] = None if loss is None else float(loss)
    metrics["rows"] = int(labels.size)
    return metrics


def one_vs_rest_auc(labels, probs):
    """{"roc_auc", "pr_auc"}: macro means over the classes with both rows and non-rows (else None)."""
    from sklearn.metrics import average_precision_score, roc_auc_score  # slow to import: only when scoring

    roc, pr = [], []
    for index in range(probs.shape[1]):
        truth = labels == index
        if truth.any() and not truth.all():
            roc.append(roc_auc_score(truth, probs[:, index]))
            pr.append(average_precision_score(truth, probs[:, index]))
    if len(roc) < 2:
        return {"roc_auc": None, "pr_auc": None}
    return {"roc_auc": float(np.mean(roc)), "pr_auc": float(np.mean(pr))}


def top_label_reliability(labels, probs, bins=ECE_BINS):
    """(mean confidence, accuracy, rows) per non-empty bin of the top probability (the reliability diagram)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    keep = counts > 0
    mean_conf = np.bincount(index, weights=confidence, minlength=bins)[keep] / counts[keep]
    hits = (pred == np.asarray(labels)).astype(np.float64)
    accuracy = np.bincount(index, weights=hits, minlength=bins)[keep] / counts[keep]
    return mean_conf, accuracy, counts[keep]


def top_label_ece(labels, probs, bins=ECE_BINS):
    if np.asarray(labels).size == 0:
        return None
    confidence, accuracy, rows = top_label_reliability(labels, probs, bins)
    return float(np.sum(rows * np.abs(accuracy - confidence)) / rows.sum())


def multiclass_brier(labels, probs):
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return None
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def score_multiclass(ids, labels, probs, losses, class_names, groups=None, class_weights=None, bootstrap=1000,
                     seed=0, train_labels=None):
    """score_probabilities for K > 2: (metrics, predictions) of each split in `probs` ({split: (N, K)}),
    decided by the argmax; metrics get ci95, baselines (with `train_labels`) and by_presence (with `groups`)."""
    from pipeline.train.metrics import PRESENCE_GROUPS  # metrics.py imports this module

    metrics, predictions = {}, {}
    for name, prob in probs.items():
        prob = np.asarray(prob, dtype=np.float64)
        values = multiclass_metrics(labels[name], prob, class_names, loss=losses[name])
        values["decision"] = dict(ARGMAX_DECISION)
        if bootstrap:
            values["ci95"] = multiclass_bootstrap_ci(labels[name], prob, bootstrap, seed)
        if train_labels is not None:
            values["baselines"] = baselines(labels[name], train_labels, class_names)
        if groups is not None:
            values["by_presence"] = {}
            for group in PRESENCE_GROUPS:
                rows = np.asarray(groups[name]) == group
                if rows.any():
                    y, p = np.asarray(labels[name])[rows], prob[rows]
                    values["by_presence"][group] = multiclass_metrics(
                        y, p, class_names, loss=weighted_log_loss(y, p, class_weights))
        metrics[name] = values
        pred = prob.argmax(axis=1)
        predictions[name] = {"id": ids[name], "label": labels[name],
                             **{f"prob_{c}": prob[:, index] for index, c in enumerate(class_names)},
                             "pred": pred, "pred_name": np.array(class_names, dtype=object)[pred]}
    return metrics, predictions


def weighted_log_loss(labels, probs, class_weights=None):
    """The class-weighted cross-entropy of losses.weighted_cross_entropy, from (N, K) probabilities."""
    labels = np.asarray(labels, dtype=np.int64)
    own = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(labels.size), labels], 1e-12, 1.0)
    weights = np.ones(np.asarray(probs).shape[1]) if class_weights is None else np.asarray(class_weights, float)
    return float(np.sum(weights[labels] * -np.log(own)) / np.sum(weights[labels]))
