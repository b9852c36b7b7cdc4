"""Where a command may write: never over its inputs, a run, a cache, or a file it did not write.

Every command that writes asks here first, before any work, so a refusal changes nothing:

- `claim_output_file`: one output file (predict --out, report --out, doctor --write-clean-ids). Refused when it
  is, or resolves to (symlinks included), one of the command's inputs; when it is an existing file of a run
  folder or cache; when it is any other existing file that `ours` does not recognise as this command's own
  earlier output. `--overwrite` lets the user say they mean it.
- `claim_run_folder`: a run folder (train-head, ablate, finetune-e2e, compare). An existing non-empty folder is
  refused, even a run of our own, unless `--overwrite` (or, where a command resumes, `--resume` into a folder
  of that command): a second run never replaces the first without a word.
- `refuse_other_cache`: stage one's cache and predict's parts look alike on disk (a fingerprint.json and
  part files); each refuses the other's folder, whose files it would otherwise delete as stale.
"""

import json
import os
from pathlib import Path

from pipeline.errors import UserError

RUN_COMMANDS = ("train-head", "finetune-e2e", "ablate", "compare")
STAGE_ONE_CACHE = "stage-one cache"
PREDICT_CACHE = "predict cache"
_PARENTS_LOOKED_AT = 4  # run/head/model.safetensors and export/clip_model/... lie at most this deep
_READ_CAP = 1 << 20  # config.json and fingerprint.json of ours are small; a bigger file is not ours


def claim_output_file(path, flag, inputs=(), overwrite=False, ours=None):
    """Check that file `path` may be written by a command reading `inputs`; returns it as a Path.

    `ours(path) -> bool` recognises this command's own earlier output (rewritten without --overwrite)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if overwrite:
        return path
    target = os.path.realpath(path)
    for given in inputs:
        if given is not None and os.path.realpath(given) == target:
            raise UserError(f"{flag} {path}: is {'a link to ' if path.is_symlink() else ''}an input of this "
                            f"command ({given}); writing there would replace it. Give another {flag}, or pass "
                            "--overwrite if you mean to replace it")
    if not (path.exists() or path.is_symlink()):
        return path
    if not path.is_symlink() and ours is not None and ours(path):
        return path  # this command's own earlier output, even inside a run folder (predictions beside a run)
    owner = _owning_folder(Path(target))
    if owner is not None:
        folder, kind = owner
        raise UserError(f"{flag} {path}: is a file of the {kind} {folder}; writing there would break it. "
                        f"Give another {flag} (outside that folder, or a new name), or pass --overwrite")
    raise UserError(f"{flag} {path}: the file exists and this command did not write it; give another {flag}, "
                    "or pass --overwrite to replace it")


def claim_run_folder(out, command, overwrite=False, resume=False, flag="--out"):
    """Check before any work that run folder `out` may be written by `command`; returns it as a Path.

    A new or empty folder is fine. A non-empty one needs `overwrite` (files of the same name are replaced,
    others are left), or `resume` when it holds a run of `command` to continue."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise UserError(f"{flag} {out}: a symlink to nothing; give a folder path")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder; give a folder path")
    if not out.is_dir() or overwrite:
        return out
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return out
    kind = folder_kind(out)
    if resume and kind == f"{command} run folder":
        return out
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    what = f"holds {_a(kind)}" if kind else f"not empty and not a {command} run folder (it holds {shown})"
    ways = "choose another --out, or pass --overwrite to write this run's files into it (files of the same name " \
           "are replaced, others are left)"
    if kind == f"{command} run folder" and command == "finetune-e2e":
        ways += ", or --resume to continue its checkpoints"
    raise UserError(f"{flag} {out}: {what}, and a run never replaces another without a word; {ways}")


def refuse_other_cache(folder, wanted, flag="--cache-dir"):
    """`folder` may hold a cache of kind `wanted` (STAGE_ONE_CACHE or PREDICT_CACHE), never the other kind."""
    kind = cache_kind(folder)
    if kind is not None and kind != wanted:
        writer = "`embed`" if kind == STAGE_ONE_CACHE else "`predict --cache-dir`"
        raise UserError(f"{flag} {folder}: holds {_a(kind)} (written by {writer}), not {_a(wanted)}; using it would "
                        f"delete its files. Give another {flag} (delete that folder yourself if you no longer need it)")


def folder_kind(folder):
    """'<command> run folder', STAGE_ONE_CACHE, PREDICT_CACHE or None: what of ours `folder` holds."""
    folder = Path(folder)
    cache = cache_kind(folder)
    if cache is not None:
        return cache
    command = run_command(folder)
    return f"{command} run folder" if command else None


def run_command(folder):
    """The command that wrote run folder `folder` (its config.json says so), else None.

    A config.json naming one of our commands is enough: finetune-e2e folders written before
    `pipeline_version` was recorded in them are ours too. A folder that a killed finetune-e2e left with
    nothing but the Trainer's checkpoints/ (and export/) is a finetune-e2e run folder (to resume)."""
    folder = Path(folder)
    config = read_small_json(folder / "config.json")
    if isinstance(config, dict) and config.get("command") in RUN_COMMANDS:
        return config["command"]
    if folder.is_dir() and {"checkpoints"} <= {p.name for p in folder.iterdir()} <= {"checkpoints", "export"}:
        return "finetune-e2e"  # killed before its config.json (written with the results) was
    return None


def cache_kind(folder):
    """STAGE_ONE_CACHE, PREDICT_CACHE or None, from the folder's fingerprint.json (or stage one's manifest)."""
    folder = Path(folder)
    doc = read_small_json(folder / "fingerprint.json")
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if isinstance(inputs, dict) and "input" in inputs and "encoders" in inputs:
        return PREDICT_CACHE
    if isinstance(inputs, dict) and "splits" in inputs:
        return STAGE_ONE_CACHE
    manifest = read_small_json(folder / "manifest.json")
    if isinstance(manifest, dict) and "splits" in manifest and "fingerprint" in manifest:
        return STAGE_ONE_CACHE
    return None


def _owning_folder(path):
    """(folder, kind) of the run folder or cache that file `path` lies in, else None."""
    for folder in list(path.parents)[:_PARENTS_LOOKED_AT]:
        kind = folder_kind(folder)
        if kind is not None:
            return folder, kind
    return None


def _a(kind):
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def read_small_json(path, max_bytes=_READ_CAP):
    """The JSON in a regular file (no symlink) of at most `max_bytes` (None: any size), else None: for telling
    our files from others, and for looking at a folder without failing on what is not there."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file() or (max_bytes is not None and path.stat().st_size > max_bytes):
            return None
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
