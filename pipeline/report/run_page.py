"""The page of one run folder (`train-head` or `finetune-e2e`): metrics, data, curves, worst errors, config."""

import json
from pathlib import Path

from pipeline.report.examples import data_settings, error_cards
from pipeline.report.markup import Raw, escape, fmt, image, page, paragraph, section, table
from pipeline.report.provenance import banner, cache_state, doctor_findings, encoders_table, run_encoders
from pipeline.report.similarity_section import similarity_section
from pipeline.runs.readers import read_config, read_metrics, read_predictions, read_skipped
from pipeline.runs.record import read_run

FIGURES = (("curves.png", "learning curves (dashed line: best epoch)"), ("confusion_matrix.png", "confusion matrices"),
           ("roc.png", "ROC curves"), ("pr.png", "precision-recall curves"), ("reliability.png", "reliability diagram"))
SPLIT_COUNTS = ("rows_read", "rows_embedded", "rows_skipped")


def run_page(folder):
    folder = Path(folder)
    record = read_run(folder)  # the run's kind and decision threshold: asked, never guessed from config keys
    config, metrics = read_config(folder), read_metrics(folder)
    data = data_settings(record, config)
    state = cache_state(config)
    sections = [
        banner(state),
        section("Metrics", metrics_section(metrics, record), "metrics"),
        section("Data", data_section(config, folder, record, state), "data"),
        section("Training and curves", figures_section(folder, config), "curves"),
        section("Worst errors", worst_errors_section(folder, data, record.decision_threshold), "errors"),
        section("Configuration", Raw(f"<pre>{escape(json.dumps(config, indent=2, sort_keys=True))}</pre>"), "config"),
    ]
    similarity = similarity_section(folder)  # only for a head that read the similarity
    if similarity is not None:
        sections.insert(4, section("Text-image similarity", similarity, "similarity"))
    doctor = doctor_section(state)
    if doctor:
        sections.insert(3, section("Leakage doctor", doctor, "doctor"))
    return page(f"{record.kind}: {folder.name}", f"Run folder {folder.resolve()}", sections)


def metrics_section(metrics, record):
    """Every metric of metrics.json: val and test at threshold 0.5 and at the threshold tuned on val, and which
    of the two the run decides at."""
    columns = [(split, metrics[split]) for split in ("val", "test") if split in metrics]
    columns += [(f"{split} (tuned)", values["tuned"]) for split, values in columns if "tuned" in values]
    names = [key for key, value in columns[0][1].items() if _is_number(value)] if columns else []
    rows = [[name, *(_with_interval(values, name) for _, values in columns)] for name in names]
    threshold = metrics.get("test", {}).get("tuned", {}).get("threshold")
    decision = record.threshold or {}
    uses = "the tuned columns" if decision.get("source") == "tuned" else "the 0.5 columns"
    note = paragraph(f"Top-level metrics use threshold 0.5; the tuned columns use {fmt(threshold)}, "
                     "tuned on validation only (optimistic on val itself, honest on test). Intervals, when shown, "
                     f"are 95% bootstrap intervals. The run decides at {fmt(record.decision_threshold)} ({uses}; "
                     f"the rule: {decision.get('rule', '0.5')}; val rows per class: "
                     f"{decision.get('rows_per_class')}): its predictions files, worst errors and `predict` use it.",
                     note=True)
    recorded = [(metrics.get(split) or {}).get("warnings") or [] for split in ("val", "test")]
    warnings = dict.fromkeys(line for lines in recorded for line in lines if isinstance(line, str))  # run's own
    shown = "".join(paragraph(line, note=True) for line in warnings)
    return Raw(shown + table(["metric", *(name for name, _ in columns)], rows, table_id="metrics-table") + note
               + presence_tables(metrics))


def presence_tables(metrics):
    """The same metrics per group of rows (both halves present, text only, image only) where a split has them."""
    parts = []
    for split in ("val", "test"):
        groups = (metrics.get(split) or {}).get("by_presence") or {}
        if len(groups) < 2:  # whole posts only: the table above already says it all
            continue
        names = list(dict.fromkeys(k for values in groups.values() for k, v in values.items() if _is_number(v)))
        rows = [[name, *(_with_interval(values, name) for values in groups.values())] for name in names]
        parts.append(f"<h3>{escape(split)} by presence of title and image</h3>"
                     + table(["metric", *groups], rows))
    return Raw("".join(parts))


def _is_number(value):
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _with_interval(values, name):
    interval = (values.get("ci95") or {}).get(name)
    shown = fmt(values.get(name))
    return f"{shown} [{fmt(interval[0], 2)}, {fmt(interval[1], 2)}]" if interval else shown


def data_section(config, folder, record, state):
    """The run's data and encoders as its own folder records them; the cache's counts only while the cache
    still holds what the run was trained on (same fingerprint)."""
    parts = []
    cache = config.get("cache")
    manifest = state.manifest if state.status == "same" else None
    if manifest:
        parts.append(paragraph(f"Cache {cache['dir']} (fingerprint {str(manifest.get('fingerprint'))[:12]})"))
        parts.append(_split_table(manifest["splits"]))
    elif cache:
        where = {"gone": "not found from here", "rebuilt": "rebuilt since this run (see the banner above)",
                 "unknown": "the run records no fingerprint, so its current contents are not shown"}[state.status]
        parts.append(paragraph(f"Cache {cache.get('dir')}: {where}; rows used per split: {cache.get('rows')}",
                               note=True))
    encoders = run_encoders(record, config)
    if encoders is not None:
        parts.append(encoders_table(encoders, state.trained_on))
    elif manifest:  # no encoders.json (a run on a synthetic cache): the cache is still the run's own
        parts.append(_encoders_table(manifest))
    if record.kind == "finetune-e2e" and "data" in config:  # it reads the split files itself
        data = config["data"]
        parts.append(table(["setting", "value"], [[k, data.get(k)] for k in (
            "data_dir", "image_root", "text_model", "clip_model", "clip_lora", "pooling", "max_length")]))
    skipped = folder / "skipped.tsv"
    if skipped.is_file():
        reasons = read_skipped(skipped)
        counts = reasons.groupby(["split", "reason"]).size().reset_index(name="rows").values.tolist()
        parts.append(Raw("<h3>Skipped rows</h3>" + table(["split", "reason", "rows"], counts, text_columns=2)))
    return Raw("".join(parts))


def _split_table(splits):
    extra = sorted({key for info in splits.values() for key, value in info.items()
                    if isinstance(value, int) and key not in SPLIT_COUNTS})
    header = ["split", *SPLIT_COUNTS, "fake", "real", "skipped by reason", *extra]
    rows = []
    for name, info in splits.items():
        classes = info.get("class_counts", {})
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(info.get("skipped_by_reason", {}).items())) or "-"
        rows.append([name, *(info.get(k) for k in SPLIT_COUNTS), classes.get("fake"), classes.get("real"),
                     reasons, *(info.get(k) for k in extra)])
    return table(header, rows)


def _encoders_table(manifest):
    embed = (manifest.get("config") or {}).get("embed", {})
    inputs = manifest.get("inputs", {})
    rows = [[name, embed.get(name), str(inputs.get(name))[:16]] for name in ("text_model", "clip_model", "clip_lora")]
    rows += [["text settings", json.dumps(inputs.get("text")), ""],
             ["image settings", json.dumps(inputs.get("image")), ""]]
    return Raw("<h3>Encoders</h3>" + table(["input", "as given", "content fingerprint"], rows, text_columns=3))


def figures_section(folder, config):
    best = (config.get("resolved") or {}).get("best_epoch")
    intro = paragraph(f"Best epoch: {best}." if best else "")
    images = "".join(image(folder / name, alt) for name, alt in FIGURES)
    return Raw(f'{intro}<div class="figures">{images}</div>')


def doctor_section(state):
    """The doctor's findings (its doctor.md summary) when `doctor` has been run on the run's own cache (its
    doctor.json records the run's fingerprint); else a note saying why they are not shown, or None."""
    path, stale = doctor_findings(state)
    if stale:
        return paragraph(stale, note=True)
    if path is None:
        return None
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    items = "".join(f"<li>{escape(line[2:])}</li>" for line in lines if line.startswith("- "))
    notes = "".join(paragraph(line, note=True) for line in lines if not line.startswith(("- ", "#")))
    return Raw(paragraph(f"From {path}") + notes + f"<ul>{items}</ul>")


def worst_errors_section(folder, data, threshold):
    path = folder / "predictions_test.csv"
    if not path.is_file():
        return paragraph("No predictions_test.csv in the run folder.", note=True)
    predictions = read_predictions(path)
    intro = paragraph(f"The test rows predicted wrong (at the run's decision threshold {fmt(threshold)}) with the "
                      "highest confidence.", note=True)
    return Raw(intro + error_cards(predictions, data, threshold))
