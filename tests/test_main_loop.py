"""Stage one's main loop (pipeline/embed/main_loop.py) on the CPU: results brought back a batch or two behind
are the same rows and vectors as batch by batch, a NaN stops the run before its rows reach a part, and
the part writer's queue is bounded."""

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.data.images import ImageSettings
from pipeline.embed import main_loop, writer
from pipeline.embed.loader import RowBatch
from pipeline.errors import UserError

SETTINGS = ImageSettings(size=8)
CONFIG = SimpleNamespace(on_bad_image="skip")


class Rows:
    path = "train.tsv"
    image_paths = [f"{i}.jpg" for i in range(100)]

    def line(self, row):
        return row + 2


class RecordingParts:
    def __init__(self):
        self.added, self.skipped = [], []

    def add(self, rows, text, image, truncated=(), missing=None, sha256=None, phash=None):
        self.added.append((list(rows), [None if v is None else v.copy() for v in text],
                           [None if v is None else v.copy() for v in image]))

    def skip(self, row, reason):
        self.skipped.append((row, reason))


def batch(rows, no_image=(), bad=()):
    """A ready-made batch: every row titled; `no_image` positions lack an image, `bad` rows are not kept."""
    kept = [r for r in rows if r not in bad]
    good = [i for i, r in enumerate(kept) if i not in no_image]
    ids = torch.tensor([[r + 1, r + 2] for r in kept])
    pixels = torch.stack([torch.full((8, 8, 3), r, dtype=torch.uint8) for r in (kept[i] for i in good)]) \
        if good else torch.empty((0, 8, 8, 3), dtype=torch.uint8)
    return RowBatch(rows=kept + list(bad), good=good, bad=[(r, "missing_file") for r in bad], pixels=pixels,
                    text={"input_ids": ids, "attention_mask": torch.ones_like(ids)}, titled=list(range(len(kept))))


def encode_from_inputs(model, text_inputs, pixels, settings, scratch=None):
    """Vectors that depend on each row's inputs, so a mix-up of rows or batches would show."""
    text = text_inputs["input_ids"].float().repeat(1, 2)  # (B, 4)
    image = pixels.float().mean(dim=(1, 2)) if pixels is not None else None  # (B, 3)
    return text, image


def batches():
    return [batch([0, 1, 2]), batch([3, 4, 5], no_image=(1,)), batch([6, 7], bad=(8,)), batch([9])]


@pytest.mark.parametrize("lag", [1, 2, 5])
def test_lagged_results_are_the_rows_and_vectors_of_the_batch_by_batch_loop(lag):
    expected, got = RecordingParts(), RecordingParts()
    main_loop.embed_batches(None, batches(), Rows(), CONFIG, SETTINGS, torch.device("cpu"), expected,
                            encode=encode_from_inputs, lag=0)
    main_loop.embed_batches(None, batches(), Rows(), CONFIG, SETTINGS, torch.device("cpu"), got,
                            encode=encode_from_inputs, lag=lag)
    assert [rows for rows, _, _ in got.added] == [[0, 1, 2], [3, 4, 5], [6, 7], [9]]
    assert got.skipped == expected.skipped == [(8, "missing_file")]
    for (rows, text, image), (rows0, text0, image0) in zip(got.added, expected.added, strict=True):
        assert rows == rows0
        assert all(np.array_equal(a, b) for a, b in zip(text, text0, strict=True))
        assert [v is None for v in image] == [v is None for v in image0]
        assert all(a is None or np.array_equal(a, b) for a, b in zip(image, image0, strict=True))
    assert got.added[1][2][1] is None and got.added[0][2][2][0] == 2  # row 4 has no image; row 2's pixels are 2


def test_results_come_back_lag_batches_behind():
    parts, launched = RecordingParts(), []

    def counting(model, text_inputs, pixels, settings, scratch=None):
        launched.append(len(parts.added))  # batches brought back when this one is launched
        return encode_from_inputs(model, text_inputs, pixels, settings)

    main_loop.embed_batches(None, batches(), Rows(), CONFIG, SETTINGS, torch.device("cpu"), parts,
                            encode=counting, lag=2)
    assert launched == [0, 0, 0, 1]  # the first batch comes back only after the third is launched
    assert len(parts.added) == 4  # and the last two once the loader is exhausted


def test_a_nan_vector_stops_the_run_before_its_rows_are_handed_on():
    parts = RecordingParts()

    def nan_in_second_batch(model, text_inputs, pixels, settings, scratch=None):
        text, image = encode_from_inputs(model, text_inputs, pixels, settings)
        if 4 in text_inputs["input_ids"][:, 0] - 1:
            image[0] = float("nan")
        return text, image

    with pytest.raises(UserError, match=r"train.tsv: line 5: the image vector is NaN or Inf"):
        main_loop.embed_batches(None, batches(), Rows(), CONFIG, SETTINGS, torch.device("cpu"), parts,
                                encode=nan_in_second_batch, lag=2)
    assert [rows for rows, _, _ in parts.added] == [[0, 1, 2]]  # nothing of the NaN batch or after it


def test_the_part_writer_waits_when_its_queue_is_full(monkeypatch):
    release, started = threading.Event(), []

    class Slow(writer.PartWriter):
        def __init__(self):  # only what maybe_write needs
            self.results = {p: {} for p in range(4)}
            self.truncated, self.futures = {}, []
            self.writer = writer.ThreadPoolExecutor(max_workers=1)
            self.queued = threading.BoundedSemaphore(writer.MAX_QUEUED_WRITES)

        def size(self, part):
            return 0

        def _write(self, part, results, counts):
            started.append(part)
            release.wait(10)

    parts = Slow()
    submitting = threading.Thread(target=lambda: [parts.maybe_write(p) for p in range(4)])
    submitting.start()
    time.sleep(0.5)
    assert len(parts.futures) == writer.MAX_QUEUED_WRITES and submitting.is_alive()  # the third waits
    release.set()
    submitting.join(10)
    parts.close()
    assert started == [0, 1, 2, 3]
