"""Class weights and the class-weighted cross-entropy shared by head training and end-to-end fine-tuning.

Fakeddit is imbalanced (its 6-way labels far more so); weighting each class by n / (K * count) makes every
class contribute equally to the loss, so the head does not learn to predict the majority class.
"""

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.splits import CLASS_NAMES
from pipeline.errors import UserError
from pipeline.train.config import WEIGHT_MODES, explicit_class_weights


def class_weights(labels, mode="balanced", class_names=CLASS_NAMES):
    """(K,) float32 weights for labels 0..K-1 (K = len(class_names)), from the *training* labels."""
    labels = np.asarray(labels)
    num_classes = len(class_names)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        found = sorted(set(labels.tolist()) - set(range(num_classes)))[:5]
        if num_classes == 2:
            raise UserError(f"labels must be 0 (fake) or 1 (real); found {found}")
        raise UserError(f"labels must be 0..{num_classes - 1} ({', '.join(class_names)}); found {found}")
    if mode == "none":
        return torch.ones(num_classes)
    if mode in ("balanced", "auto"):
        return torch.tensor(_balanced(labels, class_names), dtype=torch.float32)
    return torch.tensor(_explicit(mode, class_names), dtype=torch.float32)


def _balanced(labels, class_names):
    counts = np.bincount(labels, minlength=len(class_names))
    missing = [name for name, count in zip(class_names, counts) if count == 0]
    if missing:
        raise UserError(
            f"the training split has no {' or '.join(missing)} rows ({labels.size} rows in all), so balanced "
            "class weights would divide by zero and the head could learn only one answer; "
            f"embed a training split with {'both classes' if len(class_names) == 2 else 'every class'}"
        )
    return labels.size / (len(class_names) * counts)


def _explicit(mode, class_names):
    values = explicit_class_weights(mode)
    order = "fake first, then real" if tuple(class_names) == CLASS_NAMES else \
        f"in label order: {', '.join(class_names)}"
    if values is None or len(values) != len(class_names):
        given = "" if values is None else f" gives {len(values)} numbers for {len(class_names)} classes;"
        raise UserError(f"--class-weights {mode!r}:{given} not a weighting; use {WEIGHT_MODES} ({order})")
    return values


def weighted_cross_entropy(logits, labels, weights=None):
    """Mean cross-entropy over the batch, each row weighted by its class (sum w_i * loss_i / sum w_i)."""
    return F.cross_entropy(logits, labels, weight=None if weights is None else weights.to(logits.device))
