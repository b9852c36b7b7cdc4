"""Validated readers for the files of run folders that we wrote and read back: config.json, metrics.json,
predictions_*.csv, skipped.tsv, ablation.csv and the calibration stored in head/head_config.json.

Each checks the presence, type and range of what its callers use, and raises a `UserError` naming the
file and the field (or column, and line) instead of a traceback further on.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.fields import INTEGER, NUMBER, Field, checked, positive, within
from pipeline.files import read_json_object

FIX = "rerun the command that wrote it (or restore the file from the run it came from)"


def _read(path):
    return read_json_object(path, f"missing; {FIX}", FIX)


_CONFIG_FIELDS = (Field("command", str, optional=True), Field("pipeline_version", str, optional=True),
                  Field("cache", dict, fields=(Field("dir", str),), optional=True),
                  Field("resolved", dict, optional=True), Field("data", dict, optional=True))


def read_config(folder):
    """config.json of a run or ablation folder: an object whose cache, resolved and data entries are objects."""
    path = Path(folder) / "config.json"
    return checked(_read(path), _CONFIG_FIELDS, path, FIX)


def _confusion(value):
    ok = (isinstance(value, list) and len(value) == 2 and all(
        isinstance(row, list) and len(row) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                        for n in row) for row in value))
    return None if ok else "is not a 2 x 2 table of counts"


_SCORES = (Field("threshold", NUMBER, within(0, 1)), Field("rows", INTEGER, within(0, float("inf"))),
           Field("confusion_matrix", list, _confusion),
           *(Field(name, NUMBER, within(0, 1)) for name in ("accuracy", "f1_macro", "f1_fake", "f1_real")))
_SPLIT = (*_SCORES, Field("tuned", dict, fields=_SCORES), Field("by_presence", dict, optional=True))
_METRICS_FIELDS = (Field("val", dict, fields=_SPLIT), Field("test", dict, fields=_SPLIT),
                   Field("warnings", list, optional=True))


def _k_confusion(value):
    ok = (isinstance(value, list) and len(value) > 2 and all(
        isinstance(row, list) and len(row) == len(value) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in row) for row in value))
    return None if ok else "is not a K x K table of counts (K > 2)"


# A K-class run (K > 2) decides by the argmax: no threshold, no "tuned"; per_class instead of f1_fake/f1_real.
_K_SPLIT = (Field("rows", INTEGER, within(0, float("inf"))), Field("confusion_matrix", list, _k_confusion),
            Field("per_class", dict), Field("by_presence", dict, optional=True),
            *(Field(name, NUMBER, within(0, 1)) for name in ("accuracy", "f1_macro", "f1_weighted")))
_K_METRICS_FIELDS = (Field("val", dict, fields=_K_SPLIT), Field("test", dict, fields=_K_SPLIT),
                     Field("warnings", list, optional=True))


def read_metrics(folder):
    """metrics.json of a run: val and test, each with its scores at 0.5 and `tuned` (K > 2 classes: its
    argmax scores and per_class), checked."""
    path = Path(folder) / "metrics.json"
    payload = _read(path)
    confusion = ((payload.get("val") or {}) if isinstance(payload, dict) else {}).get("confusion_matrix")
    k_way = isinstance(confusion, list) and len(confusion) > 2
    return checked(payload, _K_METRICS_FIELDS if k_way else _METRICS_FIELDS, path, FIX)


def read_calibration(head_folder):
    """The temperature `--calibrate temperature` stored with a head (head_config.json's extra.calibration),
    a positive finite number, or None."""
    path = Path(head_folder) / "head_config.json"
    fix = "retrain with --calibrate temperature or remove the calibration entry"
    payload = read_json_object(path, "missing; re-save the head with save_head", fix)
    checked(payload, (Field("extra", dict, optional=True),), path, fix)
    extra = checked(payload.get("extra") or {}, (Field("calibration", dict, optional=True),), path, fix, "extra.")
    calibration = extra.get("calibration") or {}
    checked(calibration, (Field("temperature", NUMBER, positive(), optional=True),), path, fix, "extra.calibration.")
    temperature = calibration.get("temperature")
    return None if temperature is None else float(temperature)


LABEL, PROBABILITY, DIFFERENCE, INT, TEXT = "label", "probability", "difference", "int", "text"


def labels_of(num_classes):
    """The column kind of labels 0..K-1 (LABEL is K = 2)."""
    return LABEL if num_classes == 2 else f"{LABEL}:{num_classes}"


def read_table(path, columns, sep=",", fix=FIX):
    """A CSV/TSV we wrote as a DataFrame, with `columns` ({name: LABEL, PROBABILITY, INT or TEXT}) present
    and of their kind: labels 0 or 1, probabilities numbers in [0, 1] (empty where a row was not scored)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {fix}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise UserError(f"{path}: not a table this tool wrote ({str(error).strip()}); {fix}") from None
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (it has: {', '.join(frame.columns) or 'none'}); "
                        f"{fix}")
    for name, kind in columns.items():
        if kind != TEXT:
            frame[name] = _column(path, frame[name], name, kind, fix)
    return frame


def _column(path, values, name, kind, fix):
    numbers = pd.to_numeric(values.where(values != ""), errors="coerce")
    bad = (values != "") & numbers.isna()
    classes = int(kind.partition(":")[2] or 2) if kind.startswith(LABEL) else 0
    if classes:
        bad |= ~numbers.isin(range(classes))
    elif kind == PROBABILITY:
        bad |= (values != "") & ~numbers.between(0, 1)
    elif kind == DIFFERENCE:
        bad |= (values != "") & ~numbers.between(-1, 1)
    elif kind == INT:
        bad |= (values != "") & (numbers != np.floor(numbers))
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0])
        what = f"0 to {classes - 1}" if classes > 2 else {
            LABEL: "0 or 1", PROBABILITY: "a probability from 0 to 1", DIFFERENCE: "a difference from -1 to 1",
            INT: "a whole number"}[kind]
        raise UserError(f"{path}: line {line + 2}, column {name}: {values.iloc[line]!r} is not {what}; {fix}")
    return numbers.astype("Int64") if classes or kind == INT else numbers


PREDICTION_COLUMNS = {"id": TEXT, "label": LABEL, "prob_real": PROBABILITY}


def read_predictions(path, class_names=("fake", "real")):
    """predictions_<split>.csv of a run: id, label, prob_real for two classes (+ pred columns, not needed: the
    threshold rule decides from prob_real); id, label and prob_<name> of each of K > 2 `class_names`."""
    if len(class_names) == 2:
        return read_table(path, PREDICTION_COLUMNS)
    return read_table(path, {"id": TEXT, "label": labels_of(len(class_names)),
                             **{f"prob_{name}": PROBABILITY for name in class_names}})


def read_skipped(path):
    """skipped.tsv (a cache's or a finetune-e2e run's): split, id, reason."""
    return read_table(path, {"split": TEXT, "id": TEXT, "reason": TEXT}, sep="\t")


ABLATION_COLUMNS = {"modalities": TEXT, "fusion": TEXT, "seed": INT, "best_epoch": INT,
                    **{f"{split}_{metric}": PROBABILITY for split in ("val", "test")
                       for metric in ("f1_macro", "accuracy")}}


def read_ablation(path):
    """ablation.csv: one row per run with the columns the ablation page and its summary use."""
    frame = read_table(path, ABLATION_COLUMNS)
    for name, kind in ABLATION_COLUMNS.items():
        if kind == PROBABILITY and frame[name].isna().any():
            line = int(np.flatnonzero(frame[name].isna().to_numpy())[0])
            raise UserError(f"{path}: line {line + 2}, column {name}: empty; {FIX}")
    return pd.read_csv(path)  # checked above; read again with pandas' own types for the summary's other columns


def read_comparisons(path, metrics):
    """comparisons.csv of an ablation folder: per variant, the pooled paired comparison of each of `metrics`."""
    columns = {"modalities": TEXT, "fusion": TEXT, "reference": TEXT}
    for metric in metrics:
        columns.update({f"test_{metric}_diff": DIFFERENCE, f"test_{metric}_diff_low": DIFFERENCE,
                        f"test_{metric}_diff_high": DIFFERENCE, f"test_{metric}_diff_p": PROBABILITY})
    return read_table(path, columns)
