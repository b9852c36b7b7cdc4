"""End-to-end fine-tuning's settings, without torch: what it adds to stage two's head and training configs.

The head's shape is a `HeadConfig` and the optimiser, early stopping, class
weights and seed a `TrainConfig`, exactly as for `train-head` (same flags, same
checks); only the defaults differ where fine-tuning whole encoders needs it
(fewer epochs, less patience). A head trains with `--lr-head` and the encoders
with `--lr-encoder` instead of `--lr`; batch size and device are the data flags'.
"""

from dataclasses import dataclass, field

from pipeline.config import help_field, number, one_of, validate, whole
from pipeline.model.config import HeadConfig
from pipeline.train.config import TrainConfig

TEXT_MODES = ("full", "frozen", "lora")
IMAGE_MODES = ("lora", "frozen", "full")
TRAIN_DEFAULTS = {"max_epochs": 3, "patience": 2}  # stage two's TrainConfig defaults that fine-tuning changes
# replaced by --lr-encoder/--lr-head and data flags; calibration is train-head's alone
TRAIN_FIELDS_UNUSED = ("lr", "batch_size", "device", "threads", "calibrate")


@dataclass(frozen=True)
class FinetuneConfig:
    """What end-to-end fine-tuning adds to stage one's data and model settings."""

    out: str = help_field("run folder", default="runs/e2e")
    train_text: str = help_field(f"text encoder: {', '.join(TEXT_MODES)}", default="full")
    train_image: str = help_field(f"image encoder: {', '.join(IMAGE_MODES)}", default="lora")
    lora_rank: int = help_field("rank of the LoRA adapters trained here", default=8)
    lora_train_alpha: float = help_field("alpha of the LoRA adapters trained here", default=16.0)
    lora_targets: tuple = help_field("image modules that get LoRA (with --train-image lora; default: the image "
                                     "model's family's: q_proj,v_proj for CLIP, SigLIP, ViT and DINOv2)", default=None)
    text_lora_targets: tuple = help_field("text modules that get LoRA (with --train-text lora; default: PEFT's "
                                          "for the text model's family, e.g. query,value for BERT, q_lin,v_lin "
                                          "for DistilBERT, query_proj,value_proj for DeBERTa-v2)", default=None)
    lr_encoder: float = help_field("learning rate of the encoders (and their LoRA)", default=2e-5)
    lr_head: float = help_field("learning rate of the fusion head", default=1e-3)
    eval_batch_size: int = help_field("rows per evaluation step", default=64)
    grad_accum: int = help_field("gradient accumulation steps", default=1)
    grad_checkpointing: bool = help_field("recompute activations in the backward pass to save memory", default=False)
    init_head: str = help_field("start from the head of a stage-two run folder (RUN_DIR or RUN_DIR/head)", default=None)
    resume: bool = help_field("continue from the last checkpoint in OUT/checkpoints", default=False)
    overwrite: bool = help_field("write into a non-empty --out, even an earlier run's (same-named files are "
                                 "replaced, others left); without it (or --resume) a non-empty --out is refused",
                                 default=False)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**TRAIN_DEFAULTS))

    def __post_init__(self):
        validate(
            one_of(self, "train_text", TEXT_MODES), one_of(self, "train_image", IMAGE_MODES),
            *(whole(self, name, 1) for name in ("lora_rank", "eval_batch_size", "grad_accum")),
            number(self, "lora_train_alpha", above=0), number(self, "lr_encoder", at_least=0, below=10),
            number(self, "lr_head", at_least=0, below=10),
        )
