"""Export a fine-tuned model in the forms stage one (`make embed`) takes as they are.

    export/text_model/   Hugging Face folder (AutoModel + tokenizer); LoRA merged in
    export/clip_lora/    PEFT adapter folder for --clip-lora (when the image encoder trained LoRA)
    export/clip_lora.pt  the same adapter as one file, its rank/alpha config inside
    export/clip_model/   the whole fine-tuned image tower, merged: for CLIP a CLIPVisionModelWithProjection
                         folder (vision + projection), for any other family its own tower class (SiglipVisionModel,
                         ViTModel, Dinov2Model, ...); the name is kept so runs and scripts of before still read it
    export/head/         the fusion head (stage two's format)
    export/embed.sh      stage one on the run's data with them: sh embed.sh CACHE_DIR (from any folder)
"""

import copy
import shlex
import shutil
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from pipeline.files import write_text_atomic
from pipeline.model.head import save_head


def export_model(model, tokenizer, out, data, class_names=None):
    """Write the exports of a fine-tuned `model` into `out`; `data` is the run's EmbedConfig, `class_names` the
    names of its label column's classes (kept in head/head_config.json and embed.sh)."""
    out = Path(out)
    clip_model_folder, lora_was_given = data.clip_model, bool(data.clip_lora)
    out.mkdir(parents=True, exist_ok=True)
    _export_text(model.text_encoder.model, tokenizer, out / "text_model")
    vision = model.image_encoder.vision_model
    if isinstance(vision, PeftModel):
        vision.save_pretrained(out / "clip_lora")
        config = vision.peft_config["default"]
        torch.save({
            "state_dict": {k: v.detach().cpu() for k, v in get_peft_model_state_dict(vision).items()},
            "config": {"lora_r": config.r, "lora_alpha": config.lora_alpha,
                       "target_modules": sorted(config.target_modules)},
        }, out / "clip_lora.pt")
    _export_image_tower(model.image_encoder, out / "clip_model")
    preprocessor = Path(clip_model_folder) / "preprocessor_config.json"
    if preprocessor.is_file():  # stage one reads image size, mean and std from it
        shutil.copy(preprocessor, out / "clip_model" / preprocessor.name)
    names = list(class_names) if class_names else None
    save_head(out / "head", model.head,
              extra_config={"label_column": data.label_column, "class_names": names} if names else None)
    _write_embed_line(out, data, isinstance(vision, PeftModel) and not lora_was_given, model.text_encoder.pooling,
                      names)
    return out


def _export_text(text_model, tokenizer, folder):
    if isinstance(text_model, PeftModel):
        text_model = copy.deepcopy(text_model).merge_and_unload()
    text_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _export_image_tower(image_encoder, folder):
    """A folder `load_image_encoder` reads back as the same tower: CLIP's with its projection beside it, any
    other family's tower as the class it already is (it holds everything the embedding uses)."""
    vision = image_encoder.vision_model
    if isinstance(vision, PeftModel):
        vision = copy.deepcopy(vision).merge_and_unload()
    if image_encoder.family.projection is None:
        vision.save_pretrained(folder)
        return
    vision_config = CLIPVisionConfig(**vision.config.to_dict())
    projection = image_encoder.visual_projection
    vision_config.projection_dim = projection.out_features if projection is not None else vision_config.hidden_size
    clip = CLIPVisionModelWithProjection(vision_config)
    clip.vision_model.load_state_dict(vision.state_dict())
    if projection is not None:
        clip.visual_projection.load_state_dict(projection.state_dict())
    clip.save_pretrained(folder)


def _write_embed_line(out, data, adapter_fits_base, pooling, class_names=None):
    """export/embed.sh: stage one on the run's own data with the exported encoders, from any folder.

    Every path is absolute and every data setting the run used is spelled out, so the cache holds the
    rows the run was trained on, wherever the script is run from (`sh embed.sh CACHE_DIR [flags]`)."""
    out = Path(out).resolve()
    if adapter_fits_base:
        clip = ["--clip-model", Path(data.clip_model).resolve(), "--clip-lora", out / "clip_lora"]
    else:
        clip = ["--clip-model", out / "clip_model"]  # the base already held another checkpoint: use the merge
    flags = ["--data-dir", Path(data.data_dir).resolve(), "--image-root", Path(data.resolved_image_root).resolve(),
             "--image-pattern", data.image_pattern, "--text-model", out / "text_model", *clip,
             # A plain save_pretrained text folder: `--pooling auto` could not tell what it was trained with.
             "--pooling", pooling, "--max-length", data.max_length, "--clip-embedding", data.clip_embedding,
             "--on-bad-image", data.on_bad_image, "--on-empty-title", data.on_empty_title,
             "--max-pixels", data.max_pixels, "--label-column", data.label_column]
    if class_names:  # the cache then names the classes as the run did
        flags += ["--class-names", ",".join(class_names)]
    line = " ".join(shlex.quote(str(value)) for value in flags)
    write_text_atomic(out / "embed.sh", EMBED_SCRIPT.format(flags=line))


EMBED_SCRIPT = """#!/bin/sh
# Re-embed this run's data with the encoders it exported: sh embed.sh CACHE_DIR [more embed flags]
# (PYTHON=... picks the interpreter that has this package installed; default python3)
set -e
if [ "$#" -lt 1 ]; then
    echo "usage: sh $0 CACHE_DIR [more flags for python -m pipeline embed]" >&2
    exit 2
fi
cache_dir="$1"
shift
exec "${{PYTHON:-python3}}" -m pipeline embed {flags} --cache-dir "$cache_dir" "$@"
"""
