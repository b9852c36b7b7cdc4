"""`predict` on a TSV file: stage one's embedding loop plus the run's head, one output line per input row.

The rows are embedded by stage one's own `embed_split` into parts (a temporary
folder, or `--cache-dir` to keep them: a rerun with the same arguments then
embeds only the parts that are missing). The parts are then read back one at a
time, scored by the head and appended to a temp file that is renamed over
`--out` at the end, so memory holds one part of vectors, whatever the number
of rows, and a half-written output never carries the real name.
"""

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.splits import CLASS_NAMES, read_rows
from pipeline.embed import cache, owned
from pipeline.embed.config import EmbedConfig
from pipeline.embed.fingerprint import combine, path_sha256
from pipeline.embed.run import cache_lock, embed_split
from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic
from pipeline.outputs import PREDICT_CACHE, refuse_other_cache
from pipeline.train.metrics import compute_metrics

SPLIT = "posts"  # the name of the input's parts in the cache folder (and of ids without an id column)
COLUMNS = ("id", "prob_real", "pred", "pred_name", "status")  # + label, correct when the input has labels


def results_frame(ids, prob_real, status, threshold, labels=None):
    """The output's rows: `prob_real` NaN where `status` is a skip reason (then pred is empty too)."""
    prob_real = np.asarray(prob_real, dtype=np.float64)
    scored = ~np.isnan(prob_real)
    pred = pd.array(np.where(scored, prob_real > threshold, 0).astype(np.int64), dtype="Int64")
    pred[~scored] = pd.NA
    frame = pd.DataFrame({"id": pd.array(list(ids), dtype=object), "prob_real": prob_real, "pred": pred,
                          "pred_name": [CLASS_NAMES[p] if ok else "" for p, ok in zip(pred.fillna(0), scored)],
                          "status": list(status)})
    if labels is not None:
        frame["label"] = pd.array(np.asarray(labels, dtype=np.int64), dtype="Int64")
        correct = pd.array((frame["pred"].fillna(-1) == frame["label"]).astype(np.int64), dtype="Int64")
        correct[~scored] = pd.NA
        frame["correct"] = correct
    return frame


def read_results(path):
    """An output CSV back as the DataFrame `results_frame` makes."""
    return pd.read_csv(path, dtype={"id": str, "pred": "Int64", "pred_name": str, "status": str, "label": "Int64",
                                    "correct": "Int64"}, keep_default_na=False, na_values={"prob_real": [""],
                                    "pred": [""], "correct": [""]})


def predict_file(classifier, input_path, out, image_root=None, image_pattern="{id}.jpg", cache_dir=None,
                 batch_size=64, num_workers=-1, on_bad_image="text-only", on_empty_title="image-only", part_rows=4096,
                 log=print):
    """Classify every row of a TSV into `out` (CSV) plus `<out>.meta.json` and, with labels,
    `<out>.metrics.json`; returns {"rows", "scored", "half_posts", "skipped_by_reason", "metrics"}.

    Half-posts (`on_bad_image text-only`, `on_empty_title image-only`) are scored when the head has
    missing vectors and reads the half that is there (status ok_text_only / ok_image_only); otherwise they
    get their reason as status, as skipped rows do."""
    input_path, out = Path(input_path), Path(out)
    rows = read_rows(input_path, SPLIT, image_pattern)
    image_root = str(image_root or input_path.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = cache_dir is not None
    if keep:  # a folder of the user's: never written into unless it is one of ours, one writer at a time
        folder = output_folder(cache_dir, "--cache-dir")
        refuse_other_cache(folder, PREDICT_CACHE)  # an embed cache's parts would be deleted as stale
        if owned.read_fingerprint(folder) is None:
            owned.refuse_foreign(folder)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts.", dir=out.parent))
    encoders = classifier.encoders
    config = EmbedConfig(
        data_dir=str(input_path.parent), text_model=encoders["text_model"], clip_model=encoders["clip_model"],
        clip_lora=encoders["clip_lora"], lora_alpha=encoders["lora_alpha"], pooling=encoders["pooling"],
        max_length=encoders["max_length"], clip_embedding=encoders["clip_embedding"], cache_dir=str(folder),
        splits=(SPLIT,), image_root=image_root, image_pattern=image_pattern, device=str(classifier.device),
        batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image, on_empty_title=on_empty_title,
        part_rows=part_rows,
        max_pixels=classifier.settings.max_pixels, draft=classifier.settings.draft,
    )
    try:
        with cache_lock(folder) if keep else contextlib.nullcontext():
            _prepare(folder, {"encoders": classifier.fingerprint, "input": path_sha256(input_path),
                              "image_root": str(Path(image_root).resolve()), "image_pattern": image_pattern,
                              "part_rows": part_rows, "half_posts": [on_bad_image == "text-only", on_empty_title]},
                     log)
            embed_split(classifier.model, classifier.tokenizer, rows, config, classifier.settings, classifier.device)
            results = {"labels": [], "probs": [], "reasons": {}, "half_posts": {}}
            write_atomic(out, lambda tmp: _write_output(tmp, classifier, rows, folder, part_rows, results))
    finally:
        if not keep:  # our own temp folder, made above
            shutil.rmtree(folder, ignore_errors=True)
    summary = {"rows": len(rows), "scored": int(sum(len(p) for p in results["probs"])),
               "half_posts": results["half_posts"], "skipped_by_reason": results["reasons"], "metrics": None}
    if rows.labelled and summary["scored"]:
        labels, probs = np.concatenate(results["labels"]), np.concatenate(results["probs"])
        summary["metrics"] = {**compute_metrics(labels, probs, threshold=classifier.threshold),
                              "at_0.5": compute_metrics(labels, probs)}
        write_json_atomic(Path(f"{out}.metrics.json"), summary["metrics"])
    write_json_atomic(Path(f"{out}.meta.json"), {
        "run": str(classifier.run_dir), "input": str(input_path), "encoders": encoders,
        "threshold": classifier.threshold, "labelled": rows.labelled, "warnings": classifier.warnings,
        **{k: v for k, v in summary.items() if k != "metrics"}})
    return summary


def _prepare(folder, inputs, log):
    """Keep the parts of an earlier run on the same input with the same encoders; clear our others."""
    fingerprint = combine(inputs)
    path = folder / cache.FINGERPRINT_NAME
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        doc = None
    old = doc.get("fingerprint") if isinstance(doc, dict) else None  # anything else: ours, not valid: embed afresh
    cache.remove_temp_files(folder)
    if old == fingerprint:
        done = len(cache.existing_parts(folder, SPLIT))
        if done:
            log(f"{folder}: resuming; {done} part(s) already embedded")
        return
    if old is not None:
        log(f"{folder}: parts are from another input or other encoders; embedding afresh")
    owned.remove_owned(folder)  # only the parts and files we wrote; anything else in the folder stays
    write_json_atomic(path, {"fingerprint": fingerprint, "inputs": inputs})


def _write_output(tmp, classifier, rows, folder, part_rows, results):
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        for part, start in enumerate(range(0, len(rows), part_rows)):
            span = range(start, min(start + part_rows, len(rows)))
            rows_of_part = cache.read_part_rows(cache.part_path(folder, SPLIT, part))
            reasons = {entry["row"]: entry["reason"] for entry in rows_of_part.skipped}
            kept = [row for row in span if row not in reasons]
            if [rows.ids[row] for row in kept] != rows_of_part.ids:
                raise UserError(f"{cache.part_path(folder, SPLIT, part)}: does not hold the input's rows (ids "
                                "differ); delete the folder (or give another --cache-dir) and rerun")
            halves = {entry["row"]: entry["reason"] for entry in rows_of_part.partial}
            has_text, has_image = rows_of_part.has_text, rows_of_part.has_image
            scorable = classifier.can_score(has_text, has_image)  # (kept,) bool
            status = {row: "ok" if both else "ok_text_only" if text else "ok_image_only"
                      for row, both, text in zip(kept, has_text & has_image, has_text)}
            for row, ok in zip(kept, scorable):
                if not ok:  # a half-post this head cannot score: its reason, as a skipped row's
                    reasons[row] = halves[row]
                elif status[row] != "ok":
                    results["half_posts"][status[row]] = results["half_posts"].get(status[row], 0) + 1
            prob = np.full(len(span), np.nan)
            index = [row - start for row, ok in zip(kept, scorable) if ok]
            prob[index] = classifier.score_features(rows_of_part.text_emb[scorable], rows_of_part.image_emb[scorable],
                                                    has_text[scorable], has_image[scorable])
            status = [reasons.get(row) or status[row] for row in span]
            for reason in reasons.values():
                results["reasons"][reason] = results["reasons"].get(reason, 0) + 1
            labels = rows.labels[span.start:span.stop] if rows.labelled else None
            frame = results_frame([rows.ids[row] for row in span], prob, status, classifier.threshold, labels)
            frame.to_csv(handle, header=part == 0, index=False)
            results["probs"].append(prob[~np.isnan(prob)])
            if labels is not None:
                results["labels"].append(labels[~np.isnan(prob)])
