"""The page of an `ablate` folder: the variants table, test macro-F1 per variant with each seed, links."""

import json
from pathlib import Path

import pandas as pd

from pipeline.report.markup import Raw, escape, image, page, paragraph, section, table
from pipeline.runs.readers import read_ablation, read_comparisons, read_config
from pipeline.train.ablate import COMPARED, SUMMARY, difference_text, summarize
from pipeline.train.plots import plot_ablation

PLOT_NAME = "ablation_f1.png"
LINKED = ("ablation.csv", "comparisons.csv", "ablation.md", "config.json")


def ablation_page(folder):
    folder = Path(folder)
    runs = read_ablation(folder / "ablation.csv")
    if not (folder / PLOT_NAME).is_file():
        plot_ablation(runs, folder / PLOT_NAME)
    config_path = folder / "config.json"
    config = read_config(folder) if config_path.is_file() else {}
    links = " · ".join(f'<a href="{escape(name)}">{escape(name)}</a>' for name in LINKED if (folder / name).is_file())
    sections = [
        section("Variants", Raw(_variants_table(runs, _pooled(folder)) + paragraph(
            f"{len(runs)} runs; mean ± sample std over seeds. Δ columns (where the folder has comparisons.csv): "
            "paired bootstrap against the reference on the same test rows at threshold 0.5, pooled over seeds; "
            "* = the 95% interval excludes 0.", note=True)), "metrics"),
        section("Test macro-F1 per variant", image(folder / PLOT_NAME, "test macro-F1 per variant and seed"), "plot"),
        section("Runs", Raw(f"<p>{links}</p>" + table(
            ["modalities", "fusion", "seed", "val f1_macro", "test f1_macro", "best epoch"],
            runs[["modalities", "fusion", "seed", "val_f1_macro", "test_f1_macro", "best_epoch"]].values.tolist(),
            text_columns=2)), "runs"),
        section("Configuration", Raw(f"<pre>{escape(json.dumps(config, indent=2, sort_keys=True))}</pre>"), "config"),
    ]
    return page(f"ablate: {folder.name}", f"Ablation folder {folder.resolve()}", sections)


def _pooled(folder):
    """comparisons.csv's rows keyed by (modalities, fusion); empty for a folder written before it existed."""
    path = folder / "comparisons.csv"
    if not path.is_file():
        return {}
    pooled = read_comparisons(path, COMPARED)
    return {(row["modalities"], row["fusion"]): row for row in pooled.to_dict("records")}


def _variants_table(runs, pooled):
    summary = summarize(runs)
    header = ["modalities", "fusion", "runs"] + [f"{split} {metric}" for split, metric in SUMMARY]
    reference = next(iter(pooled.values()))["reference"] if pooled else None
    header += [f"Δ test {metric} vs {reference} [95% CI]" for metric in COMPARED] if pooled else []
    rows = []
    for _, row in summary.iterrows():
        cells = [row["modalities"], row["fusion"], row["runs"]]
        for split, metric in SUMMARY:
            mean, std = row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"]
            cells.append(f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}")
        if pooled:
            compared = pooled.get((row["modalities"], row["fusion"]))
            cells += [difference_text(compared, metric) for metric in COMPARED]
        rows.append(cells)
    return table(header, rows, table_id="metrics-table", text_columns=2)
