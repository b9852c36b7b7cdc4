"""What predict's kept parts were embedded from, and whether the input's images are where they are looked for.

A part in `--cache-dir` is reused only while the image files of its rows are
the files it was embedded from: each row's file is known by its stat (size,
modification time, inode, status-change time; no byte is read), and a part by
the hash of its rows' stats. A file rewritten, replaced or retargeted changes
its stat, so its part is embedded again instead of giving the old probabilities.
"""

import hashlib
import os
import stat

FEW_MISSING = 2  # up to this many rows without their image file pass without a warning (dead links happen)


def file_key(image_root, relative):
    """One row's image file as a short string: its stat when it is a file, else why there is none.

    The path is stat'ed as it is (symlinks followed, so a retargeted link changes the key) and not
    resolved: resolving costs more than the stat, and containment is `load_image`'s to check when the
    file is read."""
    if not relative:
        return "no_image_path"
    try:
        info = os.stat(os.path.join(image_root, relative))
    except FileNotFoundError:
        return "missing_file"
    except (OSError, ValueError):  # a NUL byte, a name too long, a symlink loop, no permission
        return "bad_path"
    if not stat.S_ISREG(info.st_mode):
        return "not_a_file"
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}:{info.st_ctime_ns}"


def file_keys(image_root, image_paths):
    """Every row's `file_key`, in input order."""
    image_root = str(image_root)
    return [file_key(image_root, relative) for relative in image_paths]


def part_keys(keys, part_rows):
    """One hash per part of `part_rows` rows, over its rows' file keys."""
    return [hashlib.sha256("\n".join(keys[start:start + part_rows]).encode("utf-8", "surrogateescape")).hexdigest()
            for start in range(0, len(keys), part_rows)]


def is_found(key):
    return key[:1].isdigit()


def missing_images(missing, rows, image_root, example, input_path):
    """A warning (or None): `missing` of `rows` rows have no image file under `image_root`, and how to
    point at the right folder, when more than a few do."""
    if missing <= FEW_MISSING:
        return None
    return (f"{missing} of {rows} rows have no image file under {image_root} (e.g. "
            f"{os.path.join(str(image_root), example)}); if the images live elsewhere, pass --image-root DIR, the "
            f"folder local_image_path in {input_path} is relative to (without it, the input's folder); those rows "
            "get no image (see their status)")


def none_found_message(image_root, image_paths, input_path, keys=None):
    """The error for an input none of whose images is there, None when one is (the rows are looked at
    until one is found: usually the first)."""
    found = (is_found(key) for key in keys) if keys is not None else \
        (is_found(file_key(str(image_root), relative)) for relative in image_paths)
    if not image_paths or any(found):
        return None
    example = os.path.join(str(image_root), image_paths[0]) if image_paths[0] else "(no image path)"
    return (f"{input_path}: none of its {len(image_paths)} rows' images was found under {image_root} (e.g. "
            f"{example}); pass --image-root DIR, the folder local_image_path is relative to, or --text-only to "
            "score the titles alone")
