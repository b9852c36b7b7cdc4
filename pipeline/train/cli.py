"""Train the fusion head on cached embeddings, with early stopping and a validation-tuned threshold.

Reads the train, val and test splits of a cache built by `embed`, trains a
FusionHead with class-weighted cross-entropy and AdamW, stops early on a
validation metric (restoring the best epoch), tunes the decision threshold on
validation, scores test once, and writes a run folder: config.json,
metrics.json, epochs.csv, predictions_{val,test}.csv, head/ (safetensors) and
PNG plots. Top-level metrics use threshold 0.5; "tuned" holds the tuned ones. With K > 2
classes (the cache's label column) the head has K outputs and decides by the argmax (no threshold). Every
metrics.json has majority and stratified baselines per split and a `warnings` list, printed here too.
Every headline metric gets a 95% bootstrap interval (--bootstrap), ECE and Brier
score; --calibrate temperature fits a temperature on validation and stores it
with the head; --eval-ids scores val and test only on the listed rows.
"""

from dataclasses import replace

from pipeline.config import add_config_arguments, configs_from_args
from pipeline.model.config import HeadConfig
from pipeline.train.config import TrainConfig

WRITES_REPORT = True  # __main__ adds --report/--no-report and writes the page of args.report_folder


def add_arguments(parser):
    parser.add_argument("--cache-dir", required=True,
                        help="embedding cache folder written by `embed` (make: CACHE_DIR)")
    parser.add_argument("--out", default=None,
                        help="run folder; None means runs/head-<modalities>[-<fusion>]-seed<seed>")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, even an earlier run's (same-named files are replaced, "
                             "others left); without it a non-empty --out is refused")
    parser.add_argument("--eval-ids", default=None,
                        help="score val and test only on these rows: a `split<TAB>id` TSV as `doctor "
                             "--write-clean-ids` writes it, or one id a line")
    parser.add_argument("--label-column", default=None,
                        help="the cache's label set to train on (embed --label-column adds one without running the "
                             "encoders); None means the one the cache's last embed used")
    add_config_arguments(parser, HeadConfig, skip=("text_dim", "image_dim", "num_classes"))
    add_config_arguments(parser, TrainConfig)


def run(args):
    # Build both configs before loading anything, so a bad flag fails in milliseconds.
    head_config, train_config = configs_from_args(args, HeadConfig, TrainConfig)
    from pipeline.outputs import claim_run_folder
    from pipeline.train.run_folder import default_out

    out = claim_run_folder(args.out or default_out(head_config, train_config.seed), "train-head", args.overwrite)
    import torch  # the heavy imports only when the command runs, so --help stays fast

    from pipeline.data.classes import class_names_of
    from pipeline.runs.encoders import from_manifest
    from pipeline.train.eval_ids import apply_eval_ids
    from pipeline.train.features import check_cache_features, write_similarity_summary
    from pipeline.train.fit import load_cached_splits, train_head
    from pipeline.train.metrics import shown, shown_baselines, shown_by_presence, with_intervals
    from pipeline.train.run_folder import resolved_config, write_run

    manifest, splits = load_cached_splits(args.cache_dir, label_column=args.label_column)
    check_cache_features(manifest, head_config.features, args.cache_dir)
    splits, eval_ids = apply_eval_ids(splits, args.eval_ids)
    class_names = class_names_of(manifest)
    head_config = replace(head_config, text_dim=manifest["dims"]["text"], image_dim=manifest["dims"]["image"],
                          num_classes=len(class_names))
    print(f"Training a {'+'.join(head_config.modalities)} head on {args.cache_dir} "
          f"({', '.join(f'{name} {len(split)}' for name, split in splits.items())} rows; "
          f"{len(class_names)} classes: {', '.join(class_names)})")
    result = train_head(splits, head_config, train_config, log=print, class_names=class_names)
    config = resolved_config("train-head", args.cache_dir, manifest, head=head_config, train=train_config,
                             resolved={"device": result.device, "threads": torch.get_num_threads(),
                                       "class_weights": result.class_weights, "best_epoch": result.fit.best_epoch,
                                       "eval_ids": eval_ids, "temperature": result.temperature})
    if eval_ids:
        for split in ("val", "test"):
            result.metrics[split]["eval_ids"] = {"file": eval_ids["file"], **eval_ids["rows"][split]}
    out = write_run(out, result, config, encoders=from_manifest(manifest),
                    command_line=getattr(args, "command_line", None), label_column=manifest["label_column"])
    if "similarity" in head_config.features:  # for the report: the feature's distribution per class
        write_similarity_summary(out, splits)
    for label, split in (("Validation", "val"), ("Test", "test")):
        print(f"{label} metrics: {shown(result.metrics[split])}")
        print(f"{label} by presence: {shown_by_presence(result.metrics[split])}")
    for label, split in (("Validation", "val"), ("Test", "test")):
        metrics = result.metrics[split]
        print(f"{label} ({metrics['rows']} rows{', eval-ids only' if eval_ids else ''}; 95% bootstrap intervals): "
              f"{with_intervals(metrics)}; ECE {metrics['ece']:.3f}, Brier {metrics['brier']:.3f}")
        print(f"{label} baselines: {shown_baselines(metrics)}")
    if result.temperature is not None:
        calibration = result.metrics["test"]["calibration"]
        print(f"Temperature fitted on validation: T = {result.temperature:.3f}; test ECE "
              f"{calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f} (stored in head/head_config.json)")
    for warning in result.warnings:  # also in metrics.json (top level, and "warnings" of each split)
        print(warning)
    args.report_folder = out  # __main__ writes its page (--report)
    if len(class_names) > 2:
        print(f"Decision: {result.metrics['test']['decision']['rule']}")
        print(f"Run folder: {out} (best epoch {result.fit.best_epoch} of {len(result.fit.history)}, "
              f"{result.seconds:.1f} s)")
        return 0
    tuned, decision = result.metrics["test"]["tuned"], result.metrics["test"]["decision"]
    print(f"Threshold tuned on validation: {tuned['threshold']:.4f} -> "
          f"test f1_macro {tuned['f1_macro']:.4f}, accuracy {tuned['accuracy']:.4f}")
    print(f"Decision threshold: {decision['threshold']:.4f} ({'tuned' if decision['source'] == 'tuned' else 'default'}"
          f"; the rule: {decision['rule']}; val has {decision['rows_per_class']} rows per class)")
    print(f"Run folder: {out} (best epoch {result.fit.best_epoch} of {len(result.fit.history)}, "
          f"{result.seconds:.1f} s)")
    return 0
