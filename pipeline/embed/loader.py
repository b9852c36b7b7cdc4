"""Feeding stage one: image decoding and tokenising in DataLoader workers.

Batches never cross a part boundary (a part is a fixed range of input rows), and
within a part rows are ordered by title length so dynamic padding pads little.
Results are put back in file order by row index before a part is written.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.images import BadImage, load_image_and_sha256
from pipeline.model.batch import tokenize_titles


@dataclass
class RowBatch:
    """What a worker hands the main process for one batch."""

    rows: list  # input row indices, in batch order
    good: list  # positions in `rows` whose image loaded
    bad: list  # (row, reason) for the rest
    pixels: torch.Tensor  # (len(good), S, S, 3) uint8
    text: dict  # tokenizer output for the good rows, padded to the longest
    truncated: list = field(default_factory=list)  # good rows whose title was cut at max_length tokens
    sha256: list = field(default_factory=list)  # SHA-256 hex of each good row's image file (read once, by the worker)

    def pin_memory(self):
        self.pixels = self.pixels.pin_memory()
        self.text = {k: v.pin_memory() for k, v in self.text.items()}
        return self


class ImageRows(Dataset):
    """Row index -> (row, (S, S, 3) uint8 pixels or None, skip reason or None, image SHA-256 or None)."""

    def __init__(self, image_root, image_paths, settings):
        self.image_root = image_root
        self.image_paths = image_paths
        self.settings = settings

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, row):
        try:
            pixels, digest = load_image_and_sha256(self.image_root, self.image_paths[row], self.settings)
            return row, pixels, None, digest
        except BadImage as error:
            return row, None, error.reason, None


class Collate:
    """Stacks pixels and tokenises titles with padding to the batch's longest."""

    def __init__(self, texts, tokenizer, max_length, size):
        self.texts = texts
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.size = size

    def __call__(self, items):
        rows = [row for row, _, _, _ in items]
        good = [i for i, (_, pixels, _, _) in enumerate(items) if pixels is not None]
        bad = [(row, reason) for row, pixels, reason, _ in items if pixels is None]
        truncated = []
        if good:
            pixels = torch.from_numpy(np.stack([items[i][1] for i in good]))
            titles = [self.texts[rows[i]] for i in good]
            text = tokenize_titles(self.tokenizer, titles, self.max_length)
            # Tokenised again, uncut, only to count the cut ones: cheap next to decoding the images.
            full = self.tokenizer(titles, truncation=False, return_attention_mask=False)["input_ids"]
            truncated = [rows[i] for i, ids in zip(good, full) if len(ids) > self.max_length]
        else:
            pixels = torch.empty((0, self.size, self.size, 3), dtype=torch.uint8)
            text = {}
        return RowBatch(rows=rows, good=good, bad=bad, pixels=pixels, text=text, truncated=truncated,
                        sha256=[items[i][3] for i in good])


def plan_batches(rows_per_part, texts, batch_size):
    """Batches of row indices: per part, longest titles first, never crossing parts."""
    batches = []
    for rows in rows_per_part:
        rows = sorted(rows, key=lambda row: -len(texts[row]))
        batches.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    return batches


def make_loader(dataset, collate, batches, num_workers, pin_memory):
    return DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
