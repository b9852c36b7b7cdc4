"""Compare head variants: modalities x fusion kinds x seeds on one cache, as a mean ± std table.

Loads the cache once, trains every variant with the same training flags (each
with early stopping and a validation-tuned threshold, as `train-head` does),
compares every variant with a reference (--reference, default text only) on the
same test rows (paired bootstrap: difference, 95% interval, p-value; per seed and
pooled), prints the table and writes ablation.csv (one row per run, every metric
and its comparison), comparisons.csv (pooled over seeds), ablation.md (the table),
config.json and run.json (the run record) into --out. `--features similarity` (a cache
whose towers are one CLIP or SigLIP model) adds, after each two-modality fusion, its
twin reading the similarity too (`concat+similarity`).
"""

import argparse
from dataclasses import asdict, replace

from pipeline.config import add_config_arguments, configs_from_args
from pipeline.files import output_folder, write_json_atomic, write_text_atomic
from pipeline.model.config import FUSIONS, MODALITIES, HeadConfig
from pipeline.train.config import TrainConfig

WRITES_REPORT = True  # __main__ adds --report/--no-report and writes the page of args.report_folder


def add_arguments(parser):
    parser.add_argument("--cache-dir", required=True, help="embedding cache folder written by `embed`")
    parser.add_argument("--out", default="runs/ablation", help="folder for ablation.csv, ablation.md, config.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, even an earlier ablation's (same-named files are "
                             "replaced, others left); without it a non-empty --out is refused")
    parser.add_argument("--modalities", nargs="+", default=["text", "image", "text,image"],
                        help="modality sets to compare, each comma-separated (text,image = both)")
    parser.add_argument("--fusions", nargs="+", type=_words, default=list(FUSIONS),
                        help=f"fusion kinds for the two-modality sets: any of {', '.join(FUSIONS)} "
                             "(space- or comma-separated)")
    parser.add_argument("--seeds", nargs="+", type=_whole_numbers, default=[0, 1, 2],
                        help="seeds run for every variant (space- or comma-separated: 0 1 2 or 0,1,2)")
    parser.add_argument("--reference", default=None,
                        help="the variant every other is compared with, spelled as --modalities is, with /fusion "
                             "for two: text, image, text,image/gated (text+image/gated works too); None means the "
                             "text-only variant (else the first of the grid)")
    parser.add_argument("--eval-ids", default=None,
                        help="score val and test only on these rows (doctor --write-clean-ids or one id a line)")
    parser.add_argument("--label-column", default=None,
                        help="the cache's label set to train on (embed --label-column adds one without running the "
                             "encoders); None means the one the cache's last embed used")
    add_config_arguments(parser, HeadConfig, skip=("modalities", "fusion", "text_dim", "image_dim", "num_classes"))
    add_config_arguments(parser, TrainConfig, skip=("seed",))


def _words(text):
    return [word.strip() for word in text.split(",") if word.strip()]


def _whole_numbers(text):
    try:
        return [int(word) for word in _words(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not whole numbers; give seeds as 0 1 2 or 0,1,2") from None


def _flat(values):
    """nargs='+' of comma lists -> one list; the default is already flat."""
    return [item for value in values for item in (value if isinstance(value, list) else [value])]


def run(args):
    args.seeds, args.fusions = _flat(args.seeds), _flat(args.fusions)
    head_config, train_config = configs_from_args(args, HeadConfig, TrainConfig,
                                                  HeadConfig={"modalities": MODALITIES})
    for fusion in args.fusions:  # check every value before the first run, not halfway through the grid
        replace(head_config, fusion=fusion)
    from pipeline.outputs import claim_run_folder

    out = claim_run_folder(args.out, "ablate", args.overwrite)
    import torch  # the heavy imports only when the command runs, so --help stays fast

    from pipeline.data.classes import class_names_of
    from pipeline.runs.encoders import from_manifest
    from pipeline.runs.record import write_run_record
    from pipeline.train.ablate import find_reference, markdown_table, run_ablation, summarize, variants
    from pipeline.train.eval_ids import apply_eval_ids
    from pipeline.train.features import check_cache_features
    from pipeline.train.fit import load_cached_splits
    from pipeline.train.plots import plot_ablation
    from pipeline.train.run_folder import resolved_config, write_csv

    grid = variants(args.modalities, args.fusions, head_config.features)
    find_reference(grid, args.reference)  # a bad --reference fails before any training
    manifest, splits = load_cached_splits(args.cache_dir, label_column=args.label_column)
    check_cache_features(manifest, head_config.features, args.cache_dir)
    splits, eval_ids = apply_eval_ids(splits, args.eval_ids)
    class_names = class_names_of(manifest)
    head_config = replace(head_config, text_dim=manifest["dims"]["text"], image_dim=manifest["dims"]["image"],
                          num_classes=len(class_names))
    print(f"Ablation on {args.cache_dir}: {len(grid)} variants x {len(args.seeds)} seeds "
          f"({len(class_names)} classes)")
    runs = run_ablation(splits, head_config, train_config, args.modalities, args.fusions, args.seeds, log=print,
                        reference=args.reference, class_names=class_names)
    table = markdown_table(summarize(runs), runs.attrs["pooled"])
    out = output_folder(out, "--out")
    write_run_record(out, "ablate", cache={"dir": args.cache_dir, "fingerprint": manifest.get("fingerprint")},
                     encoders=from_manifest(manifest), command_line=getattr(args, "command_line", None),
                     class_names=class_names, label_column=manifest["label_column"])
    write_csv(out / "ablation.csv", runs)
    write_csv(out / "comparisons.csv", runs.attrs["pooled"])
    write_text_atomic(out / "ablation.md", table)
    grid_config = {"modalities": args.modalities, "fusions": args.fusions, "features": list(head_config.features),
                   "seeds": args.seeds,
                   "reference": runs.attrs["reference"], "eval_ids": eval_ids}
    # The grid sets modalities, fusion and seed per run; the rest is shared by every run.
    shared_head = {k: v for k, v in asdict(head_config).items() if k not in ("modalities", "fusion", "features")}
    write_json_atomic(out / "config.json", resolved_config("ablate", args.cache_dir, manifest, grid=grid_config,
                                                           head=shared_head, train=train_config,
                                                           resolved={"threads": torch.get_num_threads()}))
    print(f"Test rows: {len(splits['test'])}{' (eval-ids only)' if eval_ids else ''}. Δ columns: paired bootstrap "
          f"against {runs.attrs['reference']} on the same rows, pooled over seeds; * = the 95% interval excludes 0")
    print(table, end="")
    plot_ablation(runs, out / "ablation_f1.png")
    print(f"Ablation folder: {out} (ablation.csv, comparisons.csv, ablation.md, ablation_f1.png, config.json)")
    args.report_folder = out  # __main__ writes its page (--report)
    return 0
