"""`predict`'s settings, without torch: flags and `--help` are built from these."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import device_name, existing, help_field, one_of, validate, whole
from pipeline.data.images import DEFAULT_MAX_PIXELS
from pipeline.embed.config import BAD_IMAGE_POLICIES, EMPTY_TITLE_POLICIES
from pipeline.model.config import POOLINGS


def parse_threshold(value):
    """'run' (the run's decision threshold), 'tuned' (its validation-tuned one) or a number in [0, 1]; None
    when it is neither."""
    if value in ("run", "tuned"):
        return value
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= 1 else None


@dataclass(frozen=True)
class PredictConfig:
    """How a run folder's classifier is applied to a TSV of posts."""

    run: str = help_field("run folder of train-head or finetune-e2e (with head/ and encoders.json)")
    input: str = help_field("TSV of posts: clean_title or title, local_image_path or id; the label column optional")
    out: str = help_field("CSV to write: one line per input row, in input order")
    image_root: str = help_field("folder local_image_path is relative to (default: the input's folder)", default=None)
    image_pattern: str = help_field("image file name when the TSV has no local_image_path column", default="{id}.jpg")
    label_column: str = help_field("the input's label column, for metrics when it has one (default: the column "
                                   "the run learned, as its run.json names it)", default=None)
    threshold: str = help_field(
        "'run' (the run's decision threshold, as in its predictions files: the val-tuned one when val has enough "
        "rows of each class, else 0.5; see docs/outputs.md), 'tuned' (the val-tuned one regardless) or a number "
        "in [0, 1]; two-class runs only (more classes: the most probable class)", default="run")
    text_model: str = help_field("the run's text model, if it moved (default: the path the run recorded)",
                                 default=None)
    clip_model: str = help_field("the run's image model folder, if it moved", default=None, aliases=("--image-model",))
    clip_lora: str = help_field("the run's image model checkpoint, if it moved", default=None,
                                aliases=("--image-lora",))
    pooling: str = help_field(f"text pooling: {', '.join(POOLINGS)} (default: the run's)", default=None)
    allow_other_encoders: bool = help_field(
        "predict even when the encoders differ from those the head was trained on (a warning goes into "
        "<out>.meta.json; the probabilities are then not to be trusted)", default=False)
    overwrite: bool = help_field("replace --out even when it is an input, a file of a run folder or cache, or a "
                                 "file predict did not write (without it those are refused)", default=False)
    cache_dir: str = help_field("keep the embedded parts here, so an interrupted run resumes (default: a "
                                "temporary folder beside --out, removed at the end)", default=None)
    device: str = help_field("auto, cpu, cuda or cuda:N", default="auto")
    batch_size: int = help_field("rows per forward pass", default=64)
    num_workers: int = help_field("DataLoader worker processes for image decoding (-1 = auto, as embed)", default=-1)
    on_bad_image: str = help_field(
        f"what a row with a missing or bad image does: {', '.join(BAD_IMAGE_POLICIES)} (text-only: scored from "
        "its title, status ok_text_only, when the run's head has missing vectors; skip: the row gets its reason "
        "as status and no probability)", default="text-only")
    on_empty_title: str = help_field(
        f"what a row with an empty title does: {', '.join(EMPTY_TITLE_POLICIES)} (image-only: scored from its "
        "image, status ok_image_only, when the run's head has missing vectors)", default="image-only")
    text_only: bool = help_field(
        "score every row from its title alone and read no image (status ok_text_only, reason "
        "text_only_requested); without it, an input none of whose images is found is refused", default=False)
    part_rows: int = help_field("input rows per part (the unit of resuming and of memory)", default=4096)
    max_pixels: int = help_field("images with more pixels are refused without decoding", default=DEFAULT_MAX_PIXELS)

    def __post_init__(self):
        validate(
            existing(self, "run"), existing(self, "input", kind="path"), existing(self, "text_model"),
            f"--input {self.input}: a folder; give the TSV file of posts" if Path(self.input).is_dir() else None,
            existing(self, "clip_model"), existing(self, "clip_lora", kind="path"),
            None if self.pooling is None else one_of(self, "pooling", POOLINGS),
            None if parse_threshold(self.threshold) is not None else
            f"--threshold {self.threshold!r}: not a threshold; use 'run', 'tuned' or a number from 0 to 1",
            device_name(self), one_of(self, "on_bad_image", BAD_IMAGE_POLICIES),
            one_of(self, "on_empty_title", EMPTY_TITLE_POLICIES),
            *(whole(self, name, minimum) for name, minimum in (
                ("batch_size", 1), ("num_workers", -1), ("part_rows", 1), ("max_pixels", 1))),
        )
