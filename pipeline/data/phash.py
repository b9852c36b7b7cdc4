"""A perceptual hash of decoded pixels: 64 bits that survive resizing and re-encoding (dHash).

The image is reduced to a 9 x 8 grid of mean grey levels; bit (r, c) says whether
cell c of row r is brighter than cell c + 1. Resizing, JPEG re-encoding and mild
colour changes keep almost every bit (0-4 of 64 differ), two unrelated photos
differ in about half of them. Written here (no dependency): it is a few NumPy
reductions over the pixels stage one already holds in memory (the (S, S, 3)
array after resize and centre crop, so two copies of a photo are hashed over the
same crop), about 0.3 ms per image.

0 means "no hash": an image too flat to say anything (a uniform colour, a few
grey levels of JPEG noise) would otherwise get near-random bits that match other
flat images. A cache row without an image, or from a cache before the hash
column, has 0 as well.
"""

import numpy as np

BITS = 64
_ROWS, _COLUMNS = 8, 9  # 8 rows of 9 cells: 8 x 8 left-right comparisons
_MIN_CONTRAST = 2.0  # grey levels (0-255): the cells' standard deviation below which an image is flat
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L")
MAX_DISTANCE = 10  # Fakeddit sample: 99% of 400 resized/re-encoded copies within 6 (max 11); distinct photos 16+


def dhash(pixels):
    """The 64-bit dHash of an (H, W, 3) or (H, W) uint8 array, as a Python int; 0 for a flat image."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    pixels = _at_least(pixels, _ROWS, _COLUMNS)
    cells = _cell_means(pixels, _ROWS, _COLUMNS)  # (8, 9, C): grey is linear, so the cells' luma is the mean luma
    grey = cells[..., :3] @ _LUMA if cells.shape[2] >= 3 else cells[..., 0]
    if grey.std() < _MIN_CONTRAST:
        return 0
    bits = (grey[:, :-1] > grey[:, 1:]).ravel()  # (64,)
    return int(np.packbits(bits).view(">u8")[0])


def _at_least(pixels, rows, columns):
    """Repeat pixels so that every cell of the grid covers at least one (a 1 x 1 image is one flat cell)."""
    height, width = pixels.shape[:2]
    if height >= rows and width >= columns:
        return pixels  # the usual case: no copy
    return np.repeat(np.repeat(pixels, -(-rows // height), axis=0), -(-columns // width), axis=1)


def _cell_means(pixels, rows, columns):
    """(rows, columns, C) mean of each cell of a grid laid over the image (cells differ by at most one pixel)."""
    height, width = pixels.shape[:2]
    top = np.linspace(0, height, rows + 1).astype(int)
    left = np.linspace(0, width, columns + 1).astype(int)
    # float32: a cell's sum is exact below 2^24 (any crop stage one makes); beyond, rounding moves a mean by far
    # less than a grey level
    sums = np.add.reduceat(np.add.reduceat(pixels.astype(np.float32), top[:-1], axis=0), left[:-1], axis=1)
    return sums / np.outer(np.diff(top), np.diff(left))[..., None]


def distances(queries, references):
    """(Nq, Nr) int array of differing bits between two uint64 arrays of hashes."""
    queries = np.asarray(queries, dtype=np.uint64)
    references = np.asarray(references, dtype=np.uint64)
    return np.bitwise_count(queries[:, None] ^ references[None, :]).astype(np.int64)
