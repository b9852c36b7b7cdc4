"""The run's sanity warnings: what says a run may be useless, printed by train-head, listed in metrics.json
(top-level `warnings`, and each split's) and shown as a banner on its report page.

- the model predicts one class only on test;
- the lower end of test accuracy's 95% bootstrap interval is not above the majority baseline (no interval
  without --bootstrap, so no such warning then);
- a split too small to tune on: with K = 2, fewer than MIN_ROWS_PER_CLASS rows of a class in val means the
  threshold is not tuned (pipeline.runs.threshold's rule); with --calibrate temperature, the same count
  means the temperature is fitted on few rows of that class.
"""

import numpy as np

from pipeline.runs.threshold import MIN_ROWS_PER_CLASS, RULE


def run_warnings(metrics, test_pred, val_labels, class_names, calibrate="off"):
    """The warning lines of one run: `metrics` {"val", "test"} with baselines (and ci95), the test split's
    decided labels and val's labels."""
    lines = _one_class(np.asarray(test_pred), class_names)
    lines += _below_majority(metrics["test"])
    counts = np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=len(class_names))
    for name, rows in zip(class_names, counts):
        if rows >= MIN_ROWS_PER_CLASS:
            continue
        if len(class_names) == 2:
            lines.append(f"warning: fewer than {MIN_ROWS_PER_CLASS} rows of class {name} in val ({rows}): "
                         f"threshold 0.5, not tuned (the rule: {RULE})")
        if calibrate == "temperature":
            lines.append(f"warning: fewer than {MIN_ROWS_PER_CLASS} rows of class {name} in val ({rows}): the "
                         "temperature is fitted on few rows of it; read the calibrated probabilities with care")
    return lines


def _one_class(pred, class_names):
    if pred.size < 2 or np.unique(pred).size > 1:
        return []
    return [f"warning: the model predicts one class only on test: all {pred.size} rows {class_names[pred[0]]}; "
            "it tells nothing apart (check the labels, --class-weights and --lr)"]


def _below_majority(test):
    decided = test["tuned"] if (test.get("decision") or {}).get("source") == "tuned" else test
    interval = (decided.get("ci95") or {}).get("accuracy")
    majority = test["baselines"]["majority"]
    if not interval or interval[0] > majority["accuracy"]:
        return []
    return [f"warning: test accuracy {decided['accuracy']:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]: the lower "
            f"end of its 95% interval is not above the majority baseline {majority['accuracy']:.3f} (always "
            f"{majority['class']}, train's most frequent class): the model may be no better than that"]
