"""Synthetic caches whose labels depend on the embeddings in a known way, written as complete caches
(`write_cache`): the benchmarks' data (head, doctor, cache figures), which the tests use too.

Each modality carries a hidden score along one random unit direction plus
Gaussian noise elsewhere; `signal` says how the label is made from the scores:

- "text":  only text predicts the label; image is pure noise
- "both":  sum of the two scores: each modality alone is weaker than both
- "xor":   the label is 1 when the two scores have the same sign: each
           modality alone is at chance, only a head that fuses them can learn it

With `num_classes` K > 2 (`make_splits(..., num_classes=6)`), each modality carries K hidden scores along
K random directions and the label is the argmax of their sum ("both": text and image each hold half of
every class's evidence, so fusion beats either alone) or of the text scores alone ("text"); the classes are
`class_0 ...` unless named, and `write_cache(..., class_names=...)` writes them into the manifest. The
binary data (K = 2) is drawn exactly as before: the benchmarks' and the demo's figures hold.
"""

from pathlib import Path

import numpy as np

from pipeline.data.classes import DEFAULT_LABEL_COLUMN, default_class_names
from pipeline.embed.cache import FINGERPRINT_NAME, CachedSplit, finalize, part_path, write_part
from pipeline.files import write_json_atomic

SIGNALS = ("text", "both", "xor")


def make_splits(rows, text_dim=768, image_dim=512, signal="both", seed=0, val_share=0.1, test_share=0.1,
                strength=3.0, real_share=0.5, missing_image=0.0, missing_text=0.0, missing_in=("test",),
                num_classes=2):
    """{"train", "val", "test"} CachedSplits drawn from one population, `rows` in all.

    `missing_image` / `missing_text`: share of the rows of each split in `missing_in` whose image (title) is
    missing, as stage one caches them: has_image (has_text) False and a zero vector; never both in one row.
    `num_classes` > 2: K-class labels (module docstring; signal "text" or "both", no missing halves).
    """
    if signal not in SIGNALS:
        raise ValueError(f"signal {signal!r}: one of {SIGNALS}")
    if num_classes > 2:
        return _k_class_splits(rows, text_dim, image_dim, signal, seed, val_share, test_share, strength,
                               num_classes)
    rng = np.random.default_rng(seed)
    scores = {name: rng.standard_normal(rows) for name in ("text", "image")}
    text = _embed(rng, scores["text"], text_dim, strength)
    image = _embed(rng, scores["image"], image_dim, strength)
    if signal == "text":
        logit = scores["text"]
    elif signal == "both":
        logit = scores["text"] + scores["image"]
    else:
        logit = scores["text"] * scores["image"]
    # A quantile cut sets the class balance; label noise-free so the ceiling is the noise in the features.
    labels = (logit > np.quantile(logit, 1 - real_share)).astype(np.int64)
    ids = np.array([f"{signal}-{seed}-{i}" for i in range(rows)], dtype=object)
    val_start = rows - round(val_share * rows) - round(test_share * rows)
    test_start = rows - round(test_share * rows)
    bounds = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, rows)}
    has_text, has_image = np.ones(rows, dtype=bool), np.ones(rows, dtype=bool)
    drawn = rng.random(rows)  # one draw per row: image missing below missing_image, title missing just above
    for name in missing_in:
        a, b = bounds[name]
        has_image[a:b] = ~(drawn[a:b] < missing_image)
        has_text[a:b] = ~((drawn[a:b] >= missing_image) & (drawn[a:b] < missing_image + missing_text))
    text[~has_text], image[~has_image] = 0, 0
    everything = CachedSplit(ids, labels, text, image, has_text, has_image)
    return {name: everything.subset(slice(a, b)) for name, (a, b) in bounds.items()}


def _k_class_splits(rows, text_dim, image_dim, signal, seed, val_share, test_share, strength, num_classes):
    if signal == "xor":
        raise ValueError("signal 'xor' is binary only; use 'text' or 'both' with num_classes > 2")
    rng = np.random.default_rng(seed)
    scores = {name: rng.standard_normal((rows, num_classes)) for name in ("text", "image")}
    text = sum(_embed(rng, scores["text"][:, k], text_dim, strength) for k in range(num_classes)) / num_classes
    image = sum(_embed(rng, scores["image"][:, k], image_dim, strength) for k in range(num_classes)) / num_classes
    logit = scores["text"] + (scores["image"] if signal == "both" else 0)
    labels = logit.argmax(axis=1).astype(np.int64)
    ids = np.array([f"{signal}{num_classes}-{seed}-{i}" for i in range(rows)], dtype=object)
    val_start = rows - round(val_share * rows) - round(test_share * rows)
    test_start = rows - round(test_share * rows)
    everything = CachedSplit(ids, labels, text.astype(np.float32), image.astype(np.float32),
                             np.ones(rows, dtype=bool), np.ones(rows, dtype=bool))
    bounds = {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, rows)}
    return {name: everything.subset(slice(a, b)) for name, (a, b) in bounds.items()}


def _embed(rng, score, dim, strength):
    # (N, D) noise plus the score along one direction: the head must find that direction.
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    matrix = rng.standard_normal((score.size, dim), dtype=np.float32)
    matrix += (strength * score[:, None] * direction[None, :]).astype(np.float32)
    return matrix


def write_cache(cache_dir, splits, part_rows=8192, dtype="float32", fingerprint="in-memory", class_names=None):
    """Write in-memory `CachedSplit`s as a complete cache, as stage one would leave it; `class_names` (in label
    order; default fake, real for two classes, else class_0 ...) go into the manifest's `classes` and counts."""
    if class_names is None:
        count = max([2, *(int(data.labels.max()) + 1 for data in splits.values() if len(data))])
        class_names = default_class_names(DEFAULT_LABEL_COLUMN, count)
    dims = None
    for split, data in splits.items():
        dims = {"text": data.text_emb.shape[1], "image": data.image_emb.shape[1]}
        for index, start in enumerate(range(0, len(data), part_rows)):
            rows = slice(start, start + part_rows)
            partial = [{"id": str(data.ids[i]), "row": i, "missing": "image" if data.has_text[i] else "text",
                        "reason": "synthetic"} for i in range(len(data))[rows]
                       if not (data.has_text[i] and data.has_image[i])]
            digests = None if data.image_sha256 is None else data.image_sha256[rows]
            phashes = None if data.image_phash is None else data.image_phash[rows]
            write_part(part_path(cache_dir, split, index), data.ids[rows], data.labels[rows],
                       data.text_emb[rows], data.image_emb[rows], skipped=[], dtype=dtype,
                       has_text=data.has_text[rows], has_image=data.has_image[rows], partial=partial,
                       image_sha256=digests, image_phash=phashes)
    write_json_atomic(Path(cache_dir) / FINGERPRINT_NAME, {"fingerprint": fingerprint})
    return finalize(cache_dir, {s: len(d) for s, d in splits.items()}, fingerprint, inputs={}, dims=dims,
                    config={"cache_dtype": dtype}, class_names=class_names)
