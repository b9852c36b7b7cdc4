"""The encoder guard: rebuild exactly the feature extractor a head was trained on, or say what differs.

A run folder's encoders.json (written by train-head and finetune-e2e) records
each model's path as given and its content hash. A folder found at another
path with the same content is the same model; other content is refused unless
the caller allows it, and then the difference is kept as a warning.
"""

from pathlib import Path

from pipeline.embed.fingerprint import path_sha256
from pipeline.errors import UserError
from pipeline.runs.encoders import ENCODERS_NAME, MODELS, read_encoders


def read_record(run_dir):
    """The run's encoders.json, every field checked (pipeline.runs.encoders)."""
    return read_encoders(run_dir)


def resolve(run_dir, record, given, allow_other=False):
    """(settings to rebuild the encoders with, warnings): `given` maps text_model/clip_model/clip_lora/pooling
    to a user's value or None (= the run's). Raises when content differs, unless `allow_other`."""
    run_dir = Path(run_dir)
    where = run_dir / ENCODERS_NAME
    settings, differences = {}, []
    for name in MODELS:
        entry, path = record.get(name), given.get(name)
        if entry is None:
            if path:
                differences.append(f"--{_flag(name)} {path}: the head was trained without a {_what(name)}")
            settings[name] = path
            continue
        if path is None:
            in_run = run_dir / entry["in_run"] if entry.get("in_run") else None
            path = str(in_run) if in_run is not None and in_run.exists() else entry["path"]
            if not Path(path).exists():
                raise UserError(f"{where}: the {_what(name)} {path} the head was trained on is not there; "
                                f"pass --{_flag(name)} with where it is now")
        digest = path_sha256(path)
        if digest != entry["sha256"]:
            differences.append(f"--{_flag(name)} {path}: content differs from the {_what(name)} the head was "
                               f"trained on ({entry['path']}; sha256 {digest[:12]} vs {entry['sha256'][:12]})")
        settings[name] = path
        settings[f"{name}_sha256"] = digest
    pooling = given.get("pooling") or record["pooling"]
    if pooling != record["pooling"]:
        differences.append(f"--pooling {pooling}: the head was trained on {record['pooling']!r} pooling")
    settings.update(pooling=pooling, lora_alpha=record.get("lora_alpha"), max_length=record["max_length"],
                    clip_embedding=record["clip_embedding"], image=record["image"])
    if differences and not allow_other:
        raise UserError(f"{'; '.join(differences)}. The head in {run_dir} would score other features "
                        "(confident garbage): give the encoders it was trained on, train a head on these, or pass "
                        "--allow-other-encoders to predict anyway")
    return settings, [f"other encoders allowed: {d}" for d in differences]


def _flag(name):
    return name.replace("_", "-")


def _what(name):
    return {"text_model": "text model", "clip_model": "CLIP model", "clip_lora": "CLIP checkpoint"}[name]
