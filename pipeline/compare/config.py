"""The settings of `compare`, without torch: flags and `--help` are built from these."""

from dataclasses import dataclass

from pipeline.config import help_field, one_of, validate, whole

THRESHOLDS = ("run", "0.5", "tuned")


@dataclass(frozen=True)
class CompareConfig:
    """Which run the others are measured against, and how the paired bootstrap is drawn."""

    reference: str = help_field("the run the others are compared with, as given or by its folder name; "
                                "None means the first run", default=None)
    bootstrap: int = help_field("paired-bootstrap resamples for the 95%% intervals and p-values", default=1000)
    seed: int = help_field("seed of the resampled rows; None means the reference run's training seed (as ablate "
                           "seeds each seed's comparison), 0 when its config.json has none", default=None)
    threshold: str = help_field("decision threshold of each run: run (the one its run record decides at, as its "
                                "predictions files and predict do), 0.5 (as ablate compares) or tuned (each run's "
                                "threshold tuned on its validation split, whatever the rule)", default="run")

    def __post_init__(self):
        validate(whole(self, "bootstrap", 1), one_of(self, "threshold", THRESHOLDS),
                 None if self.seed is None else whole(self, "seed", 0))
