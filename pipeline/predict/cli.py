"""Classify new posts with a trained run (train-head or finetune-e2e): one output line per input row.

Rebuilds the exact encoders the run's head was trained on (checked by content
hash; moved folders are fine), embeds the TSV as stage one does (same columns,
same bad-row policy), scores each row with the head and writes
id, prob_<class> per class (two classes: prob_real first), pred, pred_name, status, reason
(plus label and correct when the input has the run's label column, and <out>.metrics.json).
<out>.meta.json records the encoders used.
"""

from pathlib import Path

from pipeline.config import add_config_arguments, config_from_args
from pipeline.outputs import claim_output_file
from pipeline.predict.config import PredictConfig

SHOWN_ROWS = 5


def add_arguments(parser):
    add_config_arguments(parser, PredictConfig)


def run(args):
    config = config_from_args(PredictConfig, args)  # a bad flag fails before any model loads
    claim_output_file(config.out, "--out", inputs=(config.input,), overwrite=config.overwrite,
                      ours=_earlier_predictions)
    from pipeline.predict.classifier import Classifier
    from pipeline.predict.run import predict_file, read_results
    from pipeline.train.metrics import shown

    classifier = Classifier.from_run(
        config.run, device=config.device, threshold=config.threshold, text_model=config.text_model,
        clip_model=config.clip_model, clip_lora=config.clip_lora, pooling=config.pooling,
        allow_other_encoders=config.allow_other_encoders, batch_size=config.batch_size, max_pixels=config.max_pixels)
    for warning in classifier.warnings:
        print(f"warning: {warning}")
    summary = predict_file(classifier, config.input, config.out, image_root=config.image_root,
                           image_pattern=config.image_pattern, cache_dir=config.cache_dir,
                           batch_size=config.batch_size, num_workers=config.num_workers,
                           on_bad_image=config.on_bad_image, on_empty_title=config.on_empty_title,
                           part_rows=config.part_rows, text_only=config.text_only, label_column=config.label_column)
    skipped = sum(summary["skipped_by_reason"].values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["skipped_by_reason"].items()))
    halves = ", ".join(f"{k}={v}" for k, v in sorted(summary["half_posts"].items()))
    noted = summary["warnings"][len(classifier.warnings):]  # the input's own (the encoders' are printed above)
    decision = "by the most probable class" if classifier.threshold is None else \
        f"at threshold {classifier.threshold:.4f}"
    print(f"{summary['rows']} rows: {summary['scored']} classified {decision}"
          f"{f' ({halves})' if halves else ''}, {skipped} not ({reasons or 'none'})"
          + "".join(f"; warning: {warning}" for warning in noted))
    print(read_results(config.out).head(SHOWN_ROWS).to_string(index=False))
    if summary["metrics"] is not None:
        print(f"Metrics: {shown(summary['metrics'])} (written to {config.out}.metrics.json)")
    print(f"Wrote {config.out} and {config.out}.meta.json")
    return 0


def _earlier_predictions(path):
    """An output of an earlier predict: its <out>.meta.json lies beside it."""
    meta = Path(f"{path}.meta.json")
    return meta.is_file() and not meta.is_symlink()
