"""finetune-e2e's Trainer hooks for more than two classes: the metric it stops on and the metrics it logs
at every evaluation (accuracy and macro-F1 of the argmax). The run's own scoring, run folder and report are
stage two's (train/multiclass.py, train/run_folder.py), as for two classes."""

import numpy as np

from pipeline.errors import UserError

KWAY_STOP_METRICS = ("f1_macro", "accuracy", "loss")  # those a K-way run reports on val at every epoch


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
