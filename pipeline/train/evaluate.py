"""Score a trained head on val and test: one forward pass per split, optional temperature scaling (fitted
on val), then the metrics and predictions of metrics.py (K = 2: thresholds) or multiclass.py (K > 2: the
argmax). The loss stays the model's own (uncalibrated) loss.
"""

import torch

from pipeline.train.calibration import (
    apply_temperature,
    apply_temperature_logits,
    brier_score,
    expected_calibration_error,
    fit_usable_temperature,
    fit_usable_temperature_logits,
)
from pipeline.train.losses import weighted_cross_entropy
from pipeline.train.metrics import presence_groups, score_probabilities
from pipeline.train.multiclass import multiclass_brier, score_multiclass, top_label_ece

EVAL_BATCH = 8192  # evaluation needs no gradients, so bigger batches are just faster


@torch.no_grad()
def logits_of(model, features):
    """(N, K) logits in eval mode, in batches of EVAL_BATCH rows."""
    model.eval()
    rows = next(iter(features.values())).shape[0]
    return torch.cat([model({k: v[start:start + EVAL_BATCH] for k, v in features.items()})
                      for start in range(0, rows, EVAL_BATCH)])


def scored(logits, labels, weights):
    """(prob_real as float64 NumPy (N,), class-weighted loss) of (N, 2) logits."""
    loss = weighted_cross_entropy(logits, labels, weights).item()
    return torch.softmax(logits.float(), dim=1)[:, 1].double().cpu().numpy(), loss


def scored_k(logits, labels, weights):
    """((N, K) probabilities as float64 NumPy, class-weighted loss) of (N, K) logits."""
    loss = weighted_cross_entropy(logits, labels, weights).item()
    # In float64, so that each row's K probabilities sum to 1 within 1e-12 in the predictions files.
    return torch.softmax(logits.double(), dim=1).cpu().numpy(), loss


def evaluate(model, splits, data, weights, config, class_names):
    """(metrics, predictions, temperature) of val and test (see score_probabilities / score_multiclass).

    With `config.calibrate == "temperature"` one temperature is fitted on validation and every reported
    probability is calibrated (K = 2: the threshold is then tuned on calibrated probabilities); each split's
    metrics get a `calibration` dict with ECE and Brier before and after.
    """
    logits = {name: logits_of(model, data[name][0]) for name in ("val", "test")}  # one forward pass per split
    binary = len(class_names) == 2
    outputs = {name: (scored if binary else scored_k)(logits[name], data[name][1], weights) for name in logits}
    labels = {name: splits[name].labels for name in outputs}
    probs = {name: prob for name, (prob, _) in outputs.items()}
    temperature, calibration = None, {}
    if config.calibrate == "temperature":
        if binary:  # logit_real - logit_fake, what temperature scaling divides
            values = {name: (v.double()[:, 1] - v.double()[:, 0]).cpu().numpy() for name, v in logits.items()}
            fit_t, apply_t, ece, brier = fit_usable_temperature, apply_temperature, expected_calibration_error, \
                brier_score
        else:  # the full logits
            values = {name: v.double().cpu().numpy() for name, v in logits.items()}
            fit_t, apply_t, ece, brier = fit_usable_temperature_logits, apply_temperature_logits, top_label_ece, \
                multiclass_brier
        temperature, fitted, warning = fit_t(values["val"], labels["val"])
        calibrated = {name: apply_t(value, temperature) for name, value in values.items()}
        calibration = {name: {
            "method": "temperature", "temperature": temperature, "fitted_temperature": fitted,
            **({"warning": warning} if warning else {}),
            "ece_before": ece(labels[name], probs[name]), "ece_after": ece(labels[name], calibrated[name]),
            "brier_before": brier(labels[name], probs[name]),
            "brier_after": brier(labels[name], calibrated[name])} for name in outputs}
        probs = calibrated
    common = dict(ids={name: splits[name].ids for name in outputs}, labels=labels, probs=probs,
                  losses={name: loss for name, (_, loss) in outputs.items()},
                  groups={name: presence_groups(splits[name].has_text, splits[name].has_image) for name in outputs},
                  class_weights=weights.tolist(), bootstrap=config.bootstrap, seed=config.seed,
                  train_labels=splits["train"].labels)
    if binary:
        metrics, predictions = score_probabilities(**common, class_names=class_names)
    else:
        metrics, predictions = score_multiclass(**common, class_names=class_names)
    for name, values in calibration.items():
        metrics[name]["calibration"] = values
    return metrics, predictions, temperature
