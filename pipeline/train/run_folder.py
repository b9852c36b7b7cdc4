"""The run folder of `train-head`: everything needed to inspect, compare and reuse one run.

    config.json              resolved head + training config, cache path, fingerprint and dims
    metrics.json             {"val": {...}, "test": {...}}; top level at threshold 0.5, "tuned" at the val-tuned one
    epochs.csv               one row per epoch: train_loss, val_loss, val metrics, seconds
    predictions_val.csv      id, label, prob_real, pred (0.5), pred_tuned (tuned threshold)
    predictions_test.csv
    head/                    model.safetensors + head_config.json (loads with pipeline.head.load_head);
                             with --calibrate temperature, head_config.json's extra.calibration.temperature
    encoders.json            what rebuilds the feature extractor the head was trained on (for `predict`)
    curves.png, confusion_matrix.png, roc.png, pr.png, reliability.png
"""

import json
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

import pandas as pd

import pipeline
from pipeline.data.splits import CLASS_NAMES
from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic
from pipeline.model.head import FusionHead, save_head
from pipeline.train.plots import plot_confusion_matrices, plot_reliability, plot_roc_pr, plot_training_curves

ENCODERS_NAME = "encoders.json"
FILES = ("config.json", "metrics.json", "epochs.csv", "predictions_val.csv", "predictions_test.csv",
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


def default_out(head_config, seed):
    """runs/head-<modalities>[-<fusion>]-seed<seed>; fusion only names a two-modality head."""
    name = "-".join(head_config.modalities)
    if len(head_config.modalities) == 2:
        name += f"-{head_config.fusion}"
    return Path("runs") / f"head-{name}-seed{seed}"


def claim_out(out, overwrite, command, flag="--out"):
    """Check before any work that `out` may be written: a new or empty folder, one of our own `command`
    run folders (its config.json says so), or any folder with --overwrite. Only our own file names are
    ever written into it; nothing in it is deleted."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UserError(f"{flag} {out}: a symlink to nothing; give a folder path")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder; give a folder path")
    if not out.is_dir() or overwrite:
        return out
    entries = sorted(p.name for p in out.iterdir())
    if entries and not _is_our_run(out / "config.json", command):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise UserError(f"{flag} {out}: not empty and not a {command} run folder (it holds {shown}); "
                        "choose another --out, or pass --overwrite to write this run's files into it "
                        "(files of the same name are replaced, others are left)")
    return out


def _is_our_run(path, command):
    try:
        config = json.loads(path.read_text()) if path.is_file() and not path.is_symlink() else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and config.get("command") == command and "pipeline_version" in config


def write_csv(path, columns):
    write_atomic(path, lambda tmp: pd.DataFrame(columns).to_csv(tmp, index=False))


def encoders_from_manifest(manifest):
    """What rebuilt the features of a cache: the models' paths as given and content hashes (the manifest's
    `inputs`), pooling, max length, image settings; None for a cache without model records (`write_cache`)."""
    inputs, given = manifest.get("inputs") or {}, (manifest.get("config") or {}).get("embed") or {}
    if not inputs.get("text_model"):
        return None

    def model(name):
        return {"path": given.get(name), "sha256": inputs[name]} if inputs.get(name) else None

    image = dict(inputs["image"])
    return {"text_model": model("text_model"), "clip_model": model("clip_model"), "clip_lora": model("clip_lora"),
            "lora_alpha": inputs.get("lora_alpha"), "pooling": inputs["text"]["pooling"],
            "max_length": inputs["text"]["max_length"], "clip_embedding": image.pop("embedding"), "image": image,
            "dims": manifest["dims"]}


def write_run(out, run, config, encoders=None):
    """Write a `HeadRun` and its resolved `config` (a JSON-able dict) into folder `out`; every file is
    written to a temp file and renamed, so no symlink in `out` is followed.

    `encoders` (see `encoders_from_manifest`) goes into encoders.json with the class names and the
    validation-tuned threshold: all `predict` needs besides the head.
    """
    out = output_folder(out, "--out")
    write_json_atomic(out / "config.json", config)
    if encoders is not None:
        write_json_atomic(out / ENCODERS_NAME, {**encoders, "class_names": list(CLASS_NAMES),
                                                "threshold": run.metrics["test"]["tuned"]["threshold"]})
    write_json_atomic(out / "metrics.json", run.metrics)
    write_csv(out / "epochs.csv", run.fit.history)
    for split, columns in run.predictions.items():
        write_csv(out / f"predictions_{split}.csv", columns)
    if run.temperature is not None:
        # `predict` divides the head's logits by this; the key is documented in docs/evaluation.md.
        config = dict(config, calibration={"method": "temperature", "temperature": run.temperature})
    save_head(out / "head", run.head, extra_config=config)
    plot_training_curves(run.fit.history, run.fit.best_epoch, out / "curves.png")
    plot_confusion_matrices(run.metrics, out / "confusion_matrix.png")
    plot_roc_pr(run.predictions, out / "roc.png", out / "pr.png")
    plot_reliability(run.predictions, out / "reliability.png")
    return out


def resolved_config(command, cache_dir, manifest, **sections):
    """config.json of a run: the command, the cache it read (path, fingerprint, dims, rows) and each config."""
    cache = {"dir": str(cache_dir), "fingerprint": manifest.get("fingerprint"), "dims": manifest["dims"],
             "rows": {name: info.get("rows_embedded") for name, info in manifest["splits"].items()}}
    resolved = {"command": command, "pipeline_version": pipeline.__version__, "cache": cache}
    for name, value in sections.items():
        resolved[name] = asdict(value) if is_dataclass(value) else value
    return resolved
