"""The image tower: CLIP's or SigLIP's vision half, ViT, DINOv2, or any AutoModel image backbone with a pooled output.

Which folders a family takes, which embeddings it gives and which one `auto`
picks come from its entry in `pipeline.model.families.IMAGE_FAMILIES`. The
embeddings: `projected` (CLIP's get_image_features), `pooled` (the tower's
pooler_output: CLIP's before the projection, SigLIP's attention-pooling head,
which is its get_image_features, ViT's tanh(dense(CLS)), DINOv2's layer-normed
CLS token, a CNN's pooled map flattened) and `cls` (ViT's layer-normed CLS token).
"""

import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPVisionModel, CLIPVisionModelWithProjection

from pipeline.errors import UserError
from pipeline.model.config import EMBEDDINGS
from pipeline.model.families import GENERIC_IMAGE, IMAGE_FLAG, check_embedding, image_family, not_an_image_model
from pipeline.model.folders import (
    check_finite_weights,
    check_loading_info,
    has_weight,
    read_config,
    refusing_pickled_code,
)

_HEAD_PREFIXES = ("classifier.", "distillation_classifier.", "cls_classifier.")  # *ForImageClassification heads


class ImageEncoder(nn.Module):
    """`vision_model` (what takes pixel_values) + optional `visual_projection`, named as in `CLIPModel` so
    checkpoint keys of either CLIP class map onto it unchanged."""

    def __init__(self, vision_model, visual_projection=None, embedding="projected", family=None, dim=None):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding {embedding!r} is not one of {EMBEDDINGS}")
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.embedding = embedding
        self.family = family or image_family(vision_model.config.model_type)
        self._dim = dim  # measured for a generic backbone, whose config names its width in no one way

    @property
    def dim(self):
        if self.embedding == "projected":
            return self.visual_projection.out_features
        return self._dim or self.vision_model.config.hidden_size

    def forward(self, pixel_values):
        output = self.vision_model(pixel_values=pixel_values)
        if self.embedding == "cls":
            return output.last_hidden_state[:, 0]  # (B, H)
        pooled = output.pooler_output.flatten(1)  # (B, H); a CNN's (B, C, 1, 1) map too
        return self.visual_projection(pooled) if self.embedding == "projected" else pooled


def image_family_of(folder):
    """The image family of a model folder, from its config.json."""
    return image_family(read_config(folder, IMAGE_FLAG).get("model_type"))


def resolve_embedding(folder, embedding="auto"):
    """(embedding, why): `embedding` itself unless it is `auto`; then the family's first whose weights the folder
    has (CLIP: projected unless a tower saved without its projection; ViT: pooled with pooler weights, else cls)."""
    config = read_config(folder, IMAGE_FLAG)
    model_type = config.get("model_type")
    family = image_family(model_type)
    if family is GENERIC_IMAGE:
        _check_takes_pixels(folder, model_type)  # before any cache is touched: a text model is no image model
    if embedding != "auto":
        check_embedding(family, embedding, folder)
        return embedding, "given"
    if family.projection and model_type != family.whole_model_type and not any(
            str(name).endswith("WithProjection") for name in config.get("architectures") or []):
        return "pooled", f"a {family.name} vision tower saved without its projection"
    if "cls" in family.embeddings and not has_weight(folder, "pooler.dense.weight"):
        return "cls", f"a {family.name} folder without pooler weights"
    return family.embeddings[0], f"the {family.name} image tower's own embedding"


def _check_takes_pixels(folder, model_type):
    """Refuse a folder whose AutoModel class takes no pixel_values, from its config alone (no weights loaded)."""
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        model_class = AutoModel._model_mapping[type(config)]
    except (KeyError, ValueError, OSError) as error:
        raise not_an_image_model(folder, model_type, f"AutoModel has no class for it: {error}") from None
    if "pixel_values" not in inspect.signature(model_class.forward).parameters:
        raise not_an_image_model(folder, model_type, f"its AutoModel, {model_class.__name__}, takes no pixel_values")


def load_image_encoder(folder, embedding="projected"):
    embedding, _ = resolve_embedding(folder, embedding)
    model_type = read_config(folder, IMAGE_FLAG).get("model_type")
    family = image_family(model_type)
    name = f"{IMAGE_FLAG} {folder}"
    with refusing_pickled_code(folder, IMAGE_FLAG):
        if family.whole_model_type == model_type:
            vision, projection = _vision_half(folder, family, name)
        elif family.projection:  # CLIP's vision tower alone, with or without its projection
            vision, projection = _clip_vision_tower(folder, name)
        else:
            vision, projection = _load_tower(folder, family, embedding, name), None
    if embedding == "projected" and projection is None:
        raise UserError(f"{name}: the folder has no {family.projection} weights; use --image-embedding pooled, "
                        "or a CLIPModel / CLIPVisionModelWithProjection folder")
    dim = _measured_dim(vision, folder) if family is GENERIC_IMAGE else None
    encoder = ImageEncoder(vision, projection, embedding, family, dim)
    check_finite_weights(encoder, name)
    return encoder


def _vision_half(folder, family, name):
    """The vision half of a two-tower folder (CLIPModel, SiglipModel): loading the tower class from it would
    re-initialise the projection (transformers 5), so the whole model loads and its vision half is kept."""
    whole, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
    parts = ("vision_model.", *((f"{family.projection}.",) if family.projection else ()))
    check_loading_info(info, name, only=parts)  # only the vision half is used: text-tower keys may be absent or extra
    return whole.vision_model, getattr(whole, family.projection) if family.projection else None


def _clip_vision_tower(folder, name):
    """A CLIPVisionModelWithProjection folder, or a CLIPVisionModel one (then without a projection)."""
    model, info = CLIPVisionModelWithProjection.from_pretrained(folder, trust_remote_code=False,
                                                                output_loading_info=True)
    if any(str(key).startswith("visual_projection") for key in info.get("missing_keys", ())):
        plain, info = CLIPVisionModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
        check_loading_info(info, name)
        # transformers 5's CLIPVisionModel is the vision transformer itself; 4.x wrapped it.
        return getattr(plain, "vision_model", plain), None
    check_loading_info(info, name)
    return model.vision_model, model.visual_projection


def _load_tower(folder, family, embedding, name):
    """A one-tower folder (ViT, DINOv2, any backbone) as its AutoModel; a classifier's head is dropped, and its
    missing pooler only matters to the `pooled` embedding."""
    model, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
    check_loading_info(info, name, ignore_missing=() if embedding == "pooled" else ("pooler.",),
                       ignore_unexpected=_HEAD_PREFIXES)
    return model


@torch.no_grad()
def _measured_dim(vision, folder):
    """The width of a generic backbone's pooled output, from one small forward pass; none is an error."""
    config = vision.config
    side = getattr(config, "image_size", None)
    side = side if isinstance(side, int) and 0 < side <= 1024 else 224
    probe = torch.zeros(1, getattr(config, "num_channels", 3), side, side)
    pooled = getattr(vision.eval()(pixel_values=probe), "pooler_output", None)
    if pooled is None or pooled.ndim < 2 or pooled[0].numel() != pooled.shape[1]:
        raise not_an_image_model(folder, config.model_type, f"{type(vision).__name__} gives no pooled output "
                                 "(pooler_output of shape (B, C) or (B, C, 1, 1))")
    return int(pooled.shape[1])


@torch.no_grad()
def merge_lora_into(module, lora_a, lora_b, scaling):
    """W <- W + scaling * B @ A for one nn.Linear, in place."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"LoRA target is {type(module).__name__}, not Linear")
    delta = (lora_b.to(torch.float32) @ lora_a.to(torch.float32)) * scaling  # (out, in)
    module.weight += delta.to(module.weight.dtype)


def check_image_size(folder, size, source):
    """Refuse image settings whose crop size is not the image model's input size (CLIP's, SigLIP's and ViT's
    position embeddings fit one size: any other fails on the first batch; DINOv2's interpolate). `source` names
    where `size` came from."""
    config = read_config(folder, IMAGE_FLAG)
    family = image_family(config.get("model_type"))
    if not family.fixed_size:
        return
    vision = config.get("vision_config") if config.get("model_type") == family.whole_model_type else config
    expected = vision.get("image_size") if isinstance(vision, dict) else None
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != size:
        raise UserError(f"{source}: crops images to {size}x{size} pixels, but the {family.name} model {folder} takes "
                        f"{expected}x{expected} (image_size in its config.json); make the two agree (crop_size "
                        f"{expected} in preprocessor_config.json) or use the image model folder they were made for")
