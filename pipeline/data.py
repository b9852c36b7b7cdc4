"""Reading and validating Fakeddit-style TSV splits.

A split is `<data-dir>/<split>_filtered.tsv` or `<data-dir>/<split>.tsv`.
Text is `clean_title`, falling back to `title`; the label is `2_way_label`
(1 = real, 0 = fake); the image is `local_image_path` relative to the image
root or, when that column is absent (Fakeddit's own `multimodal_*.tsv`), a
pattern such as `{id}.jpg`.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError

CLASS_NAMES = ("fake", "real")  # index = 2_way_label value
LABEL_COLUMN = "2_way_label"
TEXT_COLUMNS = ("clean_title", "title")
IMAGE_COLUMN = "local_image_path"
SPLIT_FILE_NAMES = ("{split}_filtered.tsv", "{split}.tsv")
_MAX_ROWS_LISTED = 5


@dataclass
class SplitRows:
    """The rows of one split, in file order."""

    split: str
    path: Path
    ids: list  # str row keys
    texts: list  # str, "" when the title is empty
    labels: np.ndarray  # (N,) int8
    image_paths: list  # str, relative to the image root
    duplicate_ids: int  # ids seen before in this split with the same label

    def __len__(self):
        return len(self.ids)


def find_split_file(data_dir, split):
    data_dir = Path(data_dir)
    candidates = [data_dir / name.format(split=split) for name in SPLIT_FILE_NAMES]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(
        f"no file for split {split!r}: looked for {' and '.join(str(p) for p in candidates)}; "
        "check --data-dir and --splits"
    )


def read_split(data_dir, split, image_pattern="{id}.jpg"):
    path = find_split_file(data_dir, split)
    frame = _read_tsv(path)
    _check_columns(frame, path, image_pattern)
    if frame.empty:
        raise UserError(f"{path}: the split file has a header but no rows; add rows or leave {split!r} out of --splits")
    labels = parse_labels(frame[LABEL_COLUMN], path)
    ids = _row_ids(frame, split)
    duplicates = _check_duplicate_ids(ids, labels, path)
    return SplitRows(
        split=split, path=path, ids=ids, texts=_titles(frame), labels=labels,
        image_paths=_image_paths(frame, ids, image_pattern, path), duplicate_ids=duplicates,
    )


def _read_tsv(path):
    try:
        # Everything as text: ids like "1e3" or "nan" must stay strings, labels are parsed below.
        return pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8",
            encoding_errors="replace", quoting=csv.QUOTE_MINIMAL, engine="c",
        )
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; it needs a header row and data rows") from None
    except pd.errors.ParserError as error:
        raise UserError(f"{path}: not a valid tab-separated file ({error}); fix that line") from None


def _check_columns(frame, path, image_pattern):
    frame.columns = [str(c).lstrip("\ufeff").strip() for c in frame.columns]
    missing = []
    if LABEL_COLUMN not in frame.columns:
        missing.append(LABEL_COLUMN)
    if not any(c in frame.columns for c in TEXT_COLUMNS):
        missing.append(" or ".join(TEXT_COLUMNS))
    if IMAGE_COLUMN not in frame.columns and "{id}" in image_pattern and "id" not in frame.columns:
        missing.append(f"{IMAGE_COLUMN} (or id, for --image-pattern {image_pattern!r})")
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(frame.columns)}; "
            f"expected: {LABEL_COLUMN}, clean_title (or title), {IMAGE_COLUMN} (or id)"
        )


def parse_labels(column, path):
    """Labels as int8 0/1; `1.0` and ` 1 ` are accepted, anything else is named by row."""
    numbers = pd.to_numeric(column.str.strip(), errors="coerce")
    bad = ~numbers.isin([0, 1])
    if bad.any():
        rows = [f"line {i + 2}: {column.iloc[i]!r}" for i in np.flatnonzero(bad.to_numpy())[:_MAX_ROWS_LISTED]]
        raise UserError(
            f"{path}: column {LABEL_COLUMN} must be 0 (fake) or 1 (real); "
            f"{int(bad.sum())} row(s) are not, e.g. {'; '.join(rows)}; fix or remove them"
        )
    return numbers.to_numpy().astype(np.int8)


def _row_ids(frame, split):
    if "id" in frame.columns:
        return [value.strip() or f"{split}-{i}" for i, value in enumerate(frame["id"])]
    return [f"{split}-{i}" for i in range(len(frame))]  # stable: file order


def _check_duplicate_ids(ids, labels, path):
    first_seen, duplicates = {}, 0
    for row, (key, label) in enumerate(zip(ids, labels)):
        if key not in first_seen:
            first_seen[key] = (row, label)
            continue
        first_row, first_label = first_seen[key]
        if first_label != label:
            raise UserError(
                f"{path}: id {key!r} appears on line {first_row + 2} with label {first_label} "
                f"and on line {row + 2} with label {label}; keep one of them"
            )
        duplicates += 1
    return duplicates


def _titles(frame):
    texts = [""] * len(frame)
    for column in reversed(TEXT_COLUMNS):  # clean_title wins where both are non-empty
        if column in frame.columns:
            for i, value in enumerate(frame[column]):
                if value.strip():
                    texts[i] = value.strip()
    return texts


def _image_paths(frame, ids, image_pattern, path):
    if IMAGE_COLUMN in frame.columns:
        return [value.strip() for value in frame[IMAGE_COLUMN]]
    try:
        return [image_pattern.format(id=key) for key in ids]
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"--image-pattern {image_pattern!r} is not valid ({error}); use a pattern like '{{id}}.jpg'") from None
