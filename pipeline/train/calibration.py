"""Are the probabilities right? Expected calibration error, Brier score and temperature scaling.

- ECE: rows binned by confidence (the predicted class's probability, max(p, 1 - p))
  into 15 equal-width bins; the row-weighted mean of |accuracy - confidence| per bin.
- Brier score: mean (prob_real - label)^2.
- Temperature scaling (Guo et al., 2017): one T > 0 divides the logits,
  prob_real = sigmoid((logit_real - logit_fake) / T), fitted on validation by LBFGS
  on the negative log-likelihood. A monotone map: predictions at 0.5 never change.
  A fit outside TEMPERATURE_RANGE is degenerate, not a calibration: a separable
  validation split drives T towards 0 (every probability 0 or 1), one without
  signal towards infinity (every probability 0.5). Such a T is not used: the
  head keeps T = 1 (its raw probabilities) and the warning goes into metrics.json.
"""

import numpy as np

ECE_BINS = 15
CALIBRATIONS = ("off", "temperature")
TEMPERATURE_RANGE = (0.05, 20.0)  # well outside what a trained head needs (about 0.5-5), well inside the clamps
_CLAMPS = (1e-3, 1e3)  # keep LBFGS's log T finite on a separable split


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

    `margins` are logit_real - logit_fake.
    """
    import torch  # here: this module is imported by code that must not load torch

    margin = torch.as_tensor(np.asarray(margins, dtype=np.float64))
    target = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    return _fitted_temperature(lambda t: torch.nn.functional.binary_cross_entropy_with_logits(margin / t, target))


def _fitted_temperature(loss_at):
    """The T that minimises `loss_at(T)`, optimised as log T (so T stays positive) with LBFGS, clamped."""
    import torch

    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_at(log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*_CLAMPS))


def fit_usable_temperature(margins, labels):
    """(T to use, fitted T, warning or None): the fitted T when the fit has a finite optimum inside
    TEMPERATURE_RANGE, else T = 1 with a warning that says why (a degenerate T would push predict's
    probabilities to 0/1 or to 0.5)."""
    return _usable(fit_temperature(margins, labels), _no_finite_optimum(margins, labels))


def _no_finite_optimum(margins, labels):
    """Why the NLL of sigmoid(margin / T) has no minimum at a finite T > 0, or None. The NLL is convex in
    1/T; its slope at 1/T = 0 is -sum(s) / 2 with s = margin signed by the label (+ real, - fake)."""
    signed = np.asarray(margins, dtype=np.float64) * (2 * np.asarray(labels) - 1)
    if (signed > 0).all():
        return "every validation row is already on its right side of 0.5, so the NLL keeps falling as T " \
               "goes to 0 and every probability towards 0 or 1"
    if signed.sum() <= 0:
        return "the validation margins carry no signal, so the NLL keeps falling as T grows and every " \
               "probability towards 0.5"
    return None


def apply_temperature(margins, temperature):
    """prob_real = sigmoid(margin / T), computed stably."""
    z = np.asarray(margins, dtype=np.float64) / temperature
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def fit_temperature_logits(logits, labels):
    """The T > 0 that minimises the NLL of softmax(logits / T) on these rows: K > 2's temperature, over the
    full (N, K) logits (for K = 2 it is the margin fit above, the same optimum)."""
    import torch

    values = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    target = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    return _fitted_temperature(lambda t: torch.nn.functional.cross_entropy(values / t, target))


def fit_usable_temperature_logits(logits, labels):
    """fit_usable_temperature for (N, K) logits: (T to use, fitted T, warning or None)."""
    fitted = fit_temperature_logits(logits, labels)
    return _usable(fitted, _no_finite_optimum_logits(logits, labels))


def _usable(fitted, why):
    low, high = TEMPERATURE_RANGE
    if why is None and low <= fitted <= high:
        return fitted, fitted, None
    if why is None:
        why = ("the fit drives T towards 0 and every probability towards 0 or 1" if fitted < low else
               "the fit drives T up and every probability towards 0.5")
    return 1.0, fitted, (f"warning: --calibrate temperature: the fit gave T = {fitted:.4g}, a degenerate "
                         f"temperature ({why}; usable: {low} to {high}); not used: the head keeps T = 1 "
                         "(uncalibrated). Calibrate on a larger validation split")


def _no_finite_optimum_logits(logits, labels):
    """As _no_finite_optimum for K classes: the NLL of softmax(beta * z) is convex in beta = 1/T, with slope
    -sum(z_label - mean_k z) at beta = 0; every row strictly right means it falls all the way to beta -> inf."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    own = logits[np.arange(labels.size), labels]
    others = np.where(np.eye(logits.shape[1], dtype=bool)[labels], -np.inf, logits).max(axis=1)
    if (own > others).all():
        return "every validation row is already on its right side, so the NLL keeps falling as T goes to 0 " \
               "and every probability towards 0 or 1"
    if (own - logits.mean(axis=1)).sum() <= 0:
        return "the validation logits carry no signal, so the NLL keeps falling as T grows and every " \
               "probability towards 1/K"
    return None


def apply_temperature_logits(logits, temperature):
    """softmax(logits / T) as float64, computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
