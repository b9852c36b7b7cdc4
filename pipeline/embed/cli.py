"""Embed the TSV splits with BERT and CLIP (+LoRA) and cache the vectors as Parquet.

Rerunning the same command resumes an interrupted run (or reuses a complete one); a
cache built from other models, checkpoints, settings or data is refused, naming what
changed (give another --cache-dir, or --on-stale rebuild to replace it).
Under `torchrun --nproc_per_node N -m pipeline embed ...` each process embeds a
disjoint share of the parts and the result is the same cache.
"""

from pipeline.config import add_config_arguments, config_from_args
from pipeline.embed.config import EmbedConfig


def add_arguments(parser):
    add_config_arguments(parser, EmbedConfig)


def run(args):
    from pipeline import distributed  # torch: only when the command runs
    from pipeline.embed.run import run_embed

    config = config_from_args(EmbedConfig, args)
    group = distributed.join(config.device)
    try:
        run_embed(config, group)
    finally:
        distributed.leave()
    return 0
