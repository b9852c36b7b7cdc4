"""Rows for end-to-end fine-tuning: the same images and titles stage one sees, batched for the Trainer.

Bad images and empty titles follow stage one's policies, but are found before
training starts (a Trainer cannot drop rows mid-epoch without skewing the loss
and the evaluation set), so every epoch and every evaluation sees exactly the
same rows. A half-post kept by `--on-bad-image text-only` or `--on-empty-title
image-only` gets a stand-in (black pixels, an empty title) and a presence mask
(`has_text`, `has_image`): the head puts its missing vector there.
"""

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.halves import surviving_half
from pipeline.data.images import BadImage, load_image
from pipeline.model.batch import prepare_batch


class E2ERows(Dataset):
    """Kept rows of one split: index -> {"text", "pixels" (S, S, 3) uint8 or None, "labels", "row"}."""

    def __init__(self, rows, keep, image_root, settings, no_image=()):
        self.rows = rows
        self.keep = keep  # input row indices that passed the image and title checks (or are kept as halves)
        self.image_root = image_root
        self.settings = settings
        self.no_image = set(no_image)  # kept rows whose image is not used (text-only)

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, index):
        row = self.keep[index]
        pixels = None if row in self.no_image else load_image(self.image_root, self.rows.image_paths[row],
                                                                  self.settings)
        return {"text": self.rows.texts[row], "pixels": pixels, "labels": int(self.rows.labels[row]), "row": row}


@dataclass
class MultimodalDataCollator:
    """The Trainer's collator: stage one's batch preparation (`prepare_batch`), presence masks and the labels."""

    tokenizer: object
    settings: object
    max_length: int = 128

    def __call__(self, features):
        size = self.settings.size
        blank = np.zeros((size, size, 3), np.uint8)  # a missing image's stand-in; the head never sees its vector
        pixels = torch.from_numpy(np.stack([blank if f["pixels"] is None else f["pixels"] for f in features]))
        batch = prepare_batch(self.tokenizer, [f["text"] for f in features], pixels, self.max_length, self.settings)
        batch["has_text"] = torch.tensor([bool(f["text"]) for f in features])
        batch["has_image"] = torch.tensor([f["pixels"] is not None for f in features])
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch


def _check_image(args):
    image_root, relative, settings = args
    try:
        load_image(image_root, relative, settings)
        return None
    except BadImage as error:
        return error.reason


def scan_rows(rows, image_root, settings, workers, text_only=False, image_only=False):
    """(rows to keep, [(row, reason)] to skip, {row: (missing half, reason)} of the kept half-posts).

    A row whose image does not load is kept text-only with `text_only`; one with an empty title is kept
    image-only with `image_only`; a row with neither is skipped (the rule: `pipeline.data.halves`)."""
    jobs = [(image_root, path, settings) for path in rows.image_paths]
    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(_check_image, jobs, chunksize=64))
    else:
        reasons = [_check_image(job) for job in jobs]
    keep, skipped, halves = [], [], {}
    for row, reason in enumerate(reasons):
        survivor = surviving_half(bool(rows.texts[row]), reason, text_only, image_only)
        if not survivor.kept:
            skipped.append((row, survivor.reason))
            continue
        keep.append(row)
        if survivor.missing:
            halves[row] = (survivor.missing, survivor.reason)
    return keep, skipped, halves
