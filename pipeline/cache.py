"""The embedding cache: Parquet parts per split plus a manifest.

Layout::

    <cache>/fingerprint.json             what the parts were built from (written first)
    <cache>/<split>/part-NNNNN.parquet   rows [N * part_rows, (N + 1) * part_rows) of the split
    <cache>/manifest.json                written last: the cache is complete only with it
    <cache>/skipped.tsv                  rows that could not be embedded, with the reason

A part covers a fixed range of input rows and carries the rows of that range it
skipped in its own metadata, so a part on disk is a complete, self-describing
unit: resuming means skipping the parts that exist. Parts are written to a temp
file and renamed, so a crash never leaves half a part under the real name.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FINGERPRINT_NAME = "fingerprint.json"
SKIPPED_NAME = "skipped.tsv"
EMBEDDING_COLUMNS = ("text_emb", "image_emb")
_SKIPPED_KEY = b"pipeline.skipped"
_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


@dataclass
class CachedSplit:
    """One split loaded into memory: row `i` of every array is the same post."""

    ids: np.ndarray  # (N,) object (str)
    labels: np.ndarray  # (N,) int64
    text_emb: np.ndarray  # (N, Dt) float32
    image_emb: np.ndarray  # (N, Di) float32

    def __len__(self):
        return len(self.ids)


def part_path(cache_dir, split, index):
    return Path(cache_dir) / split / f"part-{index:05d}.parquet"


def existing_parts(cache_dir, split):
    """Indices of the complete parts of a split (temp files are not parts)."""
    folder = Path(cache_dir) / split
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")}


def _embedding_array(matrix, dtype):
    matrix = np.ascontiguousarray(matrix, dtype=np.dtype(dtype))
    values = pa.array(matrix.reshape(-1), type=_DTYPES[dtype])
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1])


def write_part(path, ids, labels, text_emb, image_emb, skipped, dtype="float32"):
    """Write one part atomically; `skipped` is a list of {"id", "reason"} dicts."""
    table = pa.table({
        "id": pa.array(list(ids), type=pa.string()),
        "label": pa.array(np.asarray(labels, dtype=np.int8), type=pa.int8()),
        "text_emb": _embedding_array(text_emb, dtype),
        "image_emb": _embedding_array(image_emb, dtype),
    })
    table = table.replace_schema_metadata({_SKIPPED_KEY: json.dumps(skipped).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path):
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_json_atomic(path, payload):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    _fsync(tmp)
    os.replace(tmp, path)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_part_skipped(path):
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(_SKIPPED_KEY, b"[]"))


def read_manifest(cache_dir):
    """The manifest of a complete cache, checked for format; a clear error otherwise."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"{path}: no manifest, so {cache_dir} is not a complete cache; "
            "run `python -m pipeline embed --cache-dir ...` (or `make embed`) first"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error}); delete the cache folder and re-embed") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: cache format {version!r}, this version reads format {FORMAT_VERSION}; "
            "re-embed with `make embed` to rebuild it"
        )
    return manifest


def load_split(cache_dir, split, verify=True):
    """Load one split of a complete cache as float32 NumPy arrays.

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
    ids = np.empty(rows, dtype=object)
    labels = np.empty(rows, dtype=np.int64)
    text = np.empty((rows, dims["text"]), dtype=np.float32)
    image = np.empty((rows, dims["image"]), dtype=np.float32)
    start = 0
    for part in info["parts"]:
        path = Path(cache_dir) / split / part["file"]
        if verify and file_sha256(path) != part["sha256"]:
            raise UserError(f"{path}: checksum differs from the manifest (corrupt or changed); re-embed the cache")
        table = _read_part(path)
        stop = start + table.num_rows
        if stop > rows:
            raise UserError(f"{path}: more rows than the manifest records; re-embed the cache")
        ids[start:stop] = table.column("id").to_pylist()
        labels[start:stop] = table.column("label").to_numpy()
        for name, target in (("text_emb", text), ("image_emb", image)):
            target[start:stop] = _matrix(table.column(name), target.shape[1], path, name)
        start = stop
    if start != rows:
        raise UserError(f"{Path(cache_dir) / split}: parts hold {start} rows, the manifest {rows}; re-embed the cache")
    return CachedSplit(ids=ids, labels=labels, text_emb=text, image_emb=image)


def _read_part(path):
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"{path}: unreadable Parquet part ({error}); re-embed the cache") from None


def _matrix(column, dim, path, name):
    """Fixed-size-list column -> (rows, dim) view of its values, without a Python loop."""
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    if not chunks:
        return np.empty((0, dim), dtype=np.float32)
    if chunks[0].type.list_size != dim:
        raise UserError(f"{path}: column {name} has width {chunks[0].type.list_size}, the manifest says {dim}")
    values = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in chunks]
    return np.concatenate(values).reshape(-1, dim)


def finalize(cache_dir, splits, fingerprint, inputs, dims, config):
    """Write skipped.tsv and, last, the manifest that marks the cache complete.

    `splits` maps split name -> number of input rows read. Checks that every
    input row is accounted for: embedded in a part or listed as skipped.
    """
    cache_dir = Path(cache_dir)
    manifest_splits, skipped_lines = {}, ["split\tid\treason"]
    for split, rows_read in splits.items():
        parts, embedded, reasons = [], 0, {}
        for index in sorted(existing_parts(cache_dir, split)):
            path = part_path(cache_dir, split, index)
            rows = pq.read_metadata(path).num_rows
            parts.append({"file": path.name, "rows": rows, "sha256": file_sha256(path)})
            embedded += rows
            for row in read_part_skipped(path):
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
                skipped_lines.append(f"{split}\t{row['id']}\t{row['reason']}")
        skipped = sum(reasons.values())
        if embedded + skipped != rows_read:
            raise RuntimeError(f"{split}: {rows_read} rows read but {embedded} embedded + {skipped} skipped")
        manifest_splits[split] = {
            "rows_read": rows_read, "rows_embedded": embedded,
            "rows_skipped": skipped, "skipped_by_reason": reasons, "parts": parts,
        }
    (cache_dir / SKIPPED_NAME).write_text("\n".join(skipped_lines) + "\n")
    manifest = {
        "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "inputs": inputs,
        "dims": dims, "classes": {"0": "fake", "1": "real"}, "splits": manifest_splits,
        "config": config,
    }
    write_json_atomic(cache_dir / MANIFEST_NAME, manifest)
    return manifest


def write_cache(cache_dir, splits, part_rows=8192, dtype="float32", fingerprint="in-memory"):
    """Write in-memory `CachedSplit`s as a complete cache (tests and benchmarks)."""
    dims = None
    for split, data in splits.items():
        dims = {"text": data.text_emb.shape[1], "image": data.image_emb.shape[1]}
        for index, start in enumerate(range(0, len(data), part_rows)):
            rows = slice(start, start + part_rows)
            write_part(part_path(cache_dir, split, index), data.ids[rows], data.labels[rows],
                       data.text_emb[rows], data.image_emb[rows], skipped=[], dtype=dtype)
    write_json_atomic(Path(cache_dir) / FINGERPRINT_NAME, {"fingerprint": fingerprint})
    return finalize(cache_dir, {s: len(d) for s, d in splits.items()}, fingerprint,
                    inputs={}, dims=dims, config={"cache_dtype": dtype})
