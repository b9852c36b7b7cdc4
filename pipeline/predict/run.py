"""`predict` on a TSV file: stage one's embedding loop plus the run's head, one output line per input row.

The rows are embedded by stage one's own `embed_split` into parts (a temporary
folder, or `--cache-dir` to keep them: a rerun with the same arguments then
embeds only the parts that are missing). The parts are then read back one at a
time, scored by the head and appended to a temp file that is renamed over
`--out` at the end, so memory holds one part of vectors, whatever the number
of rows, and a half-written output never carries the real name.
"""

import contextlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.splits import read_rows
from pipeline.embed import cache, owned
from pipeline.embed.fingerprint import combine, path_sha256
from pipeline.embed.run import cache_lock, embed_split, open_parts_folder
from pipeline.embed.writer import PartJob
from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic
from pipeline.outputs import PREDICT_CACHE, refuse_other_cache
from pipeline.predict import image_files
from pipeline.train.metrics import compute_metrics
from pipeline.train.multiclass import multiclass_metrics

SPLIT = "posts"  # the name of the input's parts in the cache folder (and of ids without an id column)
TEXT_ONLY_REASON = "text_only_requested"  # the reason of a half-post whose image --text-only left unread


def predicted_classes(probs, threshold):
    """(N,) predicted class of (N, K) probabilities: two classes at `threshold` on the second's, else the
    argmax (K > 2 has no threshold)."""
    if probs.shape[1] == 2:
        return (probs[:, 1] > threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def results_frame(ids, probs, status, threshold, class_names, labels=None, reasons=None):
    """The output's rows: (N, K) `probs` NaN where `status` is a skip reason (then pred is empty too); `reasons`
    (default: none) says why a row is not a whole post: a half-post's missing half, a skipped row's reason.
    Columns: id, the probabilities (binary: prob_real first, the other prob_<name> after reason), pred,
    pred_name, status, reason[, label, correct]."""
    probs = np.asarray(probs, dtype=np.float64).reshape(len(status), len(class_names))
    scored = ~np.isnan(probs).any(axis=1)
    pred = pd.array(np.where(scored, predicted_classes(np.nan_to_num(probs), threshold), 0), dtype="Int64")
    pred[~scored] = pd.NA
    named = {f"prob_{name}": probs[:, k] for k, name in enumerate(class_names)}
    # Two classes: prob_real (the second class's) keeps its place in front, the other prob_<name> come last.
    front = {"prob_real": probs[:, 1]} if len(class_names) == 2 else named
    back = {column: values for column, values in named.items() if column not in front}
    frame = pd.DataFrame({"id": pd.array(list(ids), dtype=object), **front, "pred": pred,
                          "pred_name": [class_names[p] if ok else "" for p, ok in zip(pred.fillna(0), scored)],
                          "status": list(status), "reason": list(reasons or [""] * len(status)), **back})
    if labels is not None:
        frame["label"] = pd.array(np.asarray(labels, dtype=np.int64), dtype="Int64")
        correct = pd.array((frame["pred"].fillna(-1) == frame["label"]).astype(np.int64), dtype="Int64")
        correct[~scored] = pd.NA
        frame["correct"] = correct
    return frame


def read_results(path):
    """An output CSV back as the DataFrame `results_frame` makes."""
    header = pd.read_csv(path, nrows=0).columns
    probabilities = [c for c in header if c.startswith("prob_")]
    return pd.read_csv(path, dtype={"id": str, "pred": "Int64", "pred_name": str, "status": str, "reason": str,
                                    "label": "Int64", "correct": "Int64", **dict.fromkeys(probabilities, float)},
                       keep_default_na=False,
                       na_values={**{c: [""] for c in probabilities}, "pred": [""], "correct": [""]})


def predict_file(classifier, input_path, out, image_root=None, image_pattern="{id}.jpg", cache_dir=None,
                 batch_size=64, num_workers=-1, on_bad_image="text-only", on_empty_title="image-only", part_rows=4096,
                 text_only=False, label_column=None, log=print):
    """Classify every row of a TSV into `out` (CSV) plus `<out>.meta.json` and, with labels,
    `<out>.metrics.json`; returns {"rows", "scored", "half_posts", "skipped_by_reason", "warnings", "metrics"}.

    Half-posts (`on_bad_image text-only`, `on_empty_title image-only`) are scored when the head has
    missing vectors and reads the half that is there (status ok_text_only / ok_image_only); otherwise they
    get their reason as status, as skipped rows do. `text_only` scores every row from its title and reads
    no image; without it, an input none of whose images is there is refused, and one with more than a
    few missing gets a warning (summary and meta) saying where they were looked for. Labels (for metrics) are
    read from `label_column`, default the column the run learned."""
    input_path, out = Path(input_path), Path(out)
    rows = read_rows(input_path, SPLIT, image_pattern, label_column=label_column or classifier.label_column,
                     num_classes=len(classifier.class_names))
    image_root = str(image_root or input_path.parent)
    warnings, keep = list(classifier.warnings), cache_dir is not None
    keys, no_image = [""] * len(rows), None  # kept parts are tied to their image files; temporary ones need no key
    if text_only:
        classifier.check_text_only()
        no_image = dict.fromkeys(range(len(rows)), TEXT_ONLY_REASON)
    else:
        keys = image_files.file_keys(image_root, rows.image_paths) if keep else keys
        refusal = image_files.none_found_message(image_root, rows.image_paths, input_path, keys if keep else None)
        if refusal:
            raise UserError(refusal)
    out.parent.mkdir(parents=True, exist_ok=True)
    if keep:  # a folder of the user's: never written into unless it is one of ours, one writer at a time
        folder = output_folder(cache_dir, "--cache-dir")
        refuse_other_cache(folder, PREDICT_CACHE)  # an embed cache's parts would be deleted as stale
        if owned.read_fingerprint(folder) is None:
            owned.refuse_foreign(folder)
    else:
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts.", dir=out.parent))
    encoders = classifier.encoders
    job = PartJob(folder=str(folder), image_root=image_root, part_rows=part_rows, max_length=encoders["max_length"],
                  batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image,
                  on_empty_title=on_empty_title)
    inputs = {"encoders": classifier.fingerprint, "input": path_sha256(input_path),
              "image_root": str(Path(image_root).resolve()), "image_pattern": image_pattern, "part_rows": part_rows,
              "half_posts": [on_bad_image == "text-only", on_empty_title], "text_only": text_only}
    try:
        with cache_lock(folder) if keep else contextlib.nullcontext():
            _open_parts(folder, inputs, image_files.part_keys(keys, part_rows), log)
            embed_split(classifier.model, classifier.tokenizer, rows, job, classifier.settings, classifier.device,
                        no_image=no_image)
            results = {"labels": [], "probs": [], "reasons": {}, "half_posts": {}, "missing_files": []}
            write_atomic(out, lambda tmp: _write_output(tmp, classifier, rows, folder, part_rows, results))
    finally:
        if not keep:  # our own temp folder, made above
            shutil.rmtree(folder, ignore_errors=True)
    missing = results["missing_files"]  # rows whose image file is not there
    warnings += [w for w in [image_files.missing_images(len(missing), len(rows), image_root,
                                                        missing and rows.image_paths[missing[0]], input_path)] if w]
    summary = {"rows": len(rows), "scored": int(sum(len(p) for p in results["probs"])),
               "half_posts": results["half_posts"], "skipped_by_reason": results["reasons"], "warnings": warnings,
               "metrics": None}
    if rows.labelled and summary["scored"]:
        labels, probs = np.concatenate(results["labels"]), np.concatenate(results["probs"])
        summary["metrics"] = scored_metrics(labels, probs, classifier.threshold, classifier.class_names)
        write_json_atomic(Path(f"{out}.metrics.json"), summary["metrics"])
    write_json_atomic(Path(f"{out}.meta.json"), {
        "run": str(classifier.run_dir), "input": str(input_path), "image_root": image_root, "encoders": encoders,
        "threshold": classifier.threshold, "labelled": rows.labelled,
        **{k: v for k, v in summary.items() if k != "metrics"}})
    return summary


def scored_metrics(labels, probs, threshold, class_names):
    """The metrics of labelled input rows: binary at the run's threshold and at 0.5, K > 2 at the argmax."""
    if len(class_names) == 2:
        return {**compute_metrics(labels, probs[:, 1], threshold=threshold, class_names=class_names),
                "at_0.5": compute_metrics(labels, probs[:, 1], class_names=class_names)}
    return multiclass_metrics(labels, probs, class_names)


def _open_parts(folder, inputs, image_parts, log):
    """Stage one's part store: keep the parts of an earlier run on the same input with the same encoders,
    except those whose image files changed since (`image_files`); else clear ours and start afresh."""
    old = owned.read_fingerprint(folder) or {}
    fingerprint = combine(inputs)
    state = open_parts_folder(folder, fingerprint, {**inputs, "image_files": image_parts}, log)
    if state != "resume":
        return
    recorded = old.get("inputs", {}).get("image_files")
    done = sorted(cache.existing_parts(folder, SPLIT))
    changed = [part for part in done if not isinstance(recorded, list) or part >= len(recorded)
               or recorded[part] != image_parts[part]]
    for part in changed:  # embedded from other files: only our own part files are removed
        path = cache.part_path(folder, SPLIT, part)
        if owned.is_our_part(path):
            path.unlink()
    if changed:
        log(f"{folder}: the images of {len(changed)} part(s) changed on disk since they were embedded; "
            "embedding those again")
        write_json_atomic(folder / cache.FINGERPRINT_NAME,
                          {"fingerprint": fingerprint, "inputs": {**inputs, "image_files": image_parts}})
    kept = len(done) - len(changed)
    if kept:
        log(f"{folder}: resuming; {kept} part(s) already embedded")


def _write_output(tmp, classifier, rows, folder, part_rows, results):
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        for part, start in enumerate(range(0, len(rows), part_rows)):
            span = range(start, min(start + part_rows, len(rows)))
            path = cache.part_path(folder, SPLIT, part)
            stored = _checked_part(path, rows, span)
            reasons = {entry["row"]: entry["reason"] for entry in stored.skipped}
            kept = [row for row in span if row not in reasons]
            halves = {entry["row"]: entry["reason"] for entry in stored.partial}
            has_text, has_image = stored.has_text, stored.has_image
            scorable = classifier.can_score(has_text, has_image)  # (kept,) bool
            status = {row: "ok" if both else "ok_text_only" if text else "ok_image_only"
                      for row, both, text in zip(kept, has_text & has_image, has_text)}
            why = {row: halves.get(row) or "missing_half" for row in kept if status[row] != "ok"}  # the missing half's
            for row, ok in zip(kept, scorable):
                if not ok:  # a half-post this head cannot score: its reason, as a skipped row's
                    reasons[row] = why[row]
                elif status[row] != "ok":
                    results["half_posts"][status[row]] = results["half_posts"].get(status[row], 0) + 1
            prob = np.full((len(span), len(classifier.class_names)), np.nan)
            index = [row - start for row, ok in zip(kept, scorable) if ok]
            prob[index] = classifier.score_features(stored.text_emb[scorable], stored.image_emb[scorable],
                                                    has_text[scorable], has_image[scorable])
            status = [reasons.get(row) or status[row] for row in span]
            for reason in reasons.values():
                results["reasons"][reason] = results["reasons"].get(reason, 0) + 1
            labels = rows.labels[span.start:span.stop] if rows.labelled else None
            row_reasons = [reasons.get(row) or why.get(row, "") for row in span]
            results["missing_files"] += [row for row, why_not in zip(span, row_reasons)
                                         if why_not.endswith("missing_file")]
            frame = results_frame([rows.ids[row] for row in span], prob, status, classifier.threshold,
                                  classifier.class_names, labels, reasons=row_reasons)
            frame.to_csv(handle, header=part == 0, index=False)
            done = ~np.isnan(prob).any(axis=1)
            results["probs"].append(prob[done])
            if labels is not None:
                results["labels"].append(labels[done])


def _checked_part(path, rows, span):
    """A kept part read back, refused unless it holds exactly the input's rows of `span` with finite vectors."""
    stored = cache.read_part_rows(path)
    skipped_rows = [entry.get("row") for entry in stored.skipped if isinstance(entry, dict)]
    kept = [row for row in span if row not in set(skipped_rows)]
    if (len(skipped_rows) != len(stored.skipped) or not set(skipped_rows) <= set(span)
            or [rows.ids[row] for row in kept] != stored.ids):
        raise UserError(f"{path}: does not hold rows {span.start + 1}-{span.stop} of {rows.path} (the ids differ); "
                        f"delete {path.parent.parent} (or give another --cache-dir) and rerun")
    for name in ("text_emb", "image_emb"):
        if not np.isfinite(getattr(stored, name)).all():
            raise UserError(f"{path}: its {name.split('_')[0]} vectors hold NaN or Inf, which the embedding "
                            "never writes (the file was changed or damaged); delete it and rerun to embed it again")
    return stored
