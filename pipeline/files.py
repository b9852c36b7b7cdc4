"""Writing files so that a crash never leaves half a file under the real name, and hashing them.

`write_atomic` writes to a temp file beside the target (named `.NAME.PID.tmp`),
fsyncs it and renames it over the target; a write that fails (disk full, no
permission) removes the temp file and raises `UserError` naming the file.
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
            write(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_json_atomic(path, payload):
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n"))


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
