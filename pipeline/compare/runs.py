"""What `compare` reads of a run folder: its test predictions, class names, threshold and provenance.

`load_run` is the only place compare opens a run's files (config.json,
metrics.json, encoders.json, predictions_test.csv as today's train-head and
finetune-e2e write them), so a versioned run record can replace it in one place.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.splits import CLASS_NAMES
from pipeline.errors import UserError
from pipeline.files import read_json_object

PREDICTIONS = "predictions_test.csv"
NEEDED_COLUMNS = ("id", "label", "prob_real")


@dataclass(frozen=True)
class RunPredictions:
    name: str  # the folder as given on the command line
    folder: Path
    command: str  # train-head, finetune-e2e (as config.json says)
    class_names: tuple
    ids: np.ndarray  # (N,) object (str), in the file's order
    labels: np.ndarray  # (N,) int64
    prob_real: np.ndarray  # (N,) float64
    tuned_threshold: float  # the threshold tuned on validation (metrics.json test.tuned.threshold)
    seed: int  # the training seed; None when config.json has none
    provenance: dict  # cache fingerprint and encoders, for the page


def load_run(run_dir):
    """The test predictions and what they mean of one run folder; a UserError naming the folder otherwise."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"{run_dir}: no such folder; give a train-head or finetune-e2e run folder")
    fix = "point at a train-head or finetune-e2e run folder"
    for name, what in (("config.json", "not a run folder"), ("metrics.json", "not a finished run")):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {what} (no {name}); {fix}")
    config = read_json_object(folder / "config.json", "", fix)
    metrics = read_json_object(folder / "metrics.json", "", fix)
    if not (folder / PREDICTIONS).is_file():
        raise UserError(f"{folder}: has no {PREDICTIONS}, so its test rows cannot be matched; {fix} "
                        "(an ablate folder holds no predictions)")
    encoders = _optional_json(folder / "encoders.json", fix)
    class_names = _class_names(encoders.get("class_names") or config.get("class_names") or CLASS_NAMES, folder)
    ids, labels, prob_real = _read_predictions(folder / PREDICTIONS, len(class_names))
    train = config.get("train") or (config.get("finetune") or {}).get("train") or {}
    tuned = ((metrics.get("test") or {}).get("tuned") or {}).get("threshold")
    return RunPredictions(
        name=str(run_dir), folder=folder, command=str(config.get("command", "run")), class_names=class_names,
        ids=ids, labels=labels, prob_real=prob_real, tuned_threshold=tuned, seed=train.get("seed"),
        provenance={"fingerprint": (config.get("cache") or {}).get("fingerprint"),
                    "text_model": _model_path(encoders.get("text_model")),
                    "clip_model": _model_path(encoders.get("clip_model"))})


def _optional_json(path, fix):
    return read_json_object(path, "", fix) if path.is_file() else {}


def _class_names(names, folder):
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise UserError(f"{folder}: class_names {names!r} is not a list of two or more names; "
                        "rerun the run that wrote it")
    return tuple(names)


def _model_path(record):
    return record.get("path") if isinstance(record, dict) else None


def _read_predictions(path, classes):
    """ids, labels, prob_real of a predictions file; every bad cell is an error naming its line and column."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)  # as text: a bad cell is shown as written
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path}: not a predictions CSV ({error}); rerun the run that wrote it") from None
    missing = [column for column in NEEDED_COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)} (it has {', '.join(map(str, frame.columns))}); "
                        "rerun the run that wrote it")
    if frame.empty:
        raise UserError(f"{path}: holds no rows; rerun the run that wrote it")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    prob_real = pd.to_numeric(frame["prob_real"], errors="coerce")
    bad_label = ~labels.isin(range(classes))
    bad_prob = ~(np.isfinite(prob_real) & (prob_real >= 0) & (prob_real <= 1))
    for column, bad, wanted in (("label", bad_label, f"a class index 0..{classes - 1}"),
                                ("prob_real", bad_prob, "a probability in [0, 1]")):
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: line {row + 2}, column {column}: {frame[column].iloc[row]!r} is not {wanted} "
                            f"({int(bad.sum())} such rows); rerun the run that wrote it")
    return frame["id"].to_numpy(dtype=object), labels.to_numpy(np.int64), prob_real.to_numpy(np.float64)


def describe(run):
    """One line of provenance for the pages (the fingerprint cut to 12 characters; config.json has it whole)."""
    parts = [f"{key} {str(value)[:12] if key == 'fingerprint' else value}"
             for key, value in run.provenance.items() if value]
    return f"{run.command}" + (f" ({', '.join(parts)})" if parts else "")


def as_record(run):
    """What config.json of a comparison says about each run it read."""
    return {"name": run.name, "folder": str(run.folder.resolve()), "command": run.command,
            "class_names": list(run.class_names), "seed": run.seed, **run.provenance}
