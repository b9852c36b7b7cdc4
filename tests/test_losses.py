import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.train.losses import class_weights, weighted_cross_entropy


def test_balanced_weights_follow_the_formula():
    labels = np.array([0] * 6 + [1] * 2)  # n = 8, 2 classes: 8 / (2 * 6), 8 / (2 * 2)
    assert torch.allclose(class_weights(labels, "balanced"), torch.tensor([8 / 12, 8 / 4]))


def test_none_gives_ones_and_plain_cross_entropy():
    weights = class_weights(np.array([0, 0, 0, 1]), "none")
    assert weights.tolist() == [1.0, 1.0]
    logits, labels = torch.randn(10, 2), torch.randint(0, 2, (10,))
    assert torch.allclose(weighted_cross_entropy(logits, labels, weights), F.cross_entropy(logits, labels))


def test_explicit_weights_and_weighted_mean():
    assert class_weights([0, 1], "1.0,2.5").tolist() == [1.0, 2.5]
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 0])
    weights = torch.tensor([1.0, 3.0])
    per_row = F.cross_entropy(logits, labels, reduction="none")
    expected = (per_row * weights[labels]).sum() / weights[labels].sum()
    assert torch.allclose(weighted_cross_entropy(logits, labels, weights), expected)


@pytest.mark.parametrize("mode", ["2.0", "1,-1", "a,b", "1,2,3", "balance"])
def test_bad_explicit_weights_list_the_choices(mode):
    with pytest.raises(UserError, match="balanced, none"):
        class_weights([0, 1], mode)


def test_one_class_training_split_is_a_clear_error():
    with pytest.raises(UserError, match="no real rows.*divide by zero"):
        class_weights(np.zeros(50, dtype=np.int64), "balanced")


def test_labels_outside_0_1_are_rejected():
    with pytest.raises(UserError, match="0 \\(fake\\) or 1 \\(real\\)"):
        class_weights([0, 1, 2], "none")
