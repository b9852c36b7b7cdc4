"""What a run was trained on, read from the run folder itself, and whether its cache still is that.

A report describes its run: the encoders come from the run's own encoders.json
(or, without one, its config.json), the fingerprint from its config.json, never
from the cache as it is now. The cache folder is looked at only to say whether it
still holds what the run was trained on: when it has been rebuilt since (another
fingerprint) or is gone, the page says so in a banner, and the doctor's findings
are shown only when doctor.json records the run's own fingerprint (older
doctor.json files record none, so they are never taken for the run's).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.outputs import read_small_json
from pipeline.report.markup import Raw, escape, paragraph, table

_BANNER_STYLE = "border: 2px solid #c62828; background: #fdecea; padding: 0.6em 0.8em; font-weight: 600;"


@dataclass(frozen=True)
class CacheState:
    """The run's cache then (from config.json) and now (from the cache folder's manifest)."""

    folder: str  # None for a run that read no cache (finetune-e2e reads the split files)
    trained_on: str  # the fingerprint in the run's config.json (None when it records none)
    now: str  # the cache's fingerprint today; None when there is no readable manifest
    manifest: dict  # today's manifest, or None

    @property
    def status(self):
        """'none' (no cache), 'gone', 'unknown' (the run records no fingerprint), 'rebuilt' or 'same'."""
        if not self.folder:
            return "none"
        if self.manifest is None:
            return "gone"
        if not self.trained_on:
            return "unknown"
        return "same" if self.now == self.trained_on else "rebuilt"


def read_object(path):
    """A JSON object from `path`, or None when it is missing, a symlink, unreadable or not an object (a cache's
    manifest may be large: no size cap)."""
    value = read_small_json(path, max_bytes=None)
    return value if isinstance(value, dict) else None


def cache_state(config):
    cache = config.get("cache") if isinstance(config.get("cache"), dict) else {}
    folder = cache.get("dir")
    manifest = read_object(Path(folder) / "manifest.json") if folder else None
    return CacheState(folder=folder, trained_on=cache.get("fingerprint"),
                      now=manifest.get("fingerprint") if manifest else None, manifest=manifest)


def banner(state):
    """A banner when the cache no longer holds what the run was trained on; '' otherwise."""
    if state.status == "rebuilt":
        text = (f"The cache this run was trained on has been rebuilt since: {state.folder} now has fingerprint "
                f"{_short(state.now)}, this run was trained on {_short(state.trained_on)}. This page describes the "
                "run's own encoders and rows (from its run folder); the cache's current contents, and any doctor "
                "findings made on them, are another data set.")
    elif state.status == "gone":
        text = (f"The cache this run was trained on ({state.folder}, fingerprint {_short(state.trained_on)}) is gone "
                "or unreadable from here; this page describes the run from its own folder only.")
    else:
        return Raw("")
    return Raw(f'<p class="banner" id="cache-banner" style="{_BANNER_STYLE}">{escape(text)}</p>')


def _short(fingerprint):
    return str(fingerprint)[:12]


def run_encoders(record, config):
    """The encoders the run was trained with: its run record's (encoders.json, checked by pipeline.runs), else
    what its config.json says (finetune-e2e's `data` section); None when the run records neither."""
    if record.encoders is not None:
        return record.encoders
    data = config.get("data") if isinstance(config.get("data"), dict) else None
    if data:
        return {name: {"path": data.get(name)} if data.get(name) else None
                for name in ("text_model", "clip_model", "clip_lora")} | {
            "pooling": data.get("pooling"), "max_length": data.get("max_length")}
    return None


def encoders_table(encoders, fingerprint):
    """The run's encoders, as recorded in its folder."""
    def model(name):
        value = encoders.get(name)
        return value if isinstance(value, dict) else {}

    rows = [[name, model(name).get("path"), str(model(name).get("sha256") or "-")[:16]]
            for name in ("text_model", "clip_model", "clip_lora")]
    settings = {key: encoders.get(key) for key in ("pooling", "max_length", "clip_embedding", "lora_alpha")
                if encoders.get(key) is not None}
    rows.append(["text and image settings", json.dumps(settings), ""])
    if isinstance(encoders.get("image"), dict):
        rows.append(["image preprocessing", json.dumps(encoders["image"]), ""])
    intro = paragraph("From the run's own record (run.json / encoders.json)" + (f"; trained on cache fingerprint "
                                                                   f"{_short(fingerprint)}" if fingerprint else ""),
                      note=True)
    return Raw("<h3>Encoders of this run</h3>" + intro
               + table(["input", "as given", "content fingerprint"], rows, text_columns=3))


def doctor_findings(state):
    """(path of the doctor.md to show, or None; a note saying why none is shown, or None)."""
    if not state.folder:
        return None, None
    folder = Path(state.folder) / "doctor"
    if not (folder / "doctor.md").is_file():
        return None, None
    recorded = (read_object(folder / "doctor.json") or {}).get("fingerprint")
    if recorded and state.trained_on and recorded == state.trained_on:
        return folder / "doctor.md", None
    why = ("records no cache fingerprint (written before doctor recorded one)" if not recorded else
           f"was made on cache fingerprint {_short(recorded)}, not this run's {_short(state.trained_on)}")
    return None, (f"The doctor's output in {folder} {why}, so it is not shown: it may describe other data. Rerun "
                  f"`python -m pipeline doctor --cache-dir {state.folder}` on the cache this run was trained on.")
