"""What in a cache folder is ours, and replacing a cache without ever losing the last complete one.

Stage one deletes or replaces only files it can prove it wrote:
`fingerprint.json` and `manifest.json` of our shape, `skipped.tsv` and `partial.tsv` beside them,
`<split>/part-NNNNN.parquet` files that carry our Parquet metadata, `labels/<column>/<split>.parquet`
label files (embed/labels.py) that carry theirs, and our temp
files (`.NAME.PID.tmp` with NAME one of those). Anything else in the folder (a
user's images in `train/`, a Spark `part-*.parquet`, a `notes.tmp`) is left as
it is, and a folder is removed only when it is empty.

A rebuild over a complete cache is written to `<cache>/.rebuild/` and swapped
in only once its manifest exists (`swap`): a failure before then leaves the
previous cache as it was, and the next run resumes or clears `.rebuild/`. A
kill during the swap itself (a few renames) is finished by the next run, which
finds the complete `.rebuild/manifest.json` first.
"""

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError

STAGING = ".rebuild"
LOCK = ".lock"
LABELS = "labels"  # the label sets' folder, never a split's (embed refuses a split of that name)
_LABEL_KEY = b"pipeline.labels"  # labels.LABELS_KEY (that module imports this one)
_LABEL_TEMP = re.compile(r"^\..+\.parquet\.\d+\.tmp$")
PART_NAME = re.compile(r"^part-\d{5}\.parquet$")
_TOP_FILES = ("manifest.json", "fingerprint.json", "skipped.tsv", "partial.tsv")
_TEMP_NAME = re.compile(
    r"^\.(manifest\.json|fingerprint\.json|skipped\.tsv|partial\.tsv|part-\d{5}\.parquet)\.\d+\.tmp$")
OUR_PART_KEY = b"pipeline.skipped"  # every part we write has it in its schema metadata


def read_fingerprint(folder):
    """The fingerprint document in `folder`, None without one; an error for a file not of our shape."""
    path = Path(folder) / "fingerprint.json"
    if not path.is_file() or path.is_symlink():
        if path.is_symlink():
            raise UserError(f"{path}: is a symlink, which this tool never writes; remove it or use another --cache-dir")
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise UserError(f"{path}: not a fingerprint this tool wrote ({error}); "
                        "use another --cache-dir, or delete the cache folder and re-embed") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("fingerprint"), str)
            and isinstance(doc.get("inputs", {}), dict)):
        raise UserError(f"{path}: not a fingerprint this tool wrote (expected an object with a 'fingerprint' string); "
                        "use another --cache-dir, or delete the cache folder and re-embed")
    return doc


def foreign_entries(folder):
    """Entries of a folder without our fingerprint, other than our lock and staging folder."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in (LOCK, STAGING))


def refuse_foreign(folder):
    """A non-empty folder that is not one of our caches is never written into."""
    entries = foreign_entries(folder)
    if entries:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise UserError(f"--cache-dir {folder}: not empty and not a cache this tool wrote (it holds {shown}); "
                        "give an empty or new folder: stage one never writes among files it did not write")


def is_our_part(path):
    if path.is_symlink() or not path.is_file() or not PART_NAME.match(path.name):
        return False
    try:
        return OUR_PART_KEY in (pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowException):
        return False


def _split_folders(folder):
    return [p for p in Path(folder).iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            and p.name != LABELS]


def _is_our_label_file(path):
    if path.is_symlink() or not path.is_file() or not path.name.endswith(".parquet"):
        return False
    try:
        return _LABEL_KEY in (pq.read_schema(path).metadata or {})
    except (OSError, pa.ArrowException):
        return False


def label_files(folder):
    """(relative path, path) of our label files (and their temp files) under `folder`/labels/<column>/."""
    root = Path(folder) / LABELS
    if not root.is_dir() or root.is_symlink():
        return []
    found = []
    for column in (p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for path in column.iterdir():
            if _is_our_label_file(path) or (_LABEL_TEMP.match(path.name) and path.is_file()):
                found.append((f"{LABELS}/{column.name}/{path.name}", path))
    return found


def _remove_label_files(folder, keep):
    for relative, path in label_files(folder):
        if ("", relative) not in keep:
            path.unlink()
    root = Path(folder) / LABELS
    if root.is_dir() and not root.is_symlink():
        for column in root.iterdir():
            if column.is_dir() and not column.is_symlink():
                _remove_if_empty(column)
        _remove_if_empty(root)


def our_temp_files(folder):
    folder = Path(folder)
    places = [folder, *_split_folders(folder)] if folder.is_dir() else []
    return [p for place in places for p in place.iterdir() if _TEMP_NAME.match(p.name) and not p.is_dir()]


def remove_temp_files(folder):
    for path in our_temp_files(folder):
        path.unlink(missing_ok=True)


def remove_owned(folder, keep=()):
    """Delete what we wrote in `folder` (manifest first, so a half-removed cache is never complete);
    `keep` holds (split, file) parts to leave. Empty split folders go; nothing else is touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    (folder / "manifest.json").unlink(missing_ok=True)
    for split in _split_folders(folder):
        for path in split.iterdir():
            if (split.name, path.name) not in keep and (is_our_part(path) or _TEMP_NAME.match(path.name)):
                path.unlink()
        _remove_if_empty(split)
    _remove_label_files(folder, keep)
    for name in _TOP_FILES[1:]:
        if ("", name) not in keep:
            (folder / name).unlink(missing_ok=True)
    remove_temp_files(folder)


def _remove_if_empty(folder):
    try:
        folder.rmdir()
    except OSError:  # not empty: it holds something we did not write
        pass


def clear_staging(cache_dir):
    """Remove a staging folder left by an earlier run (only what we wrote in it)."""
    staging = Path(cache_dir) / STAGING
    if staging.is_symlink():
        raise UserError(f"{staging}: is a symlink, which this tool never writes; remove it and rerun")
    if staging.is_dir():
        read_fingerprint(staging)  # refuses a folder that is not ours
        remove_owned(staging)
        _remove_if_empty(staging)


def staged_manifest(cache_dir):
    """The staging folder's manifest when a rebuild finished there (its swap still to do), else None."""
    staging = Path(cache_dir) / STAGING
    path = staging / "manifest.json"
    if staging.is_symlink() or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    from pipeline.embed.manifest import check_manifest  # manifest imports this module

    check_manifest(manifest, path)
    return manifest


def swap(cache_dir, manifest):
    """Replace the cache in `cache_dir` by the complete one in its staging folder; idempotent, so a
    swap that was killed half-way is finished by calling it again."""
    cache_dir = Path(cache_dir)
    staging = cache_dir / STAGING
    listed = [(split, part["file"]) for split, info in manifest["splits"].items() for part in info["parts"]]
    moved = {(split, name) for split, name in listed if not (staging / split / name).exists()}
    moved |= {("", name) for name in _TOP_FILES[1:] if not (staging / name).exists()}
    labels = [info["file"] for entry in manifest.get("label_sets", {}).values() for info in entry["splits"].values()]
    moved |= {("", name) for name in labels if not (staging / name).exists()}
    for split, name in listed:  # never rename over a file we did not write
        target = cache_dir / split / name
        if (split, name) not in moved and (target.is_symlink() or target.exists()) and not is_our_part(target):
            raise UserError(f"{target}: not a part this tool wrote, and the new cache has a part of that name; "
                            "move it out of the cache folder and rerun (the new cache is kept in "
                            f"{staging} until then)")
        if (cache_dir / split).is_symlink() or (cache_dir / split).is_file():
            raise UserError(f"{cache_dir / split}: is not a folder; move it out of the cache folder and rerun")
    remove_owned(cache_dir, keep=moved)
    for split, name in listed:
        if (split, name) not in moved:
            (cache_dir / split).mkdir(exist_ok=True)
            os.replace(staging / split / name, cache_dir / split / name)
    for name in labels:
        if ("", name) not in moved:
            (cache_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, cache_dir / name)
    for name in (*_TOP_FILES[2:], *_TOP_FILES[1:2], *_TOP_FILES[:1]):  # skipped, fingerprint, then manifest
        if (staging / name).exists():
            os.replace(staging / name, cache_dir / name)
    for split in _split_folders(staging):
        _remove_if_empty(split)
    _remove_label_files(staging, keep={("", name) for name in labels})
    _remove_if_empty(staging)
