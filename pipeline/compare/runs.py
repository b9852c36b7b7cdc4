"""What `compare` reads of a run folder: its test predictions, class names, thresholds and provenance.

`load_run` is the only place compare opens a run's files, and it reads them through the run record
(`pipeline.runs`: run.json, or the record inferred for a folder from before it) and its checked readers.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.runs.readers import read_config, read_predictions
from pipeline.runs.record import read_run

PREDICTIONS = "predictions_test.csv"
COMPARABLE = ("train-head", "finetune-e2e")


@dataclass(frozen=True)
class RunPredictions:
    name: str  # the folder as given on the command line
    folder: Path
    command: str  # train-head or finetune-e2e (the run record's kind)
    class_names: tuple
    ids: np.ndarray  # (N,) object (str), in the file's order
    labels: np.ndarray  # (N,) int64
    prob_real: np.ndarray  # (N,) float64 for two classes; (N, K) class probabilities for K > 2
    decision_threshold: float  # the threshold the run decides at (its predictions files' pred column)
    tuned_threshold: float  # the threshold tuned on validation; None when the run has none
    seed: int  # the training seed; None when config.json has none
    provenance: dict  # cache fingerprint and encoders, for the page


def load_run(run_dir):
    """The test predictions and what they mean of one run folder; a UserError naming the folder otherwise."""
    folder = Path(run_dir)
    fix = "point at a train-head or finetune-e2e run folder"
    if not folder.is_dir():
        raise UserError(f"{run_dir}: no such folder; {fix}")
    for name, what in (("config.json", "not a run folder"), ("metrics.json", "not a finished run")):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {what} (no {name}); {fix}")
    record = read_run(folder)
    if record.kind not in COMPARABLE:
        raise UserError(f"{folder}: a {record.kind} folder holds no test predictions of its own; {fix}")
    if not (folder / PREDICTIONS).is_file():
        raise UserError(f"{folder}: has no {PREDICTIONS}, so its test rows cannot be matched; {fix}")
    frame = read_predictions(folder / PREDICTIONS, tuple(record.class_names))
    if frame.empty:
        raise UserError(f"{folder / PREDICTIONS}: holds no rows; rerun the run that wrote it")
    names = tuple(record.class_names)
    columns = ["prob_real"] if len(names) == 2 else [f"prob_{name}" for name in names]
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise UserError(f"{folder / PREDICTIONS}: no column {absent[0]} for the run's classes ({', '.join(names)}); "
                        "rerun the run that wrote it")
    unscored = frame[columns].isna().any(axis=1) | frame["label"].isna()
    if unscored.any():
        line = int(np.flatnonzero(unscored.to_numpy())[0]) + 2
        raise UserError(f"{folder / PREDICTIONS}: line {line}: no label or {' / '.join(columns)}; rerun the run "
                        "that wrote it")
    probs = frame[columns].to_numpy(np.float64)
    config = read_config(folder)
    train = config.get("train") or (config.get("finetune") or {}).get("train") or {}
    encoders = record.encoders or {}
    return RunPredictions(
        name=str(run_dir), folder=folder, command=record.kind, class_names=names,
        ids=frame["id"].to_numpy(dtype=object), labels=frame["label"].to_numpy(np.int64),
        prob_real=probs[:, 0] if len(names) == 2 else probs, decision_threshold=record.decision_threshold,
        tuned_threshold=record.tuned_threshold, seed=train.get("seed"),
        provenance={"fingerprint": (record.cache or {}).get("fingerprint"),
                    "text_model": _model_path(encoders.get("text_model")),
                    "clip_model": _model_path(encoders.get("clip_model"))})


def _model_path(record):
    return record.get("path") if isinstance(record, dict) else None


def describe(run):
    """One line of provenance for the pages (the fingerprint cut to 12 characters; config.json has it whole)."""
    parts = [f"{key} {str(value)[:12] if key == 'fingerprint' else value}"
             for key, value in run.provenance.items() if value]
    return f"{run.command}" + (f" ({', '.join(parts)})" if parts else "")


def as_record(run):
    """What config.json of a comparison says about each run it read."""
    return {"name": run.name, "folder": str(run.folder.resolve()), "command": run.command,
            "class_names": list(run.class_names), "seed": run.seed, **run.provenance}
