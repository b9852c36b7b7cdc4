"""Refuse to train or calibrate on labels that cannot support it, before any epoch runs.

A train split of one class cannot teach a classifier anything; a validation split
of one class makes early stopping, the tuned threshold and calibration meaningless
(every val metric is 0 or undefined, and the threshold is "tuned" on nothing), so
both are errors. A test split of one class can still be scored (accuracy, one
class's recall) but macro-F1 and the ranking metrics say little: a warning.
"""

import numpy as np

from pipeline.data.splits import CLASS_NAMES
from pipeline.errors import UserError

MIN_CALIBRATION_ROWS_PER_CLASS = 4  # fewer, and one temperature is fitted to a handful of rows


def class_counts(labels, class_names=CLASS_NAMES):
    """{class name: rows} of labels 0..K-1."""
    labels = np.asarray(labels)
    return {name: int((labels == value).sum()) for value, name in enumerate(class_names)}


def _shown(counts):
    return ", ".join(f"{rows} {name}" for name, rows in counts.items())


def check_classes(splits, calibrate="off", where="the cache", class_names=CLASS_NAMES):
    """Raise for a train or val split of one class (and for too few val rows to calibrate on); return the
    warning lines for the rest (a test split of one class). `splits`: {name: CachedSplit}, after --eval-ids.
    With K > 2 classes a class absent from train is an error too (the head could never predict it); one
    absent from val or test a warning (its F1 is 0 and the one-vs-rest AUCs leave it out)."""
    if len(class_names) > 2:
        return _check_k_classes(splits, calibrate, where, class_names)
    counts = {name: class_counts(split.labels) for name, split in splits.items()}
    for name, why in (("train", "a head cannot learn to tell classes apart"),
                      ("val", "early stopping, the tuned threshold and calibration would be chosen on nothing")):
        absent = [label for label, rows in counts.get(name, {}).items() if rows == 0]
        if absent:
            raise UserError(f"{where}: the {name} split has one class only: no {absent[0]} rows "
                            f"({_shown(counts[name])}): {why}; "
                            f"embed a {name} split with both classes (or, with --eval-ids, keep rows of both)")
    if calibrate == "temperature" and "val" in counts:
        fewest = min(counts["val"].values())
        if fewest < MIN_CALIBRATION_ROWS_PER_CLASS:
            raise UserError(f"--calibrate temperature: the val split has {_shown(counts['val'])} rows; fitting a "
                            f"temperature needs at least {MIN_CALIBRATION_ROWS_PER_CLASS} of each class: embed a "
                            "larger validation split or use --calibrate off")
    warnings = []
    if "test" in counts and min(counts["test"].values()) == 0:
        warnings.append(f"warning: the test split has one class only ({_shown(counts['test'])}): macro-F1, "
                        "ROC-AUC and PR-AUC on it say little (ROC-AUC and PR-AUC are undefined)")
    return warnings


def _check_k_classes(splits, calibrate, where, class_names):
    counts = {name: class_counts(split.labels, class_names) for name, split in splits.items()}
    absent = [label for label, rows in counts.get("train", {}).items() if rows == 0]
    if absent:
        raise UserError(f"{where}: the train split has no rows of class {', '.join(absent)} "
                        f"({_shown(counts['train'])}): a head cannot learn a class it never sees; embed a train "
                        "split with every class, or choose a label column without it")
    present = [label for label, rows in counts.get("val", {}).items() if rows > 0]
    if "val" in counts and len(present) < 2:
        raise UserError(f"{where}: the val split has one class only ({_shown(counts['val'])}): early stopping "
                        "and calibration would be chosen on nothing; embed a val split with several classes")
    if calibrate == "temperature" and "val" in counts and len(present) < len(class_names):
        raise UserError(f"--calibrate temperature: the val split has {_shown(counts['val'])} rows; fitting a "
                        "temperature needs rows of every class: embed a larger validation split or use "
                        "--calibrate off")
    warnings = []
    for name in ("val", "test"):
        missing = [label for label, rows in counts.get(name, {}).items() if rows == 0]
        if missing:
            warnings.append(f"warning: the {name} split has no rows of class {', '.join(missing)}: their F1 is 0 "
                            "and the one-vs-rest ROC-AUC and PR-AUC leave them out")
    return warnings
