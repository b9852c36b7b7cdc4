"""Ablations: train heads over modalities x fusion kinds x seeds on one in-memory cache and summarise.

Fusion only exists when both modalities are read, so a single-modality variant
is trained once per seed, not once per fusion kind (its fusion shows as "-").
"""

import json
from dataclasses import replace

import pandas as pd

from pipeline.model.config import parse_modalities
from pipeline.train.fit import train_head

NO_FUSION = "-"
SUMMARY = (("val", "f1_macro"), ("test", "f1_macro"), ("val", "accuracy"), ("test", "accuracy"))


def variants(modalities_options, fusions):
    """[(modalities tuple, fusion)] in grid order; one entry per single-modality option."""
    result = []
    for option in modalities_options:
        modalities = parse_modalities(option)
        kinds = fusions if len(modalities) == 2 else [NO_FUSION]
        result += [(modalities, kind) for kind in kinds if (modalities, kind) not in result]
    return result


def run_ablation(splits, head_config, train_config, modalities_options, fusions, seeds, log=None):
    """One row per run (variant x seed) with every scalar metric of val and test."""
    grid = [(modalities, fusion, seed) for modalities, fusion in variants(modalities_options, fusions)
            for seed in seeds]
    rows = []
    for number, (modalities, fusion, seed) in enumerate(grid, start=1):
        head = replace(head_config, modalities=modalities,
                       fusion=head_config.fusion if fusion == NO_FUSION else fusion)
        run = train_head(splits, head, replace(train_config, seed=seed))
        rows.append(_row(modalities, fusion, seed, run))
        if log:
            log(f"[{number}/{len(grid)}] {rows[-1]['modalities']} {fusion} seed {seed}: "
                f"val f1_macro {rows[-1]['val_f1_macro']:.4f}, test f1_macro {rows[-1]['test_f1_macro']:.4f} "
                f"({run.seconds:.1f} s, best epoch {run.fit.best_epoch})")
    return pd.DataFrame(rows)


def _row(modalities, fusion, seed, run):
    row = {"modalities": "+".join(modalities), "fusion": fusion, "seed": seed,
           "best_epoch": run.fit.best_epoch, "epochs": len(run.fit.history), "seconds": round(run.seconds, 3)}
    for split, metrics in run.metrics.items():
        for prefix, values in ((split, metrics), (f"{split}_tuned", metrics["tuned"])):
            for key, value in values.items():
                if key == "confusion_matrix":
                    value = json.dumps(value)
                if key not in ("tuned", "by_presence"):
                    row[f"{prefix}_{key}"] = value
        # by_presence as columns: <split>_<group>_<metric> at 0.5, e.g. test_text_only_f1_macro
        for group, values in metrics.get("by_presence", {}).items():
            for key, value in values.items():
                if key not in ("tuned", "confusion_matrix", "threshold"):
                    row[f"{split}_{group}_{key}"] = value
    return row


def presence_columns(runs):
    """test macro-F1 per presence group, for the groups that have rows beside `both` (none without half-posts)."""
    groups = [g for g in ("both", "text_only", "image_only") if f"test_{g}_f1_macro" in runs.columns]
    return [f"test_{g}_f1_macro" for g in groups] if groups != ["both"] else []


def summarize(runs):
    """Mean and sample std (over seeds) of val/test macro-F1 and accuracy per variant, in grid order
    (plus test macro-F1 per presence group when the test split has half-posts)."""
    columns = [f"{split}_{metric}" for split, metric in SUMMARY] + presence_columns(runs)
    grouped = runs.groupby(["modalities", "fusion"], sort=False)[columns]
    summary = grouped.agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    summary.insert(0, "runs", grouped.size())
    return summary.reset_index()


def markdown_table(summary):
    extra = [c.removesuffix("_mean") for c in summary.columns if c.startswith("test_") and c.endswith("_f1_macro_mean")
             and c.removesuffix("_f1_macro_mean").removeprefix("test_") in ("both", "text_only", "image_only")]
    header = ["modalities", "fusion", "runs"] + [f"{split} {metric}" for split, metric in SUMMARY]
    header += [f"test f1_macro {c.removeprefix('test_').removesuffix('_f1_macro')}" for c in extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [row["modalities"], row["fusion"], str(row["runs"])]
        cells += [_mean_std(row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"]) for split, metric in SUMMARY]
        cells += [_mean_std(row[f"{c}_mean"], row[f"{c}_std"]) for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(mean, std):
    # One seed has no spread: show the mean alone rather than "± nan".
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"
