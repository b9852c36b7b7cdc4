"""Reading and validating Fakeddit-style TSV splits.

A split is `<data-dir>/<split>_filtered.tsv` or `<data-dir>/<split>.tsv`.
Text is `clean_title`, falling back to `title`; the label is the `label_column`
(default `2_way_label`: 1 = real, 0 = fake; any column of class numbers 0..K-1, see data/classes.py), optional:
a file without that column is unlabelled (new posts to classify), but a file with it must label every row;
the image is `local_image_path` relative to the image root or, when that column is absent (Fakeddit's own
`multimodal_*.tsv`), a pattern such as `{id}.jpg`.

Rows are read with Python's csv module (tab-separated, fields quoted the way
`pandas.to_csv` writes them) so that every problem can name its line: a row
with more or fewer fields than the header, a quote that runs over several
lines, a field that is not properly quoted. Blank lines are skipped, a BOM and
CRLF line endings are accepted, and bytes that are not UTF-8 are replaced with
U+FFFD and counted (`non_utf8_rows`).
"""

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.classes import DEFAULT_LABEL_COLUMN, MAX_CLASSES, known_num_classes
from pipeline.errors import UserError

CLASS_NAMES = ("fake", "real")  # index = 2_way_label value
SPLITS = ("train", "val", "test")  # the splits training reads; stage one embeds any named with --splits
LABEL_COLUMN = DEFAULT_LABEL_COLUMN  # the default; --label-column names another
TEXT_COLUMNS = ("clean_title", "title")
IMAGE_COLUMN = "local_image_path"
SPLIT_FILE_NAMES = ("{split}_filtered.tsv", "{split}.tsv")
_USED_COLUMNS = (*TEXT_COLUMNS, IMAGE_COLUMN, "id")  # and the label column in use
_MAX_ROWS_LISTED = 5


@dataclass
class SplitRows:
    """The rows of one split, in file order."""

    split: str
    path: Path
    ids: list  # str row keys
    texts: list  # str, "" when the title is empty
    labels: np.ndarray  # (N,) int16 class numbers; None when the file has no label column (unlabelled)
    image_paths: list  # str, relative to the image root
    duplicate_ids: int  # ids seen before in this split with the same label
    lines: list = None  # line number of each row in the file (header = line 1)
    non_utf8_rows: int = 0  # rows whose bytes were not UTF-8 (replaced with U+FFFD)
    extra: dict = field(default_factory=dict)  # column -> list of str: the `extra_columns` the file has

    def __len__(self):
        return len(self.ids)

    @property
    def labelled(self):
        return self.labels is not None

    def line(self, row):
        return self.lines[row] if self.lines is not None else row + 2


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


def read_split(data_dir, split, image_pattern="{id}.jpg", extra_columns=(), label_column=LABEL_COLUMN,
               num_classes=None):
    return read_rows(find_split_file(data_dir, split), split, image_pattern, extra_columns, label_column, num_classes)


def read_rows(path, split, image_pattern="{id}.jpg", extra_columns=(), label_column=LABEL_COLUMN, num_classes=None):
    """The rows of one TSV file (any name); `split` names them (ids `<split>-<row>` without an id column).

    `extra_columns` (e.g. doctor's label proxies) are read too, where the file has them, into `extra`.
    Labels come from `label_column` (absent: the file is unlabelled), class numbers below `num_classes`
    (default: `classes.known_num_classes`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}; "
                        "give the path of a tab-separated file of posts")
    table = _read_tsv(path, (label_column, *extra_columns))
    _check_columns(table.header, path, image_pattern, label_column)
    if not table.lines:
        raise UserError(f"{path}: the file has a header but no rows; add rows (or leave {split!r} out of --splits)")
    frame = pd.DataFrame(table.columns, dtype=object)
    labels = parse_labels(frame[label_column], path, table.lines, label_column, num_classes) \
        if label_column in frame.columns else None
    ids = _row_ids(frame, split)
    duplicates = _check_duplicate_ids(ids, labels, path, table.lines)
    return SplitRows(
        split=split, path=path, ids=ids, texts=_titles(frame), labels=labels,
        image_paths=_image_paths(frame, ids, image_pattern, path), duplicate_ids=duplicates,
        lines=table.lines, non_utf8_rows=table.non_utf8_rows,
        extra={name: table.columns[name] for name in extra_columns if name in table.columns},
    )


@dataclass
class _Table:
    header: list  # every column name, as written
    columns: dict = field(default_factory=dict)  # name -> list of str, only the columns we use
    lines: list = field(default_factory=list)  # line number of each row
    non_utf8_rows: int = 0


FIELD_LIMIT = 16 << 20  # csv's default, 128 kB, refuses a long title; 16 MB still refuses a runaway field
MAX_TITLE_CHARS = 1 << 16  # far beyond any --max-length in tokens; the tokenizer cuts and counts the rest
_MEMORY_FACTOR = 4  # rows held as Python strings take a few times the file's bytes


def machine_memory_bytes():
    """This machine's physical memory in bytes, None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_size(path):
    """A split file that would not fit in memory once read is refused before reading it."""
    size, memory = path.stat().st_size, machine_memory_bytes()
    if memory and size * _MEMORY_FACTOR > memory:
        raise UserError(f"{path}: {size / 1e9:.1f} GB would not fit in this machine's {memory / 1e9:.1f} GB of "
                        "memory once read; split it into several smaller files (one per --splits name) "
                        "or use a machine with more memory")


def _read_tsv(path, extra_columns=()):
    """The columns we use (and `extra_columns`), row by row, refusing any line that does not fit the header."""
    _check_size(path)
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    # surrogateescape keeps a bad byte visible (as a lone surrogate) so the row can be counted and repaired.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, strict=True)
        line = 1
        try:
            header = next((fields for fields in reader if _has_text(fields)), None)
            if header is None:
                raise UserError(f"{path}: the file is empty; it needs a header row and data rows")
            header = [name.strip() for name in _replace_bad_bytes(header)[0]]
            table = _Table(header=header)
            wanted = [header.index(name) for name in dict.fromkeys((*_USED_COLUMNS, *extra_columns))
                      if name in header]
            columns = [table.columns.setdefault(header[index], []) for index in wanted]
            line = reader.line_num + 1
            for fields in reader:
                start, end, line = line, reader.line_num, reader.line_num + 1
                if not _has_text(fields):
                    continue  # a blank line
                if end != start:
                    raise UserError(
                        f"{path}: line {start}: a quoted field runs on to line {end}; a field that starts with "
                        "a double quote must end with one (inner quotes doubled, as pandas.to_csv writes them)"
                    )
                if len(fields) != len(header):
                    hint = "a tab inside a title? quote the field or remove the tab" if len(fields) > len(header) \
                        else "a missing field?"
                    raise UserError(f"{path}: line {start} has {len(fields)} fields, "
                                    f"the header has {len(header)} ({hint})")
                values = [fields[index] for index in wanted]
                if not "".join(values).isascii():
                    values, repaired = _replace_bad_bytes(values)
                    table.non_utf8_rows += repaired
                for column, value in zip(columns, values):
                    column.append(value)
                table.lines.append(start)
        except csv.Error as error:
            raise UserError(
                f"{path}: line {line}: not valid tab-separated text ({error}); a field that starts with a double "
                "quote must be quoted as a whole (inner quotes doubled, as pandas.to_csv writes them); fix that line"
            ) from None
    return table


def _has_text(fields):
    return any(value.strip() for value in fields)


def _replace_bad_bytes(values):
    """(values with undecodable bytes replaced by U+FFFD, whether any were)."""
    repaired = []
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        repaired.append(value)
    return repaired, repaired != values


def _check_columns(header, path, image_pattern, label_column=LABEL_COLUMN):
    missing = []  # no label column is fine: an unlabelled file
    if not any(c in header for c in TEXT_COLUMNS):
        missing.append(" or ".join(TEXT_COLUMNS))
    if IMAGE_COLUMN not in header and "{id}" in image_pattern and "id" not in header:
        missing.append(f"{IMAGE_COLUMN} (or id, for --image-pattern {image_pattern!r})")
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(header)}; "
            f"expected: clean_title (or title), {IMAGE_COLUMN} (or id), and {label_column} to train"
        )


def parse_labels(column, path, lines=None, label_column=LABEL_COLUMN, num_classes=None):
    """Class numbers 0..K-1 as int16 (K: `known_num_classes`, else any below MAX_CLASSES); `1.0` and ` 1 ` are
    accepted, anything else is named by line."""
    count = known_num_classes(label_column, num_classes)
    numbers = pd.to_numeric(column.str.strip(), errors="coerce")
    bad = ~(numbers.isin(range(count or MAX_CLASSES)))  # NaN (not a number) and 1.5 are not in it either
    if bad.any():
        line = (lambda i: lines[i]) if lines is not None else (lambda i: i + 2)
        rows = [f"line {line(i)}: {column.iloc[i]!r}" for i in np.flatnonzero(bad.to_numpy())[:_MAX_ROWS_LISTED]]
        raise UserError(
            f"{path}: column {label_column} must be {_label_rule(label_column, count, num_classes)}; "
            f"{int(bad.sum())} row(s) are not, e.g. {'; '.join(rows)}; fix or remove them"
        )
    return numbers.to_numpy().astype(np.int16)


def _label_rule(label_column, count, num_classes):
    if count == 2 and label_column == LABEL_COLUMN and num_classes is None:
        return "0 (fake) or 1 (real)"  # the message of before N classes, for the default column
    if count is None:
        return f"a whole number from 0 to {MAX_CLASSES - 1} (the class number, 0..K-1)"
    why = "--num-classes" if num_classes is not None else f"Fakeddit's {label_column} has {count} classes"
    return f"a whole number from 0 to {count - 1} ({why}; give --num-classes for another count)"


def _row_ids(frame, split):
    if "id" in frame.columns:
        return [value.strip() or f"{split}-{i}" for i, value in enumerate(frame["id"])]
    return [f"{split}-{i}" for i in range(len(frame))]  # stable: file order


def _check_duplicate_ids(ids, labels, path, lines):
    labels = [None] * len(ids) if labels is None else labels  # unlabelled: duplicates cannot conflict
    first_seen, duplicates = {}, 0
    for row, (key, label) in enumerate(zip(ids, labels)):
        if key not in first_seen:
            first_seen[key] = (row, label)
            continue
        first_row, first_label = first_seen[key]
        if first_label != label:
            raise UserError(
                f"{path}: id {key!r} appears on line {lines[first_row]} with label {first_label} "
                f"and on line {lines[row]} with label {label}; keep one of them"
            )
        duplicates += 1
    return duplicates


def _titles(frame):
    texts = [""] * len(frame)
    for column in reversed(TEXT_COLUMNS):  # clean_title wins where both are non-empty
        if column in frame.columns:
            for i, value in enumerate(frame[column]):
                if value.strip():
                    texts[i] = value.strip()[:MAX_TITLE_CHARS]
    return texts


def _image_paths(frame, ids, image_pattern, path):
    if IMAGE_COLUMN in frame.columns:
        return [value.strip() for value in frame[IMAGE_COLUMN]]
    try:
        return [image_pattern.format(id=key) for key in ids]
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(f"--image-pattern {image_pattern!r} is not valid ({error}); "
                        "use a pattern like '{id}.jpg'") from None
