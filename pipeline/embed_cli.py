"""Embed the TSV splits with BERT and CLIP (+LoRA) and cache the vectors as Parquet.

Rerunning the same command resumes an interrupted run; a cache built from other
models, checkpoints, settings or data is rebuilt (or refused with --on-stale refuse).
"""

from pipeline.config_args import add_config_arguments, config_from_args
from pipeline.embed import EmbedConfig, run_embed


def add_arguments(parser):
    add_config_arguments(parser, EmbedConfig)


def run(args):
    run_embed(config_from_args(EmbedConfig, args))
    return 0
