"""A cache's manifest.json read back: every field its readers use checked before any of it is used.

The manifest is written last, by `cache.finalize`, so its presence marks a complete cache; `read_manifest`
names the file and the first problem instead of a traceback further on.
"""

from pathlib import Path

from pipeline.embed.labels import check_label_sets
from pipeline.embed.owned import PART_NAME
from pipeline.errors import UserError
from pipeline.files import read_json_object

MANIFEST_NAME = "manifest.json"
READABLE_VERSIONS = (1, 2, 3, 4)  # cache.FORMAT_VERSION and the formats before it (see embed/cache.py)


def read_manifest(cache_dir):
    """The manifest of a complete cache, checked for format; a clear error otherwise."""
    path = Path(cache_dir) / MANIFEST_NAME
    manifest = read_json_object(
        path, f"no manifest, so {cache_dir} is not a complete cache; "
              "run `python -m pipeline embed --cache-dir ...` (or `make embed`) first",
        "delete the cache folder and re-embed")
    return check_manifest(manifest, path)


MAX_DIM = 1 << 16  # no encoder we know of is wider; caps what a manifest can make us allocate


def check_manifest(manifest, path):
    """The manifest's shape, checked before any of it is used: one clear error naming the first problem."""
    def bad(what):
        raise UserError(f"{path}: {what}; this is not a manifest this tool wrote: re-embed the cache "
                        "(`python -m pipeline embed` into a new --cache-dir)")

    if not isinstance(manifest, dict):
        bad(f"expected a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise UserError(
            f"{path}: cache format {version!r}, this version reads formats "
            f"{', '.join(map(str, READABLE_VERSIONS))}; "
            "re-embed with `make embed` to rebuild it"
        )
    dims = manifest.get("dims")
    if not (isinstance(dims, dict) and all(_whole(dims.get(m), 1, MAX_DIM) for m in ("text", "image"))):
        bad(f"dims {dims!r} are not two widths between 1 and {MAX_DIM} (text, image)")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        bad(f"splits is {type(splits).__name__}, expected an object")
    for name, info in splits.items():
        parts = info.get("parts") if isinstance(info, dict) else None
        if not (isinstance(name, str) and name and "/" not in name and not name.startswith(".")
                and isinstance(parts, list) and _whole(info.get("rows_embedded"), 0)):
            bad(f"split {name!r} is not an object with rows_embedded and a list of parts")
        for part in parts:
            if not (isinstance(part, dict) and isinstance(part.get("file"), str) and PART_NAME.match(part["file"])
                    and _whole(part.get("rows"), 0) and isinstance(part.get("sha256"), str)):
                bad(f"split {name!r} lists a part {str(part)[:80]!r} that is not "
                    "{file: part-NNNNN.parquet, rows, sha256}")
        if sum(part["rows"] for part in parts) != info["rows_embedded"]:
            bad(f"split {name!r}: its parts' rows do not add up to rows_embedded {info['rows_embedded']}")
    check_label_sets(manifest, bad)
    return manifest


def _whole(value, minimum, maximum=None):
    return (isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            and (maximum is None or value <= maximum))
