"""The embedding cache: Parquet parts per split plus a manifest.

Layout::

    <cache>/fingerprint.json             what the parts were built from (written first)
    <cache>/<split>/part-NNNNN.parquet   rows [N * part_rows, (N + 1) * part_rows) of the split
                                         (id, label, text_emb, image_emb, image_sha256, image_phash
                                         [, similarity: one CLIP/SigLIP model as both towers, embed/similarity.py])
    <cache>/labels/<column>/<split>.parquet  the labels of one label column (embed/labels.py); the parts'
                                         own `label` column is null since label sets (older caches: 2_way_label)
    <cache>/manifest.json                written last: the cache is complete only with it
    <cache>/skipped.tsv                  rows that could not be embedded, with the reason
    <cache>/partial.tsv                  rows kept with one modality: split, id, missing (image/text), reason

A part covers a fixed range of input rows and carries the rows of that range it
skipped in its own metadata, so a part on disk is a complete, self-describing
unit: resuming means skipping the parts that exist. A part's `has_text` and
`has_image` columns say which halves of each row are there; a missing half is a
null vector (read back as zeros, with the mask). Parts are written to a temp
file and renamed, so a crash never leaves half a part under the real name; a
write that fails (disk full) removes its temp file and raises `UserError`.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.phash import WORDS
from pipeline.data.splits import CLASS_NAMES, machine_memory_bytes
from pipeline.embed import labels as label_sets
from pipeline.embed.hash_column import phash_array, phash_matrix
from pipeline.embed.manifest import MANIFEST_NAME, MAX_DIM, READABLE_VERSIONS, check_manifest, read_manifest  # noqa: F401 (read through cache., as before the manifest had its module)
from pipeline.embed.owned import PART_NAME
from pipeline.embed.owned import remove_temp_files as _remove_our_temp_files
from pipeline.embed.similarity import SIMILARITY_COLUMN, has_similarity, similarity_array, similarity_values
from pipeline.errors import UserError
from pipeline.files import file_sha256, write_atomic, write_json_atomic, write_text_atomic

# 2 added has_text/has_image columns, null vectors for a missing half and partial.tsv; 3 added `image_sha256`
# (the image file's SHA-256, for `doctor`'s exact-duplicate check); 4 added `image_phash` (uint64 perceptual
# hash of the decoded pixels as 3 words, see data/phash.py; zeros when none; for `doctor`'s resized/re-encoded-copy
# check). Older caches still load
# and train (every row whole, no image hashes). The fingerprint names FINGERPRINT_FORMAT, the format of what the
# vectors depend on: it moved with 2 and 3, not with 4 (a hash column adds no input), so a complete format 3
# cache of the same inputs stays up to date; `doctor` then says its perceptual check needs a new cache.
FORMAT_VERSION = 4
FINGERPRINT_FORMAT = 3
FINGERPRINT_NAME = "fingerprint.json"
SKIPPED_NAME = "skipped.tsv"
PARTIAL_NAME = "partial.tsv"
EMBEDDING_COLUMNS = ("text_emb", "image_emb")
_SKIPPED_KEY = b"pipeline.skipped"
_PARTIAL_KEY = b"pipeline.partial"  # [{"id", "row", "missing", "reason"}] of the part's half-posts
_COUNTS_KEY = b"pipeline.counts"  # per-part tallies (e.g. truncated_titles) that finalize sums per split
_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


@dataclass
class CachedSplit:
    """One split loaded into memory: row `i` of every array is the same post."""

    ids: np.ndarray  # (N,) object (str)
    labels: np.ndarray  # (N,) int64; -1 in an unlabelled split
    text_emb: np.ndarray  # (N, Dt) float32; zeros where has_text is False
    image_emb: np.ndarray  # (N, Di) float32; zeros where has_image is False
    has_text: np.ndarray = None  # (N,) bool; None (all True) for splits built in memory without it
    has_image: np.ndarray = None  # (N,) bool
    image_sha256: np.ndarray = None  # (N,) object (str hex; "" when unknown); None for a cache before format 3
    image_phash: np.ndarray = None  # (N, 3) uint64 phash.perceptual_hash (zeros: none); None before format 4
    similarity: np.ndarray = None  # (N,) float32 text-image cosine, NaN without both halves; None: the cache has none

    def __post_init__(self):
        for name in ("has_text", "has_image"):
            if getattr(self, name) is None:
                setattr(self, name, np.ones(len(self.ids), dtype=bool))

    def __len__(self):
        return len(self.ids)

    def subset(self, rows):
        """The same split cut to `rows` (a slice, a boolean mask or indices), every per-row array alike."""
        return CachedSplit(**{spec.name: None if getattr(self, spec.name) is None else getattr(self, spec.name)[rows]
                              for spec in fields(self)})


def part_path(cache_dir, split, index):
    return Path(cache_dir) / split / f"part-{index:05d}.parquet"


def existing_parts(cache_dir, split):
    """Indices of the complete parts of a split (temp files are not parts, nor is a symlink at a part's
    name: it is embedded again, and the new part replaces the link without writing through it)."""
    folder = Path(cache_dir) / split
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.iterdir()
            if PART_NAME.match(p.name) and not p.is_symlink() and p.is_file()}


def _embedding_array(matrix, dtype, present):
    """(N, D) matrix -> fixed-size lists, null where `present` is False (those rows' values are ignored)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    values = pa.array(matrix.reshape(-1), type=_DTYPES[dtype])
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=mask)


def write_part(path, ids, labels, text_emb, image_emb, skipped, dtype="float32", counts=None,
               has_text=None, has_image=None, partial=None, image_sha256=None, image_phash=None, similarity=None):
    """Write one part atomically; `skipped` is a list of {"id", "reason"} dicts, `counts` {name: int}.

    `labels` None (an unlabelled split) writes a label column of nulls. `has_text` / `has_image` (default:
    all True) mark the rows whose vector is there; `partial` lists {"id", "row", "missing", "reason"} of them.
    `image_sha256` holds one hex string per row ("" or None: unknown, e.g. a row without an image), `image_phash`
    one `phash.perceptual_hash` (None: none). `similarity` (None: no such column) holds each row's text-image
    cosine, NaN (written as null) where a row lacks a half.
    """
    ids = list(ids)
    has_text = np.ones(len(ids), bool) if has_text is None else np.asarray(has_text, dtype=bool)
    has_image = np.ones(len(ids), bool) if has_image is None else np.asarray(has_image, dtype=bool)
    digests = [""] * len(ids) if image_sha256 is None else [digest or "" for digest in image_sha256]
    table = pa.table({
        "id": pa.array(ids, type=pa.string()),
        "label": pa.nulls(len(ids), pa.int8()) if labels is None
        else pa.array(np.asarray(labels, dtype=np.int8), type=pa.int8()),
        "has_text": pa.array(has_text, type=pa.bool_()),
        "has_image": pa.array(has_image, type=pa.bool_()),
        "text_emb": _embedding_array(text_emb, dtype, has_text),
        "image_emb": _embedding_array(image_emb, dtype, has_image),
        "image_sha256": pa.array(digests, type=pa.string()),
        "image_phash": phash_array(image_phash, len(ids)),
        **({} if similarity is None else {SIMILARITY_COLUMN: similarity_array(similarity)}),
    })
    table = table.replace_schema_metadata({
        _SKIPPED_KEY: json.dumps(skipped).encode(), _COUNTS_KEY: json.dumps(counts or {}).encode(),
        _PARTIAL_KEY: json.dumps(partial or []).encode(),
    })
    path = Path(path)

    def write(tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)

    write_atomic(path, write)


def remove_temp_files(cache_dir):
    """Our temp files a killed run left behind (call with the cache lock held); no other `.tmp` file."""
    _remove_our_temp_files(cache_dir)


def _read_part_notes(path):
    """(labels, skipped list, counts dict, partial list) of a part, or a clear error for an unreadable part."""
    try:
        notes = pq.read_schema(path).metadata or {}
        labels = pq.read_table(path, columns=["label"]).column("label")
        return (labels, json.loads(notes.get(_SKIPPED_KEY, b"[]")), json.loads(notes.get(_COUNTS_KEY, b"{}")),
                json.loads(notes.get(_PARTIAL_KEY, b"[]")))
    except (OSError, ValueError, pa.ArrowException) as error:
        raise UserError(
            f"{path}: unreadable cache part ({error}); delete that file and rerun the same command to embed it again"
        ) from None


@dataclass
class PartRows:
    """One part read back, in input-row order."""

    ids: list
    text_emb: np.ndarray  # (N, Dt) float32, zeros where has_text is False
    image_emb: np.ndarray  # (N, Di)
    has_text: np.ndarray  # (N,) bool
    has_image: np.ndarray  # (N,) bool
    skipped: list  # {"id", "row", "reason"} of the part's rows that were not embedded
    partial: list  # {"id", "row", "missing", "reason"} of its half-posts


def read_part_rows(path):
    """One part as `PartRows`."""
    table = _read_part(path)
    notes = table.schema.metadata or {}
    dims = [table.schema.field(name).type.list_size for name in EMBEDDING_COLUMNS]
    return PartRows(ids=table.column("id").to_pylist(),
                    text_emb=_matrix(table.column("text_emb"), dims[0], path, "text_emb"),
                    image_emb=_matrix(table.column("image_emb"), dims[1], path, "image_emb"),
                    has_text=table.column("has_text").to_numpy(zero_copy_only=False).astype(bool),
                    has_image=table.column("has_image").to_numpy(zero_copy_only=False).astype(bool),
                    skipped=json.loads(notes.get(_SKIPPED_KEY, b"[]")),
                    partial=json.loads(notes.get(_PARTIAL_KEY, b"[]")))


def missing_parts(cache_dir, manifest):
    """Part files the manifest lists that are not on disk."""
    return [Path(cache_dir) / split / part["file"] for split, info in manifest["splits"].items()
            for part in info["parts"] if not (Path(cache_dir) / split / part["file"]).is_file()]


def _check_fits_in_memory(path, rows, width):
    needed, total = rows * width * 4, machine_memory_bytes()
    if total and needed > total:
        raise UserError(f"{path}: {rows} rows x {width} values need {needed / 1e9:.1f} GB, more than this "
                        f"machine's {total / 1e9:.1f} GB of memory; use a machine with more memory or fewer rows")


def load_split(cache_dir, split, verify=True, label_column=None):
    """Load one split of a complete cache as float32 NumPy arrays, with its presence masks and the labels of
    `label_column` (None: the label set the cache's last embed used; see embed/labels.py).

    Parts are read one at a time into preallocated arrays, so peak memory is the
    split's float32 size plus one part, whatever the number of parts.
    """
    manifest = read_manifest(cache_dir)
    if split not in manifest["splits"]:
        raise UserError(
            f"{Path(cache_dir) / MANIFEST_NAME}: the cache has no split {split!r} "
            f"(it has: {', '.join(manifest['splits'])}); embed it with --splits"
        )
    info = manifest["splits"][split]
    rows = info["rows_embedded"]
    dims = manifest["dims"]
    _check_fits_in_memory(Path(cache_dir) / MANIFEST_NAME, rows, dims["text"] + dims["image"])
    ids = np.empty(rows, dtype=object)
    labels = np.empty(rows, dtype=np.int64)
    text = np.empty((rows, dims["text"]), dtype=np.float32)
    image = np.empty((rows, dims["image"]), dtype=np.float32)
    has_text, has_image = np.ones(rows, dtype=bool), np.ones(rows, dtype=bool)  # format 1: every row whole
    digests = np.full(rows, "", dtype=object)
    phashes = np.zeros((rows, WORDS), dtype=np.uint64)
    has_digests, has_phashes = manifest["format_version"] >= 3, manifest["format_version"] >= 4
    similarity = np.full(rows, np.nan, dtype=np.float32) if has_similarity(manifest) else None
    start = 0
    for part in info["parts"]:
        path = Path(cache_dir) / split / part["file"]
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{path}: part listed in the manifest is missing; rerun the embed command to rebuild it")
        if verify and file_sha256(path) != part["sha256"]:
            raise UserError(f"{path}: checksum differs from the manifest (corrupt or changed); re-embed the cache")
        table = _read_part(path)
        stop = start + table.num_rows
        if stop > rows:
            raise UserError(f"{path}: more rows than the manifest records; re-embed the cache")
        ids[start:stop] = table.column("id").to_pylist()
        labels[start:stop] = table.column("label").fill_null(-1).to_numpy()
        for name, target in (("has_text", has_text), ("has_image", has_image)):
            if name in table.column_names:
                target[start:stop] = table.column(name).to_numpy(zero_copy_only=False)
        if has_digests:
            digests[start:stop] = _column(table, "image_sha256", path, manifest).to_pylist()
        if has_phashes:
            phashes[start:stop] = phash_matrix(_column(table, "image_phash", path, manifest))
        if similarity is not None:
            similarity[start:stop] = similarity_values(_column(table, SIMILARITY_COLUMN, path, manifest))
        for name, target in (("text_emb", text), ("image_emb", image)):
            target[start:stop] = _matrix(table.column(name), target.shape[1], path, name)
        start = stop
    if start != rows:
        raise UserError(f"{Path(cache_dir) / split}: parts hold {start} rows, the manifest {rows}; re-embed the cache")
    kept_apart = label_sets.read_labels(cache_dir, manifest, split, label_column, ids, verify)
    labels = labels if kept_apart is None else kept_apart  # None: a cache before label sets, labels in the parts
    # Arrow's allocator keeps the freed part buffers for reuse; hand them back so that
    # holding a split costs its arrays, not arrays plus a pool the size of a part or more.
    pa.default_memory_pool().release_unused()
    return CachedSplit(ids=ids, labels=labels, text_emb=text, image_emb=image, has_text=has_text, has_image=has_image,
                       image_sha256=digests if has_digests else None, image_phash=phashes if has_phashes else None,
                       similarity=similarity)


def _column(table, name, path, manifest):
    if name not in table.column_names:
        raise UserError(f"{path}: no {name} column in a format {manifest['format_version']} cache; re-embed the cache")
    return table.column(name)


def _read_part(path):
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"{path}: unreadable Parquet part ({error}); re-embed the cache") from None


def _matrix(column, dim, path, name):
    """Fixed-size-list column -> (rows, dim) float32 matrix without a Python loop; a null row (a missing half)
    reads as zeros."""
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    if not chunks:
        return np.empty((0, dim), dtype=np.float32)
    if chunks[0].type.list_size != dim:
        raise UserError(f"{path}: column {name} has width {chunks[0].type.list_size}, the manifest says {dim}")
    matrices = []
    for chunk in chunks:
        # .values keeps the slots of null rows (flatten() would drop them and misalign the rows)
        values = chunk.values.slice(chunk.offset * dim, len(chunk) * dim).to_numpy(zero_copy_only=False)
        matrix = values.reshape(-1, dim).astype(np.float32, copy=chunk.null_count > 0)
        if chunk.null_count:
            matrix[chunk.is_null().to_numpy(zero_copy_only=False)] = 0
        matrices.append(matrix)
    return matrices[0] if len(matrices) == 1 else np.concatenate(matrices)


def finalize(cache_dir, splits, fingerprint, inputs, dims, config, split_notes=None, features=(), label_set=None,
             class_names=CLASS_NAMES):
    """Write skipped.tsv and, last, the manifest that marks the cache complete.

    `splits` maps split name -> number of input rows read. Checks that every
    input row is accounted for: embedded in a part or listed as skipped.
    Every kept row is counted once: `rows_read` = `rows_both` + `rows_text_only` +
    `rows_image_only` + `rows_skipped` (`rows_embedded` is the kept rows, the
    first three together); `missing_by_reason` counts the half-posts' reasons per
    missing half, and partial.tsv lists them.
    Per split the manifest also has `class_counts` (embedded rows per class),
    `labelled` (false when the split file had no label column: labels are null),
    the parts' summed counts, and whatever `split_notes[split]` adds. `features` names the parts' extra
    feature columns (similarity), recorded as the manifest's `features` when there are any. `label_set` =
    (SplitRows by split, label column, class names) writes that label set (embed/labels.py), whose counts then
    replace the parts'. `class_names` name the labels the parts themselves hold (a cache written without label
    sets, as the synthetic caches of bench/synthetic.py are).
    """
    cache_dir = Path(cache_dir)
    classes = {str(label): name for label, name in enumerate(class_names)}
    manifest_splits, skipped_rows, partial_rows = {}, [], []
    for split, rows_read in splits.items():
        parts, embedded, reasons, counts, unlabelled = [], 0, {}, {}, 0
        halves = {"text": {}, "image": {}}  # missing half -> reason -> rows
        class_counts = dict.fromkeys(classes.values(), 0)
        for index in sorted(existing_parts(cache_dir, split)):
            path = part_path(cache_dir, split, index)
            labels, part_skipped, part_counts, part_partial = _read_part_notes(path)
            parts.append({"file": path.name, "rows": len(labels), "sha256": file_sha256(path)})
            embedded += len(labels)
            unlabelled += labels.null_count
            for label, count in zip(*np.unique(labels.drop_null().to_numpy(), return_counts=True)):
                class_counts[classes[str(label)]] += int(count)
            for name, count in part_counts.items():
                counts[name] = counts.get(name, 0) + count
            for row in part_skipped:
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
                skipped_rows.append((split, row["id"], row["reason"]))
            for row in part_partial:
                halves[row["missing"]][row["reason"]] = halves[row["missing"]].get(row["reason"], 0) + 1
                partial_rows.append((split, row["id"], row["missing"], row["reason"]))
        skipped = sum(reasons.values())
        text_only, image_only = sum(halves["image"].values()), sum(halves["text"].values())
        both = embedded - text_only - image_only
        if both < 0 or both + text_only + image_only + skipped != rows_read:
            raise RuntimeError(f"{split}: {rows_read} rows read but {both} with both + {text_only} text-only + "
                               f"{image_only} image-only + {skipped} skipped")
        manifest_splits[split] = {
            "rows_read": rows_read, "rows_embedded": embedded, "rows_both": both, "rows_text_only": text_only,
            "rows_image_only": image_only, "missing_by_reason": {k: v for k, v in halves.items() if v},
            "rows_skipped": skipped, "skipped_by_reason": reasons, "parts": parts,
            "class_counts": class_counts, "labelled": unlabelled == 0, **counts,
            **(split_notes or {}).get(split, {}),
        }
    write_skipped(cache_dir / SKIPPED_NAME, skipped_rows)
    write_partial(cache_dir / PARTIAL_NAME, partial_rows)
    manifest = {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "inputs": inputs,
        "dims": dims, "classes": classes, "splits": manifest_splits,
        "config": config, **({"features": list(features)} if features else {}),
    }
    if label_set is not None:
        manifest = label_sets.write_label_set(cache_dir, manifest, *label_set)
    write_json_atomic(cache_dir / MANIFEST_NAME, manifest)
    return manifest


def write_skipped(path, rows):
    """skipped.tsv: one (split, id, reason) line per row that was not used, under a header."""
    lines = ["split\tid\treason"] + [f"{split}\t{key}\t{reason}" for split, key, reason in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_partial(path, rows):
    """partial.tsv: one (split, id, missing, reason) line per row kept with one modality, under a header."""
    lines = ["split\tid\tmissing\treason"] + ["\t".join(row) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")
