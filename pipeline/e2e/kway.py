"""finetune-e2e with more than two classes: class weights, scores and the run folder for K > 2.

Two classes go through stage two's own functions exactly as before (train/losses.py, train/metrics.py,
train/run_folder.py). Those are binary today; until stage two scores K classes itself, this module does it
for end-to-end runs with K > 2 classes: argmax decisions (no threshold to tune), accuracy, macro and weighted
F1, per-class precision/recall/F1/support and the K x K confusion (rows = true class), by scikit-learn's
definitions. It writes config.json, metrics.json, epochs.csv, predictions_<split>.csv (id, label,
prob_<class name> per class, pred, pred_name) and head/; run.json, encoders.json and the plots, whose writers
are binary today, are not written for K > 2 (so `predict` and `report` do not read such a run yet).
"""

import numpy as np
import pandas as pd
import torch

from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic
from pipeline.model.head import save_head
from pipeline.train.config import WEIGHT_MODES

KWAY_STOP_METRICS = ("f1_macro", "accuracy", "loss")  # those a K-way run reports on val at every epoch


def class_weights(labels, mode, names):
    """(K,) float32 loss weights from the training labels: balanced n / (K * count), none, or K numbers."""
    labels = np.asarray(labels, dtype=np.int64)
    if mode == "none":
        return torch.ones(len(names))
    if mode == "balanced":
        counts = np.bincount(labels, minlength=len(names))
        missing = [name for name, count in zip(names, counts) if count == 0]
        if missing:
            raise UserError(f"the training split has no {', '.join(missing)} rows, so balanced class weights "
                            "would divide by zero; add training rows of every class")
        return torch.tensor(labels.size / (len(names) * counts), dtype=torch.float32)
    try:
        values = [float(part) for part in str(mode).split(",")]
    except ValueError:
        values = []
    if len(values) != len(names) or not all(0 < value < float("inf") for value in values):
        raise UserError(f"--class-weights {mode!r}: not a weighting for {len(names)} classes; use {WEIGHT_MODES}, "
                        f"in class order ({', '.join(names)})")
    return torch.tensor(values, dtype=torch.float32)


def check_stop_metric(metric):
    if metric not in KWAY_STOP_METRICS:
        raise UserError(f"--metric {metric}: with more than two classes, stop on one of "
                        f"{', '.join(KWAY_STOP_METRICS)}")


def metrics_from_logits(eval_prediction):
    """The Trainer's compute_metrics for K classes: accuracy and macro-F1 of the argmax."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.asarray(eval_prediction.label_ids)
    pred = np.asarray(eval_prediction.predictions).argmax(axis=1)
    return {"accuracy": float(accuracy_score(labels, pred)),
            "f1_macro": float(f1_score(labels, pred, average="macro", zero_division=0))}


def split_metrics(labels, probs, names, loss):
    """One split's K-way metrics at the argmax decision."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    classes = list(range(len(names)))
    pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "f1_macro": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(labels, pred, labels=classes, average="weighted", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(names)},
        "confusion": confusion_matrix(labels, pred, labels=classes).tolist(),
        "loss": float(loss), "rows": int(len(labels)), "decision": "argmax",
    }


def predictions(ids, labels, probs, names):
    pred = probs.argmax(axis=1)
    columns = {"id": ids, "label": labels}
    columns.update({f"prob_{name}": probs[:, i] for i, name in enumerate(names)})
    columns.update({"pred": pred, "pred_name": np.asarray(names, dtype=object)[pred]})
    return columns


def write_kway_run(out, run, config, names):
    """The K-way run folder (see the module's docstring); `run` is a train.run_folder.HeadRun."""
    out = output_folder(out, "--out")
    write_json_atomic(out / "config.json", config)
    write_json_atomic(out / "metrics.json", run.metrics)
    write_atomic(out / "epochs.csv", lambda tmp: pd.DataFrame(run.fit.history).to_csv(tmp, index=False))
    for split, columns in run.predictions.items():
        write_atomic(out / f"predictions_{split}.csv", lambda tmp, c=columns: pd.DataFrame(c).to_csv(tmp, index=False))
    save_head(out / "head", run.head, extra_config={**config, "class_names": list(names)})
    return out


def shown(metrics):
    return f"accuracy {metrics['accuracy']:.4f}, f1_macro {metrics['f1_macro']:.4f}, loss {metrics['loss']:.4f}"
