"""Placeholder images: many rows whose image file is one small file, byte for byte.

Fakeddit's images were downloaded from links that had often died by then, and a
dead link yields the host's "image no longer available" picture, so thousands of
posts share the same few hundred bytes. Those rows say nothing about their post
(and the host, hence the picture, can correlate with the label), so stage one
counts them per split in the summary and the manifest, and `--on-placeholder
skip` leaves them out (reason `placeholder_image` in skipped.tsv).

The rule: an image file is a placeholder when it is not empty, at most
`max_bytes` long, and its exact bytes (sha256) are the image of at least
`min_rows` rows over all the splits of the run. Only files that small are read,
so a big run pays one `stat` per distinct image path (about 3 s per 100,000
rows on a busy 2-core machine, files in the page cache).
"""

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.data.images import BadImage, checked_file

_MAX_FILES_LISTED = 10
_THREADS = 4  # stat() on a cold or network disk waits without the GIL; more threads only fight for it


@dataclass
class Placeholders:
    """What `find_placeholders` found."""

    rows: dict = field(default_factory=dict)  # split -> set of row indices whose image is a placeholder
    files: list = field(default_factory=list)  # [{"sha256", "bytes", "rows", "example"}], most rows first

    def count(self, split):
        return len(self.rows.get(split, ()))


def find_placeholders(image_root, splits, max_bytes, min_rows):
    """`splits`: {name: SplitRows}. Nothing is looked at when `max_bytes` is 0."""
    if max_bytes <= 0:
        return Placeholders(rows={name: set() for name in splits})
    paths = sorted({path for rows in splits.values() for path in rows.image_paths if path})
    chunks = [paths[i::_THREADS] for i in range(_THREADS)]
    digests = {}  # image path -> (sha256, size) for the small files
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
    common = {digest for digest, count in rows_per_digest.items() if count >= min_rows}
    sizes = {digest: size for digest, size in digests.values()}
    files = sorted(
        ({"sha256": d, "bytes": sizes[d], "rows": rows_per_digest[d], "example": example[d]} for d in common),
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
            found[relative] = (hashlib.sha256(data).hexdigest(), len(data))
    return found
