"""Placeholder images: a dead link's "image no longer available" picture in place of the post's photo.

Fakeddit's images were downloaded from links that had often died by then, and a
dead link yields the host's "image no longer available" picture, so thousands of
posts share the same few hundred bytes. Those rows say nothing about their post
(and the host, hence the picture, can correlate with the label), so stage one
counts them per split in the summary and the manifest, and `--on-placeholder
skip` leaves them out (reason `placeholder_image` in skipped.tsv).

The rule: an image file is a placeholder when it is not empty, at most
`max_bytes` long, and either its exact bytes (sha256) are the image of at least
`min_rows` rows over all the splits of the run, or it is one of the placeholders
we know (`known_placeholders.py`: by its sha256, or re-encoded or resized, by its
perceptual hash), which is recognised however few rows show it. Only files that
small are read, and only those of a known placeholder's shape are decoded, so a
big run pays one `stat` per distinct image path (about 3 s per 100,000 rows on a
busy 2-core machine, files in the page cache) and a read of its small files.
"""

import hashlib
import io
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.data import known_placeholders, phash
from pipeline.data.images import BadImage, checked_file

_MAX_FILES_LISTED = 10
_THREADS = 4  # stat() on a cold or network disk waits without the GIL; more threads only fight for it
_MAX_DECODED_PIXELS = 1 << 20  # a placeholder is a small picture; a small file claiming more is not decoded


@dataclass
class Placeholders:
    """What `find_placeholders` found."""

    rows: dict = field(default_factory=dict)  # split -> set of row indices whose image is a placeholder
    files: list = field(default_factory=list)  # [{"sha256", "bytes", "rows", "example"[, "known"]}], most rows first

    def count(self, split):
        return len(self.rows.get(split, ()))


def find_placeholders(image_root, splits, max_bytes, min_rows):
    """`splits`: {name: SplitRows}. Nothing is looked at when `max_bytes` is 0."""
    if max_bytes <= 0:
        return Placeholders(rows={name: set() for name in splits})
    paths = sorted({path for rows in splits.values() for path in rows.image_paths if path})
    chunks = [paths[i::_THREADS] for i in range(_THREADS)]
    digests = {}  # image path -> (sha256, size, name of the known placeholder it is or None) for the small files
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for found in pool.map(lambda chunk: _small_file_digests(image_root, chunk, max_bytes), chunks):
            digests.update(found)
    rows_per_digest, example = {}, {}
    for rows in splits.values():
        for path in rows.image_paths:
            if path in digests:
                digest = digests[path][0]
                rows_per_digest[digest] = rows_per_digest.get(digest, 0) + 1
                example.setdefault(digest, path)
    known = {digest: name for digest, _, name in digests.values() if name}
    common = {digest for digest, count in rows_per_digest.items() if count >= min_rows} | set(known)
    sizes = {digest: size for digest, size, _ in digests.values()}
    files = sorted(
        ({"sha256": d, "bytes": sizes[d], "rows": rows_per_digest[d], "example": example[d],
          **({"known": known[d]} if d in known else {})} for d in common),
        key=lambda f: (-f["rows"], f["sha256"]),
    )
    return Placeholders(
        rows={name: {row for row, path in enumerate(rows.image_paths)
                     if path in digests and digests[path][0] in common}
              for name, rows in splits.items()},
        files=files[:_MAX_FILES_LISTED],
    )


def _small_file_digests(image_root, paths, max_bytes):
    found = {}
    root = os.fspath(image_root)
    for relative in paths:
        try:
            info = os.stat(os.path.join(root, relative))  # metadata only; contents are read after the checks below
            if not stat.S_ISREG(info.st_mode) or not 0 < info.st_size <= max_bytes:
                continue
            data = checked_file(image_root, relative).read_bytes()  # refuses paths that leave the root
        except (BadImage, OSError, ValueError):
            continue  # the embedding pass reports these rows with their reason
        if 0 < len(data) <= max_bytes:
            digest = hashlib.sha256(data).hexdigest()
            found[relative] = (digest, len(data), known_placeholder(data, digest))
    return found


def known_placeholder(data, digest):
    """The name of the known placeholder these file bytes are (exactly, or re-encoded or resized), or None."""
    exact = known_placeholders.BY_SHA256.get(digest)
    if exact is not None:
        return exact.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:  # the header only, until load
                candidates = known_placeholders.same_shape(image.size)
                if not candidates or image.size[0] * image.size[1] > _MAX_DECODED_PIXELS:
                    return None
                image.seek(0)
                value = phash.perceptual_hash(np.asarray(image.convert("RGB")))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None  # not an image, or a broken one: the embedding pass reports it with its reason
    for known in candidates:
        if phash.matches(value, known.phash):
            return f"{known.name}, re-encoded"
    return None
