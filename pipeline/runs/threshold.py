"""The one threshold rule: which threshold a run decides at, in its predictions files, metrics, report,
`predict` and `Classifier`.

A row is predicted real when prob_real > the run's decision threshold. That threshold is the one tuned
on the validation split (macro-F1, `train.metrics.tune_threshold`) only when validation has at least
MIN_ROWS_PER_CLASS rows of each class; otherwise a threshold tuned on a handful of rows is noise (0.29
tuned on 20 rows moved posts from one class to the other), and the run decides at 0.5, the argmax of
its two logits.
"""

from dataclasses import dataclass

import numpy as np

MIN_ROWS_PER_CLASS = 30
DEFAULT = 0.5
RULE = (f"the threshold tuned on val when val has at least {MIN_ROWS_PER_CLASS} rows of each class, "
        f"else {DEFAULT}")


@dataclass(frozen=True)
class Decision:
    threshold: float  # the one every file and command of the run decides at
    source: str  # "tuned" (val-tuned) or "default" (0.5)
    tuned: float  # the val-tuned threshold, whether used or not
    tuned_on: str  # the split it was tuned on
    rows_per_class: tuple  # (fake, real) rows of that split

    @classmethod
    def from_dict(cls, values):
        return cls(**{k: values[k] for k in ("threshold", "source", "tuned", "tuned_on")},
                   rows_per_class=tuple(values["rows_per_class"]))

    def as_dict(self):
        return {"threshold": self.threshold, "source": self.source, "tuned": self.tuned, "tuned_on": self.tuned_on,
                "rows_per_class": list(self.rows_per_class), "rule": RULE}


def decide(tuned, rows_per_class, tuned_on="val"):
    """The run's decision from its val-tuned threshold and the (fake, real) row counts it was tuned on."""
    rows_per_class = tuple(int(n) for n in rows_per_class)
    enough = len(rows_per_class) == 2 and min(rows_per_class) >= MIN_ROWS_PER_CLASS
    return Decision(threshold=float(tuned) if enough else DEFAULT, source="tuned" if enough else "default",
                    tuned=float(tuned), tuned_on=tuned_on, rows_per_class=rows_per_class)


def decide_from_labels(tuned, labels, tuned_on="val"):
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)[:2]
    return decide(tuned, counts, tuned_on)
