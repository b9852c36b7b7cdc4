"""Content fingerprints: a cache is reused only for the exact inputs it was built from."""

import hashlib
import json
from pathlib import Path

from pipeline.files import file_sha256


def path_sha256(path):
    """Hash of a file, or of a folder's files (names and contents, sorted), hidden ones skipped."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(str(relative).encode() + b"\0" + file_sha256(file).encode())
    return digest.hexdigest()


def combine(inputs):
    """One hash for a dict of component -> hash or setting."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def differences(old_inputs, new_inputs):
    """Names of the components that changed, for the 'cache is stale' message."""
    keys = sorted(set(old_inputs) | set(new_inputs))
    return [key for key in keys if old_inputs.get(key) != new_inputs.get(key)]
