"""Writing files so that a crash never leaves half a file under the real name, and hashing them.

`write_atomic` writes to a temp file beside the target (named `.NAME.PID.tmp`),
fsyncs it and renames it over the target; a write that fails (disk full, no
permission) removes the temp file and raises `UserError` naming the file.
No symlink is followed on write: a leftover temp name is unlinked (never opened)
first, and the rename replaces a symlink at the target instead of writing through it.
"""

import errno
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError


def temp_name(path):
    """The temp file `write_atomic` uses for `path`; `.tmp` files of this form are ours to remove."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path, write):
    """Call `write(temp_path)` to fill a temp file, then move it over `path` in one rename."""
    path = Path(path)
    tmp = temp_name(path)
    with writing(path):
        try:
            tmp.unlink(missing_ok=True)  # a symlink planted at the temp name is removed, its target untouched
            write(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_json_atomic(path, payload):
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path, text):
    def write(tmp):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomic(path, write)


def read_json_object(path, absent, fix):
    """The JSON object in file `path`; a UserError naming the file otherwise: `absent` when there is no
    such file, `fix` (what to do) when it is not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {absent}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}); {fix}") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(payload).__name__}; {fix}")
    return payload


def output_folder(path, flag):
    """Create folder `path` (and parents); a clear error when it is a file or cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path}: cannot create the folder ({error.strerror}); give a writable folder path") \
            from None
    return path


@contextmanager
def writing(path):
    """A failed write (disk full, no permission) as a clear error naming the file."""
    try:
        yield
    except OSError as error:  # pyarrow's IO errors are OSErrors too
        full = error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)
        raise UserError(
            f"{path}: could not write ({'disk full: ' if full else ''}{error}); "
            "free space (or fix the folder) and rerun the same command: finished work is kept"
        ) from None


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
