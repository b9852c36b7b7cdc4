"""Run every check of `doctor` over a cache (and its split files) and write the report.

    <out>/doctor.json        everything below, machine-readable
    <out>/doctor.md          the same as a short report
    <out>/doctor_pairs.csv   split, id, other_split, other_id, kind, similarity, label, other_label, partners
    --write-clean-ids FILE   split<TAB>id of the val/test rows without any cross-split duplicate
"""

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.classes import class_names_of
from pipeline.data.splits import read_split
from pipeline.doctor import checks
from pipeline.embed.cache import MANIFEST_NAME, load_split, read_manifest
from pipeline.embed.labels import with_label_set
from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic, write_text_atomic

KINDS = ("exact_image", "perceptual_image", "exact_title", "near_image", "near_title")
PAIR_COLUMNS = ("split", "id", "other_split", "other_id", "kind", "similarity", "label", "other_label", "partners")


def run_doctor(config, log=print):
    """The report dict (also written to config.out or <cache>/doctor/)."""
    import torch

    from pipeline.device import resolve_device

    started = time.perf_counter()
    try:
        manifest = with_label_set(read_manifest(config.cache_dir), config.label_column)
    except UserError as error:
        raise UserError(f"{Path(config.cache_dir) / MANIFEST_NAME}: {error}") from None
    column, class_names = manifest["label_column"], class_names_of(manifest)
    names = [name for name in ("train", "val", "test") if name in manifest["splits"]]
    if "train" not in names or len(names) < 2:
        raise UserError(f"{config.cache_dir}: doctor compares val/test with train; the cache has "
                        f"{', '.join(manifest['splits'])}: embed train and val or test")
    splits = {name: load_split(config.cache_dir, name, label_column=column) for name in names}
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    labels = {name: split.labels for name, split in splits.items()}
    ids = {name: split.ids for name, split in splits.items()}
    notes, pairs, checked = [], [], {}

    placeholder_hashes = {entry["sha256"] for entry in manifest.get("config", {}).get("placeholder_files", [])
                          if isinstance(entry, dict) and "sha256" in entry}
    if all(split.image_sha256 is not None for split in splits.values()):
        pairs += checks.exact_pairs({n: s.image_sha256 for n, s in splits.items()}, labels, ids, "exact_image",
                                    skip_keys=placeholder_hashes)
        checked["exact_image"] = True
    else:
        checked["exact_image"] = False
        notes.append(f"exact-image duplicates cannot be checked: the cache is format {manifest['format_version']} "
                     "and holds no image hashes; re-embed it with this version (`python -m pipeline embed`)")

    if all(split.image_phash is not None for split in splits.values()):
        pairs += checks.perceptual_pairs(
            {n: s.image_phash for n, s in splits.items()}, labels, ids,
            skip={n: np.isin(s.image_sha256, sorted(placeholder_hashes)) for n, s in splits.items()})
        checked["perceptual_image"] = True
    else:
        checked["perceptual_image"] = False
        notes.append(f"resized or re-encoded image copies cannot be checked: the cache is format "
                     f"{manifest['format_version']} and holds no perceptual hashes (format 4 and later do); it still "
                     "trains as it is, and `embed` with the same inputs keeps it as it is; re-embed it for this check "
                     "(`python -m pipeline embed` with the same flags into a new --cache-dir)")

    titles, proxies = (_read_data(config.data_dir, splits, config.image_pattern, column, len(class_names))
                       if config.data_dir else (None, None))
    if titles is not None:
        pairs += checks.exact_pairs({n: [checks.normalise_title(t) for t in v] for n, v in titles.items()},
                                    labels, ids, "exact_title")
        checked["exact_title"] = True
    else:
        checked["exact_title"] = False
        notes.append("exact-title duplicates not checked: give --data-dir (the cache holds no titles)")

    near = {}
    for column, kind in (("image_emb", "near_image"), ("text_emb", "near_title")):
        found, near[kind] = checks.near_pairs(splits, column, config.threshold, device, kind)
        if kind == "near_image" and placeholder_hashes and splits["train"].image_sha256 is not None:
            found = [p for p in found if splits[p["split"]].image_sha256[p["_row"]] not in placeholder_hashes]
        pairs += found
        collapsed = [split for split, info in near[kind].items() if info["collapsed"]]
        checked[kind] = not collapsed
        if collapsed:
            dimensions = near[kind][collapsed[0]]["effective_dimensions"]
            notes.append(f"{kind.replace('_', '-')} check skipped: the train vectors span about {dimensions} effective "
                         "dimensions, so cosines near 1 are everywhere and do not tell distinct posts apart "
                         "(a random or collapsed encoder, e.g. the demo's CLIP)")

    report = _report(config, manifest, splits, pairs, checked, near, notes, device)
    report["label_proxies"] = checks.label_proxies(proxies, labels, len(class_names)) if proxies else {}
    if config.data_dir and not report["label_proxies"]:
        notes.append(f"no label-proxy column ({', '.join(checks.PROXY_COLUMNS)}) in the split files")
    report["seconds"] = round(time.perf_counter() - started, 2)
    out = output_folder(config.out or Path(config.cache_dir) / "doctor", "--out")
    if config.write_clean_ids:
        dirty = {(p["split"], p["id"]) for p in pairs}
        lines = ["split\tid"] + [f"{name}\t{key}" for name in checks.EVAL_SPLITS if name in splits
                                 for key in splits[name].ids if (name, key) not in dirty]
        write_text_atomic(config.write_clean_ids, "\n".join(lines) + "\n")
        report["clean_ids"] = {"file": str(config.write_clean_ids), "rows": len(lines) - 1}
    write_json_atomic(out / "doctor.json", report)
    write_text_atomic(out / "doctor.md", markdown(report))
    write_atomic(out / "doctor_pairs.csv",
                 lambda tmp: pd.DataFrame([{k: p[k] for k in PAIR_COLUMNS} for p in pairs], columns=PAIR_COLUMNS)
                 .to_csv(tmp, index=False))
    report["out"] = str(out)
    return report


def _read_data(data_dir, splits, image_pattern, label_column, num_classes):
    """({split: titles in cache order}, {split: {proxy column: values in cache order}}), from one read of each
    split file by stage one's own reader."""
    titles, proxies = {}, {}
    for name, split in splits.items():
        rows = read_split(data_dir, name, image_pattern, extra_columns=checks.PROXY_COLUMNS, label_column=label_column,
                          num_classes=num_classes)
        position = {key: row for row, key in enumerate(rows.ids)}
        missing = [key for key in split.ids if key not in position]
        if missing:
            raise UserError(f"--data-dir {data_dir}: {len(missing)} {name} row(s) of the cache are not in "
                            f"{rows.path} (e.g. id {missing[0]!r}); give the data the cache was embedded from")
        in_cache_order = [position[key] for key in split.ids]
        titles[name] = [rows.texts[row] for row in in_cache_order]
        proxies[name] = {column: [values[row] for row in in_cache_order] for column, values in rows.extra.items()}
    return titles, proxies


def _report(config, manifest, splits, pairs, checked, near, notes, device):
    leaks = {}
    for name in [n for n in checks.EVAL_SPLITS if n in splits]:
        mine = [p for p in pairs if p["split"] == name]
        by_kind = {kind: len({p["id"] for p in mine if p["kind"] == kind}) for kind in KINDS}
        rows = len(splits[name])
        dirty = len({p["id"] for p in mine})
        leaks[name] = {"rows": rows, "rows_with_cross_split_duplicate": dirty,
                       "share": round(dirty / rows, 4) if rows else None, "by_kind": by_kind}
    conflicts = {kind: sum(1 for p in pairs if p["kind"] == kind and p["label"] != p["other_label"]) for kind in KINDS}
    placeholders = {name: info.get("placeholder_rows") for name, info in manifest["splits"].items()}
    return {
        "format_version": manifest["format_version"], "cache_dir": str(config.cache_dir),
        "fingerprint": manifest.get("fingerprint"),  # reports show these findings only for runs on this cache
        "data_dir": config.data_dir and str(config.data_dir),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "device": str(device), "checked": checked, "notes": notes,
        "label_column": manifest["label_column"], "classes": manifest.get("classes"),
        "class_balance": checks.class_balance(splits, class_names_of(manifest)),
        "placeholder_rows": placeholders,
        "placeholder_files": manifest.get("config", {}).get("placeholder_files", []),
        "near_duplicate_search": near,
        "cross_split_duplicates": leaks,
        "pairs": {kind: sum(1 for p in pairs if p["kind"] == kind) for kind in KINDS},
        "label_conflicts": conflicts,
    }


def summary_lines(report):
    lines = []
    for name, info in report["class_balance"].items():
        counts = " / ".join(f"{count} {label}" for label, count in info["counts"].items())
        lines.append(f"{name}: {info['rows']} rows, {counts}, "
                     f"placeholder images {report['placeholder_rows'].get(name) or 0}")
    for kind in KINDS:
        state = "checked" if report["checked"][kind] else "NOT checked"
        search = report["near_duplicate_search"].get(kind)
        if search:  # a high median says the vectors hardly tell posts apart: read the pairs with care
            state += ", median best cosine " + ", ".join(
                f"{split} {info['median_best_cosine']:.3f}" for split, info in search.items()
                if info["median_best_cosine"] is not None)
        lines.append(f"{kind.replace('_', ' ')} ({state}): {report['pairs'][kind]} cross-split pair(s), "
                     f"{report['label_conflicts'][kind]} with different labels")
    for name, info in report["cross_split_duplicates"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in info["by_kind"].items() if v) or "none"
        lines.append(f"{name}: {info['rows_with_cross_split_duplicate']} of {info['rows']} rows "
                     f"({100 * (info['share'] or 0):.1f}%) have a duplicate in an earlier split ({kinds})")
    for column, info in report.get("label_proxies", {}).items():
        lines.append(f"label proxy {column!r}: alone predicts the test label with accuracy {info['test_accuracy']} "
                     f"(majority baseline {info['majority_baseline']}); never use it as a feature")
    lines += [f"note: {note}" for note in report["notes"]]
    return lines


def markdown(report):
    lines = [f"# doctor: {report['cache_dir']}", "",
             f"Cache fingerprint {str(report.get('fingerprint'))[:12]}; threshold (centred cosine) "
             f"{report['config']['threshold']}; pairs in doctor_pairs.csv.", ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    return "\n".join(lines) + "\n"

