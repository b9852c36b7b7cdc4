"""The image tower: the vision half of a Hugging Face CLIP folder.

Accepts a full `CLIPModel` folder or a `CLIPVisionModel[WithProjection]` one.
The embedding is CLIP's projected image embedding (`projected`, default) or the
pooled output before the projection (`pooled`).
"""

import torch
from torch import nn
from transformers import CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

from pipeline.errors import UserError
from pipeline.model.config import EMBEDDINGS
from pipeline.model.families import image_family
from pipeline.model.folders import check_finite_weights, check_loading_info, read_config, refusing_pickled_code


class ImageEncoder(nn.Module):
    """`vision_model` + optional `visual_projection`, named as in `CLIPModel` so
    checkpoint keys of either CLIP class map onto it unchanged."""

    def __init__(self, vision_model, visual_projection=None, embedding="projected"):
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding {embedding!r} is not one of {EMBEDDINGS}")
        self.vision_model = vision_model
        self.visual_projection = visual_projection
        self.embedding = embedding

    @property
    def dim(self):
        if self.embedding == "projected":
            return self.visual_projection.out_features
        return self.vision_model.config.hidden_size

    def forward(self, pixel_values):
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # (B, H)
        return self.visual_projection(pooled) if self.embedding == "projected" else pooled


def load_image_encoder(folder, embedding="projected"):
    config = read_config(folder, "--clip-model")
    model_type = config.get("model_type")
    image_family(model_type, folder)  # refuses a model_type of no image family (CLIP's only, today)
    if model_type == "clip":
        # Loading CLIPVisionModelWithProjection from a CLIPModel folder re-initialises the
        # projection (transformers 5), so load the whole model and keep its vision half.
        with refusing_pickled_code(folder, "--clip-model"):
            clip, info = CLIPModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
        # Only the vision half is used: text-tower keys may be absent or extra.
        check_loading_info(info, f"--clip-model {folder}", only=("vision_model.", "visual_projection."))
        vision, projection = clip.vision_model, clip.visual_projection
    else:  # clip_vision_model
        with refusing_pickled_code(folder, "--clip-model"):
            vision, projection = _load_vision_only(folder)
    if embedding == "projected" and projection is None:
        raise UserError(
            f"--clip-model {folder}: the folder has no visual_projection weights; "
            "use --clip-embedding pooled, or a CLIPModel / CLIPVisionModelWithProjection folder"
        )
    encoder = ImageEncoder(vision, projection, embedding)
    check_finite_weights(encoder, f"--clip-model {folder}")
    return encoder


def _load_vision_only(folder):
    model, info = CLIPVisionModelWithProjection.from_pretrained(
        folder, trust_remote_code=False, output_loading_info=True,
    )
    if any(key.startswith("visual_projection") for key in info["missing_keys"]):
        plain, info = CLIPVisionModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
        check_loading_info(info, f"--clip-model {folder}")
        # transformers 5's CLIPVisionModel is the vision transformer itself; 4.x wrapped it.
        return getattr(plain, "vision_model", plain), None
    check_loading_info(info, f"--clip-model {folder}")
    return model.vision_model, model.visual_projection


@torch.no_grad()
def merge_lora_into(module, lora_a, lora_b, scaling):
    """W <- W + scaling * B @ A for one nn.Linear, in place."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"LoRA target is {type(module).__name__}, not Linear")
    delta = (lora_b.to(torch.float32) @ lora_a.to(torch.float32)) * scaling  # (out, in)
    module.weight += delta.to(module.weight.dtype)


def check_image_size(folder, size, source):
    """Refuse image settings whose crop size is not the CLIP model's input size (CLIP's position embeddings
    fit one size: any other fails on the first batch). `source` names where `size` came from."""
    config = read_config(folder, "--clip-model")
    vision = config.get("vision_config") if config.get("model_type") == "clip" else config
    expected = vision.get("image_size") if isinstance(vision, dict) else None
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != size:
        raise UserError(f"{source}: crops images to {size}x{size} pixels, but the CLIP model {folder} takes "
                        f"{expected}x{expected} (image_size in its config.json); make the two agree (crop_size "
                        f"{expected} in preprocessor_config.json) or use the CLIP folder they were made for")
