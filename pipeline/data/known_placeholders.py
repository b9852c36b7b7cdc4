"""Dead-link placeholder images we know by content: recognised in a set of any size.

A host's "image no longer available" picture says nothing about its post. The
shared-bytes rule (`placeholders.py`) finds such a picture only once many rows
share it; these are recognised in any set, even of one row, by their exact bytes
(SHA-256) or, re-encoded or resized, by their perceptual hash
(`phash.perceptual_hash` of the whole decoded picture, matched by
`phash.matches`, for a file of about the same shape).

Where they came from: the two files that the shared Fakeddit sample lists in
its `excluded.tsv` (real rows of Fakeddit's multimodal training split, from the
public repository Hakurem/slurm_train, MIT licence, commit
996996ac68e4bf5f61c739567b0d7833e8b418ff, `data/batch/5bn1qa.jpg` and
`data/batch/ct8etz1.jpg`): imgur's "The image you are requesting does not exist
or is no longer available" PNG in two sizes. The hashes were computed from those
files; copies are committed as test fixtures in `tests/fixtures/placeholders/`.
Add a picture here with its origin when you meet another one.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownPlaceholder:
    name: str
    sha256: str  # of the file's bytes
    bytes: int
    size: tuple  # (width, height) in pixels
    phash: tuple  # phash.perceptual_hash of the whole picture, decoded to RGB


KNOWN_PLACEHOLDERS = (
    KnownPlaceholder("imgur 'image no longer available' (161x81 PNG)",
                     "9b5936f4006146e4e1e9025b474c02863c0b5614132ad40db4b925a10e8bfbb9", 503, (161, 81),
                     (0xA61E291989007070, 0x00FCFF00FF1000E0, 0x323232)),
    KnownPlaceholder("imgur 'image no longer available' (108x54 PNG)",
                     "1dfc51253492506084351d1c1c4ec96607f44bf2e3d97d0da216604f59fce1a2", 3279, (108, 54),
                     (0xFE3E291989087070, 0x00FCFF00FFFF10E0, 0x323232)),
)
BY_SHA256 = {known.sha256: known for known in KNOWN_PLACEHOLDERS}
_ASPECT_TOLERANCE = 0.05  # a resized copy keeps its shape within rounding


def same_shape(size):
    """The known placeholders whose width/height ratio is that of `size` (width, height): only those files are
    decoded for the perceptual match, so a large set pays a header read for most small files, not a decode."""
    width, height = size
    if not width or not height:
        return ()
    aspect = width / height
    return tuple(known for known in KNOWN_PLACEHOLDERS
                 if abs(aspect / (known.size[0] / known.size[1]) - 1) <= _ASPECT_TOLERANCE)
