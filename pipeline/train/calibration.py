"""Are the probabilities right? Expected calibration error, Brier score and temperature scaling.

- ECE: rows binned by confidence (the predicted class's probability, max(p, 1 - p))
  into 15 equal-width bins; the row-weighted mean of |accuracy - confidence| per bin.
- Brier score: mean (prob_real - label)^2.
- Temperature scaling (Guo et al., 2017): one T > 0 divides the logits,
  prob_real = sigmoid((logit_real - logit_fake) / T), fitted on validation by LBFGS
  on the negative log-likelihood. A monotone map: predictions at 0.5 never change.
"""

import numpy as np

ECE_BINS = 15
CALIBRATIONS = ("off", "temperature")


def expected_calibration_error(labels, prob_real, bins=ECE_BINS):
    if np.asarray(labels).size == 0:
        return None
    confidence, accuracy, rows = reliability_bins(labels, prob_real, bins)
    return float(np.sum(rows * np.abs(accuracy - confidence)) / rows.sum())


def reliability_bins(labels, prob_real, bins=ECE_BINS):
    """(mean confidence, accuracy, rows) per non-empty confidence bin: the reliability diagram, and the ECE."""
    labels = np.asarray(labels, dtype=np.int64)
    prob_real = np.asarray(prob_real, dtype=np.float64)
    pred = (prob_real > 0.5).astype(np.int64)
    confidence = np.where(pred == 1, prob_real, 1 - prob_real)  # in [0.5, 1]
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    keep = counts > 0
    mean_conf = np.bincount(index, weights=confidence, minlength=bins)[keep] / counts[keep]
    accuracy = np.bincount(index, weights=(pred == labels).astype(np.float64), minlength=bins)[keep] / counts[keep]
    return mean_conf, accuracy, counts[keep]


def brier_score(labels, prob_real):
    labels = np.asarray(labels, dtype=np.float64)
    return float(np.mean((np.asarray(prob_real, dtype=np.float64) - labels) ** 2)) if labels.size else None


def fit_temperature(margins, labels):
    """The T > 0 that minimises the NLL of sigmoid(margin / T) on these (validation) rows.

    `margins` are logit_real - logit_fake. Optimised as log T (so T stays positive) with LBFGS.
    """
    import torch  # here: this module is imported by code that must not load torch

    margin = torch.as_tensor(np.asarray(margins, dtype=np.float64))
    target = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(margin / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(1e-3, 1e3))


def apply_temperature(margins, temperature):
    """prob_real = sigmoid(margin / T), computed stably."""
    z = np.asarray(margins, dtype=np.float64) / temperature
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
