"""Class weights and the class-weighted cross-entropy shared by head training and end-to-end fine-tuning.

Fakeddit is imbalanced; weighting each class by n / (classes * count) makes
both classes contribute equally to the loss, so the head does not learn to
predict the majority class.
"""

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.splits import CLASS_NAMES
from pipeline.errors import UserError
from pipeline.train.config import WEIGHT_MODES, explicit_class_weights


def class_weights(labels, mode="balanced"):
    """(2,) float32 weights for labels 0 (fake) and 1 (real), from the *training* labels."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise UserError(f"labels must be 0 (fake) or 1 (real); found {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    if mode == "none":
        return torch.ones(len(CLASS_NAMES))
    if mode == "balanced":
        return torch.tensor(_balanced(labels), dtype=torch.float32)
    return torch.tensor(_explicit(mode), dtype=torch.float32)


def _balanced(labels):
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    missing = [name for name, count in zip(CLASS_NAMES, counts) if count == 0]
    if missing:
        raise UserError(
            f"the training split has no {' or '.join(missing)} rows ({labels.size} rows in all), so balanced "
            "class weights would divide by zero and the head could learn only one answer; "
            "embed a training split with both classes"
        )
    return labels.size / (len(CLASS_NAMES) * counts)


def _explicit(mode):
    values = explicit_class_weights(mode)
    if values is None:
        raise UserError(f"--class-weights {mode!r}: not a weighting; use {WEIGHT_MODES} (fake first, then real)")
    return values


def weighted_cross_entropy(logits, labels, weights=None):
    """Mean cross-entropy over the batch, each row weighted by its class (sum w_i * loss_i / sum w_i)."""
    return F.cross_entropy(logits, labels, weight=None if weights is None else weights.to(logits.device))
