"""What predict's kept parts were embedded from, and how many of the input's images are there at all.

A part in `--cache-dir` is reused only while the image files of its rows are
the files it was embedded from: each row's file is known by its stat (size,
modification time, inode, status-change time; no byte is read), and a part by
the hash of its rows' stats. A file rewritten, replaced or retargeted changes
its stat, so its part is embedded again instead of giving the old probabilities.
"""

import hashlib
import os

from pipeline.data.images import BadImage, resolve_inside

FEW_MISSING = 2  # up to this many rows without their image file pass without a warning (dead links happen)


def file_key(image_root, relative):
    """One row's image file as a short string: its stat when it is a file, else the reason it is not."""
    try:
        path = resolve_inside(image_root, relative)
        info = os.stat(path)
    except BadImage as error:
        return error.reason
    except OSError:
        return "missing_file"
    if not os.path.isfile(path):
        return "not_a_file"
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}:{info.st_ctime_ns}"


def file_keys(image_root, image_paths):
    """Every row's `file_key`, in input order."""
    return [file_key(image_root, relative) for relative in image_paths]


def part_keys(keys, part_rows):
    """One hash per part of `part_rows` rows, over its rows' file keys."""
    return [hashlib.sha256("\n".join(keys[start:start + part_rows]).encode("utf-8", "surrogateescape")).hexdigest()
            for start in range(0, len(keys), part_rows)]


def is_found(key):
    return key[:1].isdigit()


def missing_images(keys, image_root, image_paths, input_path):
    """(warning or None): how many rows have no image file under `image_root`, and how to point at the
    right folder, when more than a few do. Raises nothing: the caller decides on `none found`."""
    missing = [row for row, key in enumerate(keys) if key == "missing_file"]
    if len(missing) <= FEW_MISSING:
        return None
    example = os.path.join(str(image_root), image_paths[missing[0]])
    return (f"{len(missing)} of {len(keys)} rows have no image file under {image_root} (e.g. {example}); "
            f"if the images live elsewhere, pass --image-root DIR, the folder local_image_path in {input_path} "
            "is relative to (without it, the input's folder); those rows get no image (see their status)")


def none_found_message(keys, image_root, image_paths, input_path):
    """The error for an input none of whose images is there (None when one is)."""
    if not keys or any(is_found(key) for key in keys):
        return None
    example = os.path.join(str(image_root), image_paths[0]) if image_paths[0] else "(no image path)"
    return (f"{input_path}: none of its {len(keys)} rows' images was found under {image_root} (e.g. {example}); "
            "pass --image-root DIR, the folder local_image_path is relative to, or --text-only to score the "
            "titles alone")
