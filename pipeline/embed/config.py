"""Stage one's settings, without torch: flags and `--help` are built from these; saved in the manifest."""

from dataclasses import dataclass

from pipeline.config import existing, help_field, number, one_of, validate, whole
from pipeline.data.classes import DEFAULT_LABEL_COLUMN, MAX_CLASSES
from pipeline.data.images import DEFAULT_MAX_PIXELS
from pipeline.model.config import EMBEDDING_CHOICES, POOLING_CHOICES

BAD_IMAGE_POLICIES = ("skip", "fail", "text-only")
PLACEHOLDER_POLICIES = ("embed", "skip", "text-only")
EMPTY_TITLE_POLICIES = ("skip", "image-only")
STALE_POLICIES = ("refuse", "rebuild")
CACHE_DTYPES = ("float32", "float16")
LABELS_FOLDER = "labels"  # embed/owned.py's LABELS (config stays free of the cache's modules)


@dataclass(frozen=True)
class EmbedConfig:
    """Everything stage one depends on; saved in the manifest."""

    data_dir: str = help_field("folder with <split>_filtered.tsv or <split>.tsv files")
    text_model: str = help_field("Hugging Face text model folder with its tokenizer: any encoder AutoModel loads "
                                 "(BERT, RoBERTa, DistilBERT, DeBERTa, ...) or a CLIP / SigLIP model's text tower")
    clip_model: str = help_field("Hugging Face image model folder: CLIP (CLIPModel or CLIPVisionModel"
                                 "[WithProjection]), SigLIP (SiglipModel or SiglipVisionModel), ViT, DINOv2, or any "
                                 "AutoModel image backbone with a pooled output", aliases=("--image-model",))
    cache_dir: str = help_field("where the Parquet cache goes")
    splits: tuple = help_field("splits to embed", default=("train", "val", "test"))
    image_root: str = help_field("folder local_image_path is relative to (default: --data-dir)", default=None)
    image_pattern: str = help_field("image file name when the TSV has no local_image_path column", default="{id}.jpg")
    clip_lora: str = help_field(
        "image model checkpoint to merge: PEFT adapter folder or .pt/.pth/.bin/.safetensors (LoRA merges into "
        "CLIP, SigLIP, ViT and DINOv2; full weights load into any family)", default=None, aliases=("--image-lora",))
    lora_alpha: float = help_field("LoRA alpha when the checkpoint does not store it", default=None)
    pooling: str = help_field(f"text pooling: {', '.join(POOLING_CHOICES)} (auto: a sentence-transformers folder's "
                              "own pooling, else pooler for a *ForSequenceClassification folder with pooler "
                              "weights, else the family's own: cls for encoders, projected for CLIP, pooler for "
                              "SigLIP)", default="auto")
    max_length: int = help_field("titles are truncated to this many tokens", default=128)
    clip_embedding: str = help_field(
        f"image vector: {', '.join(EMBEDDING_CHOICES)} (per family: CLIP projected or pooled; SigLIP, DINOv2 and "
        "other backbones pooled; ViT pooled or cls; auto: projected for CLIP, cls for a ViT without pooler "
        "weights, else pooled)", default="auto", aliases=("--image-embedding",))
    device: str = help_field("auto, cpu, cuda or cuda:N", default="auto")
    batch_size: int = help_field("rows per forward pass", default=64)
    num_workers: int = help_field("DataLoader worker processes for image decoding (0 = on every core of the main "
                                  "process, in turn with the encoders; -1 = auto: on CUDA all cores but one, on CPU a "
                                  "quarter of the cores)", default=-1)
    on_bad_image: str = help_field(f"what a row with a missing or bad image does: {', '.join(BAD_IMAGE_POLICIES)} "
                                   "(text-only: kept with its title alone, listed in partial.tsv)", default="skip")
    on_empty_title: str = help_field(f"what a row with an empty title does: {', '.join(EMPTY_TITLE_POLICIES)} "
                                     "(image-only: kept with its image alone, listed in partial.tsv)", default="skip")
    on_stale: str = help_field(
        f"when the cache was built from other inputs: {', '.join(STALE_POLICIES)} (refuse: stop and change "
        "nothing, so another model never destroys a cache; rebuild: replace it once the new one is complete)",
        default="refuse")
    # Not in the fingerprint: the vectors do not depend on the labels (embed/labels.py keeps them apart).
    label_column: str = help_field("column holding the class numbers 0..K-1; another column on a complete cache "
                                   "of the same files and encoders adds its label set without running the "
                                   "encoders", default=DEFAULT_LABEL_COLUMN)
    num_classes: int = help_field("number of classes K (default: Fakeddit's own for 2_way_label, 3_way_label and "
                                  "6_way_label, else the largest label + 1)", default=None)
    class_names: str = help_field("class names in label order, comma-separated, e.g. fake,real (default: "
                                  "Fakeddit's for its columns, else class_0,class_1,...)", default=None)
    part_rows: int = help_field("input rows per Parquet part (the unit of resuming)", default=4096)
    cache_dtype: str = help_field(f"storage type of the vectors: {', '.join(CACHE_DTYPES)}", default="float32")
    max_pixels: int = help_field("images with more pixels are refused without decoding", default=DEFAULT_MAX_PIXELS)
    draft: bool = help_field("let JPEGs decode at reduced scale when much larger than needed", default=True)
    on_placeholder: str = help_field(
        f"rows whose image is a placeholder (a small file shared byte for byte by many rows): "
        f"{', '.join(PLACEHOLDER_POLICIES)} (text-only: kept with the title alone); always counted",
        default="embed")
    placeholder_max_bytes: int = help_field(
        "image files up to this size are checked for placeholders (0 = never)", default=16384)
    placeholder_min_rows: int = help_field(
        "rows that must share one small image file for it to be a placeholder", default=20)

    def __post_init__(self):
        validate(
            *(one_of(self, name, choices) for name, choices in (
                ("pooling", POOLING_CHOICES), ("clip_embedding", EMBEDDING_CHOICES),
                ("on_bad_image", BAD_IMAGE_POLICIES), ("on_empty_title", EMPTY_TITLE_POLICIES),
                ("on_stale", STALE_POLICIES), ("cache_dtype", CACHE_DTYPES), ("on_placeholder", PLACEHOLDER_POLICIES),
            )),
            *(whole(self, name, minimum) for name, minimum in (
                ("batch_size", 1), ("max_length", 1), ("part_rows", 1), ("max_pixels", 1), ("num_workers", -1),
                ("placeholder_max_bytes", 0), ("placeholder_min_rows", 2),
            )),
            None if self.splits else "--splits '': no split names; give at least one, e.g. train,val,test",
            "--splits labels: that name is the label sets' folder in the cache; rename the split"
            if LABELS_FOLDER in self.splits else None,
            None if self.label_column.strip() else "--label-column '': give the name of the label column",
            None if self.num_classes is None or 2 <= self.num_classes <= MAX_CLASSES else
            f"--num-classes {self.num_classes}: needs to be a whole number from 2 to {MAX_CLASSES}",
            existing(self, "data_dir"), existing(self, "text_model"), existing(self, "clip_model"),
            existing(self, "clip_lora", kind="path"),
            None if self.lora_alpha is None else number(self, "lora_alpha", above=0),
        )

    @property
    def resolved_image_root(self):
        return self.image_root or self.data_dir
