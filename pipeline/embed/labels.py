"""A cache's label sets: the labels of one label column, kept apart from the vector parts.

Layout::

    <cache>/labels/<column>/<split>.parquet   (id, label) in the parts' row order; label null when unlabelled

The vectors depend on the files and encoders only (the fingerprint), not on which column holds the labels, so
`embed --label-column OTHER` on a complete cache writes one more label set and runs no encoder. The manifest
lists every label set (`label_sets`: column -> {classes, splits: {split: file, sha256, rows, labelled,
class_counts}}) and names the one in use (`label_column`, `classes`, and each split's `class_counts` and
`labelled` describe it). Reading a label set checks its checksum and that its ids are the parts' ids in order,
so a cache is never trained against labels other than the ones it was checked with. A cache written before label
sets (its manifest has no `label_sets`) keeps its labels in the parts' `label` column: `2_way_label`.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.classes import DEFAULT_LABEL_COLUMN, classes_record
from pipeline.embed.owned import LABELS
from pipeline.errors import UserError
from pipeline.files import file_sha256, write_atomic

LABELS_KEY = b"pipeline.labels"  # every label file we write has it: {"format", "label_column", "split"}
LABELS_FORMAT = 1
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
FILE_NAME = re.compile(rf"^{LABELS}/{_SAFE.pattern}/[^/]+\.parquet$")  # label_file's names (hashed ones match too)


def label_file(column, split):
    """The label file of `column` for `split`, relative to the cache; a column name unusable as a folder name
    (spaces, slashes, ...) gets a folder named by its hash."""
    folder = column if _SAFE.fullmatch(column) else "column-" + hashlib.sha256(column.encode()).hexdigest()[:16]
    return f"{LABELS}/{folder}/{split}.parquet"


def parts_ids(cache_dir, split, info):
    """The ids of a split's parts, in order (the row order of every per-row array)."""
    ids = []
    for part in info["parts"]:
        path = Path(cache_dir) / split / part["file"]
        try:
            ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
        except (OSError, pa.ArrowException) as error:
            raise UserError(f"{path}: unreadable cache part ({error}); re-embed the cache") from None
    return ids


def _write_labels(path, ids, labels, column, split):
    table = pa.table({"id": pa.array(ids, type=pa.string()),
                      "label": pa.nulls(len(ids), pa.int16()) if labels is None
                      else pa.array(np.asarray(labels, dtype=np.int16), type=pa.int16())})
    table = table.replace_schema_metadata({LABELS_KEY: json.dumps(
        {"format": LABELS_FORMAT, "label_column": column, "split": split}).encode()})

    def write(tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)

    write_atomic(path, write)


def write_label_set(cache_dir, manifest, rows_by_split, column, names):
    """Write `column`'s labels for every split of `manifest` (rows from the split files, `SplitRows`) and return
    the manifest listing it as the label set in use (not yet written: the caller writes the manifest)."""
    entry = {"classes": classes_record(names), "splits": {}}
    for split, info in manifest["splits"].items():
        rows = rows_by_split[split]
        ids = parts_ids(cache_dir, split, info)
        labels = None
        if rows.labelled:
            # Duplicate ids in a split carry the same label (splits.py refuses others), so the id says the label.
            label_of = dict(zip(rows.ids, rows.labels.tolist()))
            labels = [label_of[key] for key in ids]
        relative = label_file(column, split)
        _write_labels(Path(cache_dir) / relative, ids, labels, column, split)
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names)) if labels else \
            np.zeros(len(names), dtype=np.int64)
        entry["splits"][split] = {
            "file": relative, "sha256": file_sha256(Path(cache_dir) / relative), "rows": len(ids),
            "labelled": rows.labelled, "class_counts": dict(zip(names, map(int, counts))),
        }
    sets = {**manifest.get("label_sets", {}), column: entry}
    return with_label_set({**manifest, "label_sets": sets}, column)


def has_label_set(manifest, column, names):
    """Whether `manifest` holds `column`'s label set with these class names, in use."""
    entry = manifest.get("label_sets", {}).get(column)
    return (entry is not None and entry["classes"] == classes_record(names)
            and manifest.get("label_column") == column)


def with_label_set(manifest, column=None):
    """The manifest as seen through one label set (`column`; None: the one in use): `label_column`, `classes`
    and each split's `class_counts` and `labelled` are that set's. A cache before label sets has 2_way_label."""
    sets = manifest.get("label_sets")
    if not sets:
        if column not in (None, DEFAULT_LABEL_COLUMN):
            raise UserError(f"the cache holds the labels of {DEFAULT_LABEL_COLUMN} only (it was built before label "
                            f"sets); run the same `embed` command with --label-column {column} to add that label "
                            "set (no encoder runs again)")
        return {**manifest, "label_column": DEFAULT_LABEL_COLUMN}
    column = column or manifest.get("label_column")
    if column not in sets:
        raise UserError(f"the cache has no labels from column {column!r} (it has: {', '.join(sets)}); run the same "
                        f"`embed` command with --label-column {column} to add them (no encoder runs again)")
    entry = sets[column]
    splits = {split: {**info, "class_counts": entry["splits"][split]["class_counts"],
                      "labelled": entry["splits"][split]["labelled"]}
              for split, info in manifest["splits"].items()}
    return {**manifest, "label_column": column, "classes": entry["classes"], "splits": splits}


def read_labels(cache_dir, manifest, split, column, ids, verify=True):
    """(N,) int64 labels of `split` from `column`'s label set (-1: unlabelled), checked against the parts' `ids`;
    None for a cache before label sets (its labels are in the parts)."""
    manifest = with_label_set(manifest, column)
    if not manifest.get("label_sets"):
        return None
    entry = manifest["label_sets"][manifest["label_column"]]["splits"][split]
    path = Path(cache_dir) / entry["file"]
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path}: label file listed in the manifest is missing; rerun the embed command with "
                        f"--label-column {manifest['label_column']} to write it again")
    if verify and file_sha256(path) != entry["sha256"]:
        raise UserError(f"{path}: checksum differs from the manifest (corrupt or changed); rerun the embed command "
                        f"with --label-column {manifest['label_column']} to write it again")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"{path}: unreadable label file ({error}); rerun the embed command") from None
    if table.column("id").to_pylist() != list(ids):
        raise UserError(f"{path}: its ids are not the cache parts' ids in order, so these labels were not checked "
                        "with these vectors; rerun the embed command with --label-column "
                        f"{manifest['label_column']} to write them again")
    return table.column("label").fill_null(-1).to_numpy().astype(np.int64)


def check_label_sets(manifest, bad):
    """The `label_sets` shape (when present): every split of the cache, files under labels/ only."""
    sets = manifest.get("label_sets")
    if sets is None:
        return
    if not isinstance(sets, dict) or manifest.get("label_column") not in sets:
        bad("label_sets is not an object that holds the label_column in use")
    for column, entry in sets.items():
        splits = entry.get("splits") if isinstance(entry, dict) else None
        if not (isinstance(splits, dict) and isinstance(entry.get("classes"), dict)
                and set(splits) == set(manifest["splits"])):
            bad(f"label set {column!r} is not an object with classes and every split of the cache")
        for split, info in splits.items():
            if not (isinstance(info, dict) and isinstance(info.get("file"), str) and FILE_NAME.match(info["file"])
                    and isinstance(info.get("sha256"), str) and isinstance(info.get("class_counts"), dict)):
                bad(f"label set {column!r}, split {split!r} is not {{file: labels/<column>/<split>.parquet, "
                    "sha256, class_counts, ...}")
