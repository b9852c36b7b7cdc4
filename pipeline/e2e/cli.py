"""Fine-tune the text encoder, the CLIP image encoder (LoRA by default) and the fusion head end to end.

Uses the Hugging Face Trainer with stage two's class-weighted loss, early
stopping with best-model restore and stage two's metrics; exports encoders that
`make embed` takes as they are (see OUT/export/embed.sh).
"""

import os

from pipeline.config import add_config_arguments, config_from_args, configs_from_args
from pipeline.e2e.config import TRAIN_DEFAULTS, TRAIN_FIELDS_UNUSED, FinetuneConfig
from pipeline.embed.config import EmbedConfig
from pipeline.model.config import HeadConfig
from pipeline.train.config import TrainConfig

# Stage one's flags that make no sense here (the cache) get a placeholder.
_UNUSED_EMBED_FLAGS = {"cache_dir": "-"}


WRITES_REPORT = True  # __main__ adds --report/--no-report and writes the page of args.report_folder


def add_arguments(parser):
    data = parser.add_argument_group("data and models (as for embed)")
    add_config_arguments(data, EmbedConfig, defaults={**_UNUSED_EMBED_FLAGS, "batch_size": 16}, skip=(
        "cache_dir", "on_stale", "part_rows", "cache_dtype"))
    add_config_arguments(parser.add_argument_group("fine-tuning"), FinetuneConfig)
    # --features is train-head's: the similarity is a cached feature, and end to end nothing is cached.
    add_config_arguments(parser.add_argument_group("head (as for train-head)"), HeadConfig,
                         skip=("text_dim", "image_dim", "features", "num_classes"))  # K: from --label-column
    add_config_arguments(parser.add_argument_group("training (as for train-head)"), TrainConfig,
                         defaults=TRAIN_DEFAULTS, skip=TRAIN_FIELDS_UNUSED)


def run(args):
    from pipeline.e2e.run import run_finetune  # torch, transformers and peft: only when the command runs

    # --num-classes is the data's (EmbedConfig); the head's K is set from the labels once they are read.
    data, head, train = configs_from_args(args, EmbedConfig, HeadConfig, TrainConfig,
                                          EmbedConfig=_UNUSED_EMBED_FLAGS, HeadConfig={"num_classes": 2})
    out = run_finetune(data, config_from_args(FinetuneConfig, args, head=head, train=train),
                       command_line=getattr(args, "command_line", None))
    # One process writes the run folder under torchrun; a run of K > 2 classes has no page yet (e2e/kway.py).
    if int(os.environ.get("RANK", "0")) == 0 and (out / "run.json").is_file():
        args.report_folder = out  # __main__ writes its page (--report)
    return 0
