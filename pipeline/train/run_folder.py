"""The run folder of `train-head`: everything needed to inspect, compare and reuse one run.

    run.json                 the run record (kind, cache, encoders, decision threshold...): pipeline.runs.record
    config.json              resolved head + training config, cache path, fingerprint and dims
    metrics.json             {"val": {...}, "test": {...}, "warnings": [...]}; each split at threshold 0.5 with
                             "tuned" at the val-tuned one (K > 2: the argmax, no "tuned")
    epochs.csv               one row per epoch: train_loss, val_loss, val metrics, seconds
    predictions_val.csv      id, label, prob_real, pred (the run's decision threshold, pipeline.runs.threshold),
                             pred_tuned (tuned threshold), pred_at_0.5, prob_fake, pred_name; for K > 2 classes:
                             id, label, prob_<class name> for each class, pred (the argmax), pred_name
    predictions_test.csv
    head/                    model.safetensors + head_config.json (loads with pipeline.head.load_head);
                             with --calibrate temperature, head_config.json's extra.calibration.temperature
    encoders.json            what rebuilds the feature extractor the head was trained on (pipeline.runs.encoders)
    curves.png, confusion_matrix.png, roc.png, pr.png, reliability.png
"""

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import pandas as pd

import pipeline
from pipeline.data.splits import CLASS_NAMES, LABEL_COLUMN
from pipeline.files import output_folder, write_atomic, write_json_atomic
from pipeline.model.head import FusionHead, save_head
from pipeline.runs.encoders import write_encoders
from pipeline.runs.record import write_run_record
from pipeline.runs.threshold import Decision
from pipeline.train.plots import plot_confusion_matrices, plot_reliability, plot_roc_pr, plot_training_curves

FILES = ("run.json", "config.json", "metrics.json", "epochs.csv", "predictions_val.csv", "predictions_test.csv",
         "head/model.safetensors", "head/head_config.json",
         "curves.png", "confusion_matrix.png", "roc.png", "pr.png", "reliability.png")


@dataclass
class FitResult:
    history: list  # one dict per epoch: epoch, train_loss, val_loss, val_<metric>..., seconds
    best_epoch: int
    best_score: float


@dataclass
class HeadRun:
    head: FusionHead
    fit: FitResult
    metrics: dict  # {"val": {...}, "test": {...}}, each with a "tuned" sub-dict
    predictions: dict  # {split: {"id", "label", "prob_real", "pred", "pred_tuned"}} as NumPy arrays
    class_weights: list
    device: str
    seconds: float
    temperature: float = None  # set by --calibrate temperature: prob_real = sigmoid((logit_real - logit_fake) / T)
    warnings: list = field(default_factory=list)  # "warning: ..." lines to print; also in metrics.json
    class_names: tuple = CLASS_NAMES  # in label order; K = len(class_names) outputs


def default_out(head_config, seed):
    """runs/head-<modalities>[-<fusion>]-seed<seed>; fusion only names a two-modality head."""
    name = "-".join(head_config.modalities)
    if len(head_config.modalities) == 2:
        name += f"-{head_config.fusion}"
    return Path("runs") / f"head-{name}-seed{seed}"


def write_csv(path, columns):
    write_atomic(path, lambda tmp: pd.DataFrame(columns).to_csv(tmp, index=False))


def write_run(out, run, config, encoders=None, command_line=None, data=None, label_column=LABEL_COLUMN):
    """Write a `HeadRun` and its resolved `config` (a JSON-able dict) into folder `out`; every file is
    written to a temp file and renamed, so no symlink in `out` is followed.

    `encoders` (see pipeline.runs.encoders) goes into encoders.json with the class names and the run's
    decision threshold: all `predict` needs besides the head. run.json records the run (its kind is
    config["command"]); `data` is finetune-e2e's split files (pipeline.runs.record); `label_column` the column
    whose classes the run learned.
    """
    out = output_folder(out, "--out")
    binary = len(run.class_names) == 2
    decision = Decision.from_dict(run.metrics["val"]["decision"]) if binary else None  # K > 2: the argmax
    cache = config.get("cache")
    write_run_record(out, config["command"], cache=cache, encoders=encoders, decision=decision, data=data,
                     command_line=command_line, class_names=run.class_names, label_column=label_column)
    write_json_atomic(out / "config.json", config)
    if encoders is not None:
        write_encoders(out, encoders, decision.threshold if binary else None, run.class_names)
    # The run's warnings at the top level too (readers take "val" and "test" by name).
    write_json_atomic(out / "metrics.json", {**run.metrics, "warnings": list(run.warnings)})
    write_csv(out / "epochs.csv", run.fit.history)
    for split, columns in run.predictions.items():
        write_csv(out / f"predictions_{split}.csv", columns)
    if run.temperature is not None:
        # `predict` divides the head's logits by this; the key is documented in docs/evaluation.md.
        config = dict(config, calibration={"method": "temperature", "temperature": run.temperature})
    save_head(out / "head", run.head, extra_config=config)
    plot_training_curves(run.fit.history, run.fit.best_epoch, out / "curves.png")
    plot_confusion_matrices(run.metrics, out / "confusion_matrix.png", run.class_names)
    plot_roc_pr(run.predictions, out / "roc.png", out / "pr.png", run.class_names)
    plot_reliability(run.predictions, out / "reliability.png", run.class_names)
    return out


def resolved_config(command, cache_dir, manifest, **sections):
    """config.json of a run: the command, the cache it read (path, fingerprint, dims, rows) and each config."""
    cache = {"dir": str(cache_dir), "fingerprint": manifest.get("fingerprint"), "dims": manifest["dims"],
             "rows": {name: info.get("rows_embedded") for name, info in manifest["splits"].items()}}
    resolved = {"command": command, "pipeline_version": pipeline.__version__, "cache": cache}
    for name, value in sections.items():
        resolved[name] = asdict(value) if is_dataclass(value) else value
    return resolved
