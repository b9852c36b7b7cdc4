"""Ablations: train heads over modalities x fusion kinds x seeds on one in-memory cache and summarise.

Fusion only exists when both modalities are read, so a single-modality variant
is trained once per seed, not once per fusion kind (its fusion shows as "-").

Every variant is compared with a reference variant (default: text only) on the
same test rows at threshold 0.5: the difference in macro-F1 and accuracy, its
paired-bootstrap 95% interval and a two-sided p-value, per seed (columns of
ablation.csv) and pooled over seeds (the table; `*` marks an interval without 0).
"""

import json
from dataclasses import replace

import pandas as pd

from pipeline.errors import UserError
from pipeline.model.config import parse_modalities
from pipeline.train.bootstrap import excludes_zero, paired_difference
from pipeline.train.fit import train_head

NO_FUSION = "-"
SUMMARY = (("val", "f1_macro"), ("test", "f1_macro"), ("val", "accuracy"), ("test", "accuracy"))
COMPARED = ("f1_macro", "accuracy")  # test metrics compared with the reference, at threshold 0.5


def variants(modalities_options, fusions, features=()):
    """[(modalities tuple, fusion)] in grid order; one entry per single-modality option. With `features`
    (--features similarity) each two-modality fusion is followed by its twin reading them too, spelled
    `concat+similarity`: the similarity of the two halves beside their fusion."""
    result = []
    for option in modalities_options:
        modalities = parse_modalities(option)
        kinds = fusions if len(modalities) == 2 else [NO_FUSION]
        if features and len(modalities) == 2:
            kinds = [name for kind in kinds for name in (kind, "+".join((kind, *features)))]
        result += [(modalities, kind) for kind in kinds if (modalities, kind) not in result]
    return result


def variant_head(head_config, modalities, fusion):
    """The HeadConfig of one variant: its modalities, its fusion and the extra features its name carries."""
    kind, *features = fusion.split("+")
    return replace(head_config, modalities=modalities, fusion=head_config.fusion if kind == NO_FUSION else kind,
                   features=tuple(features))


def variant_name(modalities, fusion):
    """`text`, `text+image/gated`: how --reference names a variant."""
    return "+".join(modalities) + ("" if fusion == NO_FUSION else f"/{fusion}")


def find_reference(grid, reference=None):
    """The (modalities, fusion) of --reference in the grid; default the text-only variant, else the first."""
    if reference is None:
        return next((v for v in grid if v[0] == ("text",)), grid[0])
    name, _, fusion = reference.partition("/")
    try:
        wanted = (parse_modalities(name.replace("+", ",")), fusion or None)
    except UserError:
        wanted = None
    for modalities, kind in grid:
        if wanted and modalities == wanted[0] and (wanted[1] in (None, kind) or kind == NO_FUSION):
            return modalities, kind
    raise UserError(f"--reference {reference!r}: not a variant of this grid; use one of: "
                    f"{', '.join(variant_name(*v) for v in grid)}")


def run_ablation(splits, head_config, train_config, modalities_options, fusions, seeds, log=None, reference=None):
    """One row per run (variant x seed) with every scalar metric of val and test, and its paired comparison
    with the reference variant of the same seed; `.attrs["pooled"]` holds the comparisons pooled over seeds."""
    kinds = variants(modalities_options, fusions, head_config.features)
    grid = [(modalities, fusion, seed) for modalities, fusion in kinds for seed in seeds]
    ref = find_reference(kinds, reference)
    rows, test_probs = [], {}
    for number, (modalities, fusion, seed) in enumerate(grid, start=1):
        run = train_head(splits, variant_head(head_config, modalities, fusion), replace(train_config, seed=seed))
        rows.append(_row(modalities, fusion, seed, run))
        test_probs[(modalities, fusion, seed)] = run.predictions["test"]["prob_real"]
        if log:
            log(f"[{number}/{len(grid)}] {rows[-1]['modalities']} {fusion} seed {seed}: "
                f"val f1_macro {rows[-1]['val_f1_macro']:.4f}, test f1_macro {rows[-1]['test_f1_macro']:.4f} "
                f"({run.seconds:.1f} s, best epoch {run.fit.best_epoch})")
    runs = pd.DataFrame(rows)
    pooled = compare_with_reference(runs, test_probs, splits["test"].labels, ref, train_config)
    runs.attrs["pooled"] = pooled
    runs.attrs["reference"] = variant_name(*ref)
    return runs


def compare_with_reference(runs, test_probs, labels, ref, train_config):
    """Fill each run's comparison columns in `runs`; return the pooled comparisons, one dict per variant."""
    seeds = sorted({key[2] for key in test_probs}, key=list(runs["seed"]).index)
    pooled, reference_name = [], variant_name(*ref)
    for variant in dict.fromkeys(key[:2] for key in test_probs):
        pairs = {seed: (test_probs[(*ref, seed)], 0.5, test_probs[(*variant, seed)], 0.5) for seed in seeds}
        for seed, pair in pairs.items():
            result = paired_difference(labels, [pair], COMPARED, train_config.bootstrap or 1000, seed)
            index = runs.index[(runs["modalities"] == "+".join(variant[0])) & (runs["fusion"] == variant[1])
                               & (runs["seed"] == seed)][0]
            runs.loc[index, "reference"] = reference_name
            for metric, values in result.items():
                for key, value in values.items():
                    runs.loc[index, f"test_{metric}_diff" + ("" if key == "diff" else f"_{key}")] = value
        result = paired_difference(labels, list(pairs.values()), COMPARED, train_config.bootstrap or 1000, 0)
        pooled.append({"modalities": "+".join(variant[0]), "fusion": variant[1], "reference": reference_name,
                       **{f"test_{m}_diff" + ("" if k == "diff" else f"_{k}"): v
                          for m, values in result.items() for k, v in values.items()}})
    return pooled


def _row(modalities, fusion, seed, run):
    row = {"modalities": "+".join(modalities), "fusion": fusion, "seed": seed,
           "best_epoch": run.fit.best_epoch, "epochs": len(run.fit.history), "seconds": round(run.seconds, 3)}
    for split, metrics in run.metrics.items():
        for prefix, values in ((split, metrics), (f"{split}_tuned", metrics["tuned"])):
            for key, value in values.items():
                if key == "confusion_matrix":
                    value = json.dumps(value)
                if key not in ("tuned", "by_presence", "decision"):
                    row[f"{prefix}_{key}"] = value
        if "decision" in metrics:  # the run's own decision threshold (pipeline.runs.threshold)
            row[f"{split}_decision_threshold"] = metrics["decision"]["threshold"]
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


def markdown_table(summary, pooled=None):
    """The mean ± std table; per presence group present, a test macro-F1 column; with `pooled` comparisons,
    one more column per compared metric: `+0.012 [-0.004, 0.028] p=0.15` against the reference, `*` when
    the interval excludes 0."""
    extra = [c.removesuffix("_mean") for c in summary.columns if c.startswith("test_") and c.endswith("_f1_macro_mean")
             and c.removesuffix("_f1_macro_mean").removeprefix("test_") in ("both", "text_only", "image_only")]
    comparisons = {(c["modalities"], c["fusion"]): c for c in pooled or []}
    reference = next(iter(comparisons.values()))["reference"] if comparisons else None
    header = ["modalities", "fusion", "runs"] + [f"{split} {metric}" for split, metric in SUMMARY]
    header += [f"test f1_macro {c.removeprefix('test_').removesuffix('_f1_macro')}" for c in extra]
    header += [f"Δ test {metric} vs {reference} [95% CI]" for metric in COMPARED] if comparisons else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [row["modalities"], row["fusion"], str(row["runs"])]
        cells += [_mean_std(row[f"{split}_{metric}_mean"], row[f"{split}_{metric}_std"]) for split, metric in SUMMARY]
        cells += [_mean_std(row[f"{c}_mean"], row[f"{c}_std"]) for c in extra]
        if comparisons:
            compared = comparisons.get((row["modalities"], row["fusion"]))
            cells += [difference_text(compared, metric) for metric in COMPARED]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def difference_text(compared, metric):
    """A pooled comparison as a table cell: `+0.0387 [-0.011, +0.087] p=0.140`, `reference`, or empty."""
    if compared is None:
        return ""
    diff, low, high, p = (compared[f"test_{metric}_diff{suffix}"] for suffix in ("", "_low", "_high", "_p"))
    if compared["modalities"] + ("" if compared["fusion"] == NO_FUSION else "/" + compared["fusion"]) \
            == compared["reference"]:
        return "reference"
    mark = " *" if excludes_zero(low, high) else ""
    return f"{diff:+.4f} [{low:+.3f}, {high:+.3f}] p={p:.3f}{mark}"


def _mean_std(mean, std):
    # One seed has no spread: show the mean alone rather than "± nan".
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"
