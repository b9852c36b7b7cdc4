"""Stage two's training settings, without torch: flags and `--help` are built from these."""

import re
from dataclasses import dataclass

from pipeline.config import device_name, help_field, number, one_of, validate, whole
from pipeline.train.bootstrap import MAX_RESAMPLES
from pipeline.train.calibration import CALIBRATIONS

STOP_METRICS = ("f1_macro", "accuracy", "roc_auc", "pr_auc", "f1_fake", "f1_real", "loss")
# Any class's F1 stops too: f1_<class name> (f1_fake, f1_real for 2-way); checked against the cache's classes.
MORE_STOP_METRICS = ("f1_weighted", "f1_<class name>")
_CLASS_F1 = re.compile(r"f1_[A-Za-z0-9_.-]{1,64}")
WEIGHT_MODES = "balanced, none, auto (= balanced), or one positive number per class in label order such as 1.0,2.5"


def explicit_class_weights(mode):
    """'w_0,w_1[,...]' as K >= 2 positive floats (one per class, in label order), or None when `mode` is not
    of that form; whether K matches the cache's classes is checked when the labels are known (losses.py)."""
    try:
        values = [float(part) for part in str(mode).split(",")]
    except ValueError:
        return None
    if len(values) < 2 or not all(value > 0 and value != float("inf") for value in values):
        return None
    return values


def class_weights_mode(config, name="class_weights"):
    value = getattr(config, name)
    if value in ("balanced", "auto", "none") or explicit_class_weights(value) is not None:
        return None
    return f"--class-weights {value!r}: not a weighting; use {WEIGHT_MODES} (fake first, then real for 2-way)"


def stop_metric(config, name="metric"):
    value = getattr(config, name)
    if value in STOP_METRICS or _CLASS_F1.fullmatch(str(value)):
        return None
    return (f"--metric {value!r}: not a stopping metric; use one of {', '.join(STOP_METRICS)}, "
            f"{', '.join(MORE_STOP_METRICS)}")


@dataclass(frozen=True)
class TrainConfig:
    """How a head is trained: optimiser, early stopping, class weights, seed and device."""

    lr: float = help_field("AdamW learning rate", default=2e-3)
    weight_decay: float = help_field("AdamW weight decay", default=0.01)
    batch_size: int = help_field("rows per optimiser step", default=256)
    max_epochs: int = help_field("stop after this many epochs even if still improving", default=30)
    patience: int = help_field("stop after this many epochs without a better validation metric", default=4)
    metric: str = help_field(f"validation metric for early stopping: {', '.join(STOP_METRICS)}, "
                             f"{', '.join(MORE_STOP_METRICS)} (loss: lower is better)", default="f1_macro")
    class_weights: str = help_field(f"class weights of the loss: {WEIGHT_MODES}; "
                                    "balanced = n / (K * count) on train", default="balanced")
    modality_dropout: float = help_field(
        "share of training rows with both modalities that lose one of them (text or image, evenly) in each epoch, "
        "so a two-modality head learns to score posts with a missing image or title; 0 disables", default=0.5)
    seed: int = help_field("seed for initialisation, dropout and batch order", default=0)
    device: str = help_field("auto (cuda if available), cpu, cuda or cuda:N", default="auto")
    threads: int = help_field("torch CPU threads; 0 = auto: one on the CPU, where a second thread gains little "
                              "and a busy machine makes threads wait on each other (docs/benchmarks.md)", default=0)
    bootstrap: int = help_field("bootstrap resamples for the 95%% intervals (ci95) of every headline metric; "
                                f"0 disables them; at most {MAX_RESAMPLES}", default=1000)
    calibrate: str = help_field("temperature: fit one temperature on validation (stored with the head, applied to "
                                "val/test and by predict); off: report the raw probabilities", default="off")

    def __post_init__(self):
        validate(
            *(whole(self, name, minimum) for name, minimum in
              (("batch_size", 1), ("max_epochs", 1), ("patience", 1), ("threads", 0), ("bootstrap", 0))),
            number(self, "lr", above=0, below=10), number(self, "weight_decay", at_least=0, below=10),
            number(self, "modality_dropout", at_least=0, below=1),
            stop_metric(self), one_of(self, "calibrate", CALIBRATIONS), device_name(self),
            class_weights_mode(self), _at_most(self, "bootstrap", MAX_RESAMPLES),
        )


def _at_most(config, name, maximum):
    value = getattr(config, name)
    if isinstance(value, int) and not isinstance(value, bool) and value > maximum:
        return (f"--{name} {value}: at most {maximum} (the cap on resamples; more would run for hours and "
                "change the intervals in the third decimal at best); give a smaller number")
    return None
