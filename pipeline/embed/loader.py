"""Feeding stage one: image decoding and tokenising, in DataLoader workers or, with none, on every core
in turn with the encoders (in_turn.py).

Batches never cross a part boundary (a part is a fixed range of input rows), and
within a part rows are ordered by title length so dynamic padding pads little.
Results are put back in file order by row index before a part is written.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.halves import BOTH, IMAGE, TEXT, surviving_half
from pipeline.data.images import BadImage, load_image_and_sha256
from pipeline.data.phash import perceptual_hash
from pipeline.embed.in_turn import DecodedInTurn
from pipeline.model.batch import tokenize_titles


@dataclass
class RowBatch:
    """What a worker hands the main process for one batch."""

    rows: list  # input row indices, in batch order
    good: list  # positions in `rows` whose image loaded
    bad: list  # (row, reason) for the rows that are not kept at all
    pixels: torch.Tensor  # (len(good), S, S, 3) uint8
    text: dict  # tokenizer output for the rows at `titled`, padded to the longest
    truncated: list = field(default_factory=list)  # tokenised rows whose title was cut at max_length tokens
    titled: list = field(default_factory=list)  # positions in `rows` whose title is embedded
    missing: dict = field(default_factory=dict)  # kept row -> ("image" or "text", reason): a half-post
    sha256: dict = field(default_factory=dict)  # row -> SHA-256 hex of its image file (read once, by the worker)
    phash: dict = field(default_factory=dict)  # row -> phash.perceptual_hash of its decoded pixels (3 ints)

    def pin_memory(self):
        self.pixels = self.pixels.pin_memory()
        self.text = {k: v.pin_memory() for k, v in self.text.items()}
        return self


class ImageRows(Dataset):
    """Row index -> (row, (S, S, 3) uint8 pixels or None, skip reason or None, image SHA-256 or None,
    `phash.perceptual_hash` of the pixels or None): all the per-image work, where the decoding runs.

    `no_image` maps rows whose image is known to be unusable (a placeholder kept text-only) to the reason;
    they are not decoded.
    """

    def __init__(self, image_root, image_paths, settings, no_image=None):
        self.image_root = image_root
        self.image_paths = image_paths
        self.settings = settings
        self.no_image = no_image or {}

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, row):
        if row in self.no_image:
            return row, None, self.no_image[row], None, None
        try:
            pixels, digest = load_image_and_sha256(self.image_root, self.image_paths[row], self.settings)
        except BadImage as error:
            return row, None, error.reason, None, None
        return row, pixels, None, digest, perceptual_hash(pixels)


class Collate:
    """Stacks pixels and tokenises titles with padding to the batch's longest.

    Which half of a row survives is `surviving_half`'s rule: a row whose image failed is kept text-only
    when `text_only` or when it is one of `no_image_rows` (a placeholder kept text-only); a row without
    a title is kept image-only when `image_only` (stage one leaves such rows out before loading
    otherwise). A row with neither is bad.
    """

    def __init__(self, texts, tokenizer, max_length, size, text_only=False, no_image_rows=(), image_only=True):
        self.texts = texts
        self.no_image_rows = no_image_rows
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.size = size
        self.text_only = text_only
        self.image_only = image_only

    def __call__(self, items):
        rows = [item[0] for item in items]
        good, titled, bad, missing = [], [], [], {}
        for i, (row, pixels, reason, _, _) in enumerate(items):
            survivor = surviving_half(bool(self.texts[row]), None if pixels is not None else reason,
                                      self.text_only or row in self.no_image_rows, self.image_only)
            if not survivor.kept:
                bad.append((row, survivor.reason))
                continue
            if survivor.half in (BOTH, IMAGE):
                good.append(i)
            if survivor.half in (BOTH, TEXT):
                titled.append(i)
            if survivor.missing:
                missing[row] = (survivor.missing, survivor.reason)
        truncated, text = [], {}
        if titled:
            titles = [self.texts[rows[i]] for i in titled]
            text = tokenize_titles(self.tokenizer, titles, self.max_length)
            # Tokenised again, uncut, only to count the cut ones: cheap next to decoding the images.
            full = self.tokenizer(titles, truncation=False, return_attention_mask=False)["input_ids"]
            truncated = [rows[i] for i, ids in zip(titled, full) if len(ids) > self.max_length]
        if good:
            pixels = torch.from_numpy(np.stack([items[i][1] for i in good]))
        else:
            pixels = torch.empty((0, self.size, self.size, 3), dtype=torch.uint8)
        return RowBatch(rows=rows, good=good, bad=bad, pixels=pixels, text=text, truncated=truncated,
                        titled=titled, missing=missing, sha256={items[i][0]: items[i][3] for i in good},
                        phash={items[i][0]: items[i][4] for i in good})


def plan_batches(rows_per_part, texts, batch_size):
    """Batches of row indices: per part, longest titles first, never crossing parts."""
    batches = []
    for rows in rows_per_part:
        rows = sorted(rows, key=lambda row: -len(texts[row]))
        batches.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    return batches


def make_loader(dataset, collate, batches, num_workers, pin_memory):
    """Batches from `num_workers` worker processes; with none, decoded on every core in turn with the
    encoders (in_turn.py)."""
    if num_workers == 0:
        return DecodedInTurn(dataset, collate, batches)
    return DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=False, prefetch_factor=4,
    )
