"""Rows for end-to-end fine-tuning: the same images and titles stage one sees, batched for the Trainer.

Bad images follow stage one's policy, but are found before training starts (a
Trainer cannot drop rows mid-epoch without skewing the loss and the evaluation
set), so every epoch and every evaluation sees exactly the same rows.
"""

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.images import BadImage, load_image
from pipeline.model.batch import prepare_batch


class E2ERows(Dataset):
    """Good rows of one split: index -> {"text", "pixels" (S, S, 3) uint8, "labels", "row"}."""

    def __init__(self, rows, keep, image_root, settings):
        self.rows = rows
        self.keep = keep  # input row indices that passed the image and title checks
        self.image_root = image_root
        self.settings = settings

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, index):
        row = self.keep[index]
        pixels = load_image(self.image_root, self.rows.image_paths[row], self.settings)
        return {"text": self.rows.texts[row], "pixels": pixels, "labels": int(self.rows.labels[row]), "row": row}


@dataclass
class MultimodalDataCollator:
    """The Trainer's collator: stage one's batch preparation (`prepare_batch`) plus the labels."""

    tokenizer: object
    settings: object
    max_length: int = 128

    def __call__(self, features):
        pixels = torch.from_numpy(np.stack([f["pixels"] for f in features]))  # (B, S, S, 3) uint8
        batch = prepare_batch(self.tokenizer, [f["text"] for f in features], pixels, self.max_length, self.settings)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch


def _check_image(args):
    image_root, relative, settings = args
    try:
        load_image(image_root, relative, settings)
        return None
    except BadImage as error:
        return error.reason


def scan_rows(rows, image_root, settings, workers):
    """(rows to keep, [(row, reason)] to skip): empty titles and images that do not load."""
    jobs = [(image_root, path, settings) for path in rows.image_paths]
    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(_check_image, jobs, chunksize=64))
    else:
        reasons = [_check_image(job) for job in jobs]
    keep, skipped = [], []
    for row, reason in enumerate(reasons):
        if not rows.texts[row]:
            reason = "empty_title"
        if reason is None:
            keep.append(row)
        else:
            skipped.append((row, reason))
    return keep, skipped
