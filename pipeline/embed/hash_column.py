"""The cache's `image_phash` column: one `pipeline.data.phash` hash (3 uint64 words) per row, in Parquet."""

import numpy as np
import pyarrow as pa

from pipeline.data.phash import WORDS


def phash_array(hashes, rows):
    """(rows, 3) uint64 hashes as fixed-size lists; None (or a None row) stores zeros: no hash."""
    words = np.zeros((rows, WORDS), np.uint64)
    for row, value in enumerate(hashes if hashes is not None else ()):
        if value is not None:
            words[row] = value
    return pa.FixedSizeListArray.from_arrays(pa.array(words.reshape(-1), type=pa.uint64()), WORDS)


def phash_matrix(column):
    """The fixed-size-list column back as (rows, 3) uint64 (.values keeps every row's slots; as cache._matrix does)."""
    return np.concatenate([np.zeros((0, WORDS), np.uint64)] + [
        chunk.values.slice(chunk.offset * WORDS, len(chunk) * WORDS).to_numpy()
        .reshape(-1, WORDS) for chunk in column.chunks])
