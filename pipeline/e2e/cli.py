"""Fine-tune the text encoder, the CLIP image encoder (LoRA by default) and the fusion head end to end.

Uses the Hugging Face Trainer with stage two's class-weighted loss, early
stopping with best-model restore and stage two's metrics; exports encoders that
`make embed` takes as they are (see OUT/export/embed.sh).
"""

from pipeline.config import add_config_arguments, config_from_args
from pipeline.e2e.run import FinetuneConfig, run_finetune
from pipeline.embed.run import EmbedConfig

# Stage one's flags that make no sense here (the cache) get a placeholder.
_UNUSED_EMBED_FLAGS = {"cache_dir": "-"}


def add_arguments(parser):
    data = parser.add_argument_group("data and models (as for embed)")
    add_config_arguments(data, EmbedConfig, defaults={**_UNUSED_EMBED_FLAGS, "batch_size": 16}, skip=(
        "cache_dir", "on_stale", "part_rows", "cache_dtype"))
    add_config_arguments(parser.add_argument_group("fine-tuning"), FinetuneConfig)


def run(args):
    data = config_from_args(EmbedConfig, args, **_UNUSED_EMBED_FLAGS)
    run_finetune(data, config_from_args(FinetuneConfig, args))
    return 0
