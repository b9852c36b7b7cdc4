"""The encoder families: what differs between BERT, DeBERTa, CLIP's text tower, ..., in one table.

In the manner of open_clip's `hf_configs.arch_dict`: a family is found from a
folder's `config.json` `model_type`, and says how its tower is loaded, which
inputs its forward takes, which poolings make sense and which one `--pooling
auto` picks, where its pooled output and projection live, and PEFT's default
LoRA target modules for it (peft's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING,
copied here so `--help` needs no peft; DistilBERT, CLIP and SigLIP are not in it).
Adding a family is one entry in `TEXT_FAMILIES` (or `IMAGE_FAMILIES`).

No torch here: `--help` and the docs read this table.
"""

from dataclasses import dataclass

from pipeline.errors import UserError

ALL_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a tokenizer may give


@dataclass(frozen=True)
class TextFamily:
    """One kind of text tower. `poolings` lists the valid `--pooling` values; `auto` is the one `--pooling auto`
    picks when the folder does not say (a sentence-transformers pooling or a trained BERT pooler win)."""

    name: str
    model_types: tuple  # config.json model_type values of this family
    poolings: tuple
    auto: str
    lora_targets: tuple  # None: no PEFT default (then --text-lora-targets is needed)
    inputs: tuple = ALL_TEXT_INPUTS  # what its forward takes, beyond which a tokenizer's outputs are dropped
    # A two-tower model (CLIP, SigLIP): the text half is built from the whole model's folder.
    whole_model_type: str = None  # the whole model's model_type (its folder holds both towers)
    tower_class: str = None  # transformers class of the text tower alone
    whole_text: str = None  # attribute of the whole model holding its text transformer
    transformer: str = None  # attribute of the tower that returns last_hidden_state and pooler_output (None: itself)
    projection: str = None  # attribute of the tower that projects pooler_output (`projected` pooling)
    config_key: str = None  # where the text config sits inside the whole model's config.json
    padding: str = "longest"  # SigLIP pools the last position, so it needs the padding it was trained with
    note: str = ""  # for the docs' table

    @property
    def is_tower_of_two(self):
        return self.whole_model_type is not None


_ENCODER_POOLINGS = ("cls", "mean", "max")
_BERT = dict(poolings=(*_ENCODER_POOLINGS, "pooler"), auto="cls")
_NO_POOLER = dict(poolings=_ENCODER_POOLINGS, auto="cls")
_NO_TOKEN_TYPES = ("input_ids", "attention_mask")

TEXT_FAMILIES = (
    TextFamily("bert", ("bert",), **_BERT, lora_targets=("query", "value"),
               note="sentence-transformers folders of BERT models too (MiniLM)"),
    TextFamily("roberta", ("roberta", "camembert"), **_BERT, lora_targets=("query", "value"),
               note="a *ForSequenceClassification folder has no pooler weights: auto gives cls"),
    TextFamily("xlm-roberta", ("xlm-roberta",), **_BERT, lora_targets=("query", "value")),
    TextFamily("electra", ("electra",), **_NO_POOLER, lora_targets=("query", "value")),
    TextFamily("distilbert", ("distilbert",), **_NO_POOLER, lora_targets=("q_lin", "v_lin"), inputs=_NO_TOKEN_TYPES),
    TextFamily("deberta-v2", ("deberta-v2",), **_NO_POOLER, lora_targets=("query_proj", "value_proj"),
               note="DeBERTa v3 too; a classifier's ContextPooler is not part of DebertaV2Model and is dropped"),
    TextFamily("deberta", ("deberta",), **_NO_POOLER, lora_targets=("in_proj",)),
    TextFamily("clip", ("clip", "clip_text_model"), poolings=("projected", "pooler", "mean", "max"), auto="projected",
               lora_targets=("q_proj", "v_proj"), inputs=_NO_TOKEN_TYPES, whole_model_type="clip",
               tower_class="CLIPTextModelWithProjection", whole_text="text_model", transformer="text_model",
               projection="text_projection",
               config_key="text_config",
               note="projected = get_text_features (EOS token, projected); cls would be the BOS token"),
    TextFamily("siglip", ("siglip", "siglip_text_model"), poolings=("pooler", "mean", "max"), auto="pooler",
               lora_targets=("q_proj", "v_proj"), inputs=_NO_TOKEN_TYPES, whole_model_type="siglip",
               tower_class="SiglipTextModel", whole_text="text_model", config_key="text_config",
               padding="max_length", note="pooler = get_text_features (last position, through its head); "
                                          "titles are padded to --max-length as SigLIP was trained"),
)
# Any other encoder AutoModel loads: the inputs its forward takes, its pooler when it has one.
GENERIC_TEXT = TextFamily("encoder", (), **_BERT, lora_targets=None)


IMAGE_FLAG = "--image-model/--clip-model"  # the flag and its old alias, as messages name them


@dataclass(frozen=True)
class ImageFamily:
    """One kind of image tower. `embeddings` lists the valid `--image-embedding` values, the first being the one
    `auto` picks when the folder has the weights it needs (else the next). Preprocessing is not here: it is read
    from the folder's own preprocessor_config.json (pipeline.data.images.ImageSettings)."""

    name: str
    model_types: tuple  # config.json model_type values of this family
    embeddings: tuple
    lora_targets: tuple  # the modules --train-image lora wraps and a LoRA checkpoint may target; None: no LoRA
    whole_model_type: str = None  # a two-tower model (CLIP, SigLIP): its `vision_model` is the image tower
    projection: str = None  # attribute of the whole model that projects pooler_output (`projected`)
    fixed_size: bool = True  # position embeddings fit one image size (checked against the crop); DINOv2 interpolates
    folders: str = ""  # the classes whose save_pretrained folders it takes, for error messages and the docs
    note: str = ""  # for the docs' table


# transformers 5 names ViT's and DINOv2's attention projections q_proj/v_proj (4.x: query/value; PEFT's table
# has no entry for either), as CLIP's and SigLIP's.
_VIT_LORA = ("q_proj", "v_proj")

IMAGE_FAMILIES = (
    ImageFamily("clip", ("clip", "clip_vision_model"), embeddings=("projected", "pooled"),
                lora_targets=("q_proj", "v_proj"), whole_model_type="clip", projection="visual_projection",
                folders="CLIPModel, CLIPVisionModel or CLIPVisionModelWithProjection",
                note="projected = get_image_features; pooled = the layer-normed CLS token before the projection"),
    ImageFamily("siglip", ("siglip", "siglip_vision_model"), embeddings=("pooled",), lora_targets=("q_proj", "v_proj"),
                whole_model_type="siglip", folders="SiglipModel or SiglipVisionModel",
                note="pooled = get_image_features (the attention-pooling head); SigLIP has no projection"),
    ImageFamily("vit", ("vit", "deit"), embeddings=("pooled", "cls"), lora_targets=_VIT_LORA,
                folders="ViTModel or ViTForImageClassification",
                note="pooled = tanh(dense(CLS)) when the folder has pooler weights; cls = the layer-normed CLS token "
                     "(what a ViTForImageClassification folder was trained through: auto picks it there)"),
    ImageFamily("dinov2", ("dinov2",), embeddings=("pooled",), lora_targets=_VIT_LORA, fixed_size=False,
                folders="Dinov2Model or Dinov2ForImageClassification",
                note="pooled = the layer-normed CLS token; any crop size (position embeddings interpolate)"),
)
# Any other AutoModel whose forward takes pixel_values and returns a pooled output (ResNet, ConvNeXt, Swin, ...).
GENERIC_IMAGE = ImageFamily("backbone", (), embeddings=("pooled",), lora_targets=None, fixed_size=False,
                            folders="any AutoModel image backbone with a pooled output",
                            note="pooled = its pooler_output, flattened; full weights load, LoRA does not merge")


def text_family(model_type):
    """The family of a text folder's `model_type`; the generic encoder family for any other."""
    for family in TEXT_FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC_TEXT


def image_family(model_type):
    """The family of an image folder's `model_type`; the generic backbone family for any other."""
    for family in IMAGE_FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC_IMAGE


def not_an_image_model(folder, model_type, why):
    """The error for a folder that is no image tower (a text model given as the image model, say)."""
    known = "; ".join(f"{family.name}: {family.folders}" for family in (*IMAGE_FAMILIES, GENERIC_IMAGE))
    return UserError(f"{IMAGE_FLAG} {folder}: model_type {model_type!r} is not of an image family this tool knows "
                     f"({why}); give a folder of {known}")


def check_embedding(family, embedding, folder):
    """An image embedding the family cannot give is a UserError listing the ones it can."""
    if embedding not in family.embeddings:
        raise UserError(f"--image-embedding {embedding}: the image model {folder} is a {family.name} model, which "
                        f"has no {embedding!r} embedding; use one of: auto, {', '.join(family.embeddings)}")


def image_lora_targets(family, given=None):
    """The modules `--train-image lora` wraps: `given` (--lora-targets), else the family's PEFT default."""
    if given:
        return tuple(given)
    if family.lora_targets is None:
        raise UserError(f"--train-image lora: the image model is a {family.name} model, for which we know no LoRA "
                        "target modules; pass --lora-targets with the names of its Linear layers, or use "
                        "--train-image frozen or full")
    return family.lora_targets


def check_pooling(family, pooling, folder):
    """A pooling the family cannot give is a UserError listing the ones it can."""
    if pooling not in family.poolings:
        raise UserError(f"--pooling {pooling}: the text model {folder} is a {family.name} model, which has no "
                        f"{pooling!r} pooling; use one of: auto, {', '.join(family.poolings)}")


def family_lora_targets(family, model_type, given=None):
    """The modules `--train-text lora` wraps: `given` (--text-lora-targets), else the family's PEFT default."""
    if given:
        return tuple(given)
    if family.lora_targets is None:  # a family not in our table may still be in PEFT's
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        if isinstance(PEFT_DEFAULTS.get(model_type), list):
            return tuple(PEFT_DEFAULTS[model_type])
        raise UserError(f"--train-text lora: neither we nor PEFT have default LoRA target modules for model_type "
                        f"{model_type!r}; "
                        "pass --text-lora-targets with the names of its attention Linear layers (e.g. query,value)")
    return family.lora_targets
