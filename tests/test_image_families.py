"""Every image family through stage one, a head and `predict`; each family's pixels against its own Hugging Face
image processor; LoRA merges where the family has targets and is refused where not; finetune-e2e's export of
each family embeds back to the same vectors; an unchanged CLIP user's cache keeps its fingerprint.

Each family is a tiny random model built from its config, saved with `save_pretrained` beside its own image
processor's `save_pretrained` (transformers 5's PIL backend classes, `*ImageProcessorPil`: torchvision, which
the default classes need, is not installed here). The preprocessors differ as the real ones do: CLIP resizes the
shortest side and crops, SigLIP and ViT resize to a square (ViT bilinear), DINOv2 resizes the shortest side to
more than it crops (256 -> 224 in the real one, 40 -> 32 here).
"""

import copy
import json

import numpy as np
import pandas as pd
import peft
import pytest
import torch
import transformers
from conftest import build_tiny_bert, build_tiny_clip, embed_flags, make_dataset, rgb_noise
from PIL import Image, ImageFilter
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from pipeline.__main__ import main
from pipeline.data.images import ImageSettings, load_image
from pipeline.embed import cache
from pipeline.errors import UserError
from pipeline.model.batch import pixel_values
from pipeline.model.checkpoint import apply_clip_checkpoint
from pipeline.model.families import GENERIC_IMAGE, IMAGE_FAMILIES, image_family
from pipeline.model.image_encoder import load_image_encoder, resolve_embedding
from pipeline.runs.encoders import read_encoders
from tests.helpers import SMALL_FLAGS

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
             patch_size=16)
TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16)


def _siglip():
    return transformers.SiglipModel(transformers.SiglipConfig(text_config=TEXT, vision_config=TOWER)), \
        SiglipImageProcessorPil(size={"height": 32, "width": 32})


def _vit():
    return transformers.ViTModel(transformers.ViTConfig(**TOWER)), ViTImageProcessorPil(size={"height": 32,
                                                                                                "width": 32})


def _dinov2():
    config = transformers.Dinov2Config(**{k: v for k, v in TOWER.items() if k != "intermediate_size"}, mlp_ratio=2)
    return transformers.Dinov2Model(config), BitImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD))


def _resnet():  # a backbone of no family in the table: a CNN whose pooled output is (B, C, 1, 1)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic")
    return transformers.ResNetModel(config), ViTImageProcessorPil(size={"height": 32, "width": 32})


BUILDERS = {"siglip": _siglip, "vit": _vit, "dinov2": _dinov2, "backbone": _resnet}
PROCESSORS = {"clip": CLIPImageProcessorPil, "siglip": SiglipImageProcessorPil, "vit": ViTImageProcessorPil,
              "dinov2": BitImageProcessorPil}
# family -> (what --image-embedding auto resolves to, width of the cached image vector)
EXPECTED = {"clip": ("projected", 24), "siglip": ("pooled", 32), "vit": ("pooled", 32), "dinov2": ("pooled", 32),
            "backbone": ("pooled", 12)}


def build_image_family(folder, family):
    if family == "clip":
        return build_tiny_clip(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, processor = BUILDERS[family]()
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("image-families") / "data",
                        counts=(("train", 12), ("val", 6), ("test", 6)))


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {family: build_image_family(root / family, family) for family in EXPECTED}


def test_the_family_table_finds_each_tower_and_its_lora_targets_exist(towers):
    for family in IMAGE_FAMILIES:
        encoder = load_image_encoder(towers[family.name], "auto")
        assert encoder.family is family and image_family(encoder.vision_model.config.model_type) is family
        modules = {name.rsplit(".", 1)[-1] for name, _ in encoder.vision_model.named_modules()}
        assert set(family.lora_targets) <= modules, family.name
    assert load_image_encoder(towers["backbone"], "auto").family is GENERIC_IMAGE


# (size of a test image) -- tall, wide, square at the model's size (no resampling: the geometry alone), small
IMAGE_SIZES = [(61, 97), (120, 50), (32, 32), (40, 64), (20, 28)]
# torch's uint8 resize vs Pillow's: within 2 of 255 levels, as tests/test_golden_pixels.py measures on photos.
# Measured here on these blurred-noise images: at most 1 level, mean at most 0.25. Pure pixel noise, which no
# photo is, reaches 7 levels in a bicubic square resize (40x64 -> 32x32), hence photo-like images.
LEVELS = 2


@pytest.mark.parametrize("family", list(PROCESSORS))
def test_each_familys_pixels_are_its_own_image_processors(family, towers, tmp_path):
    folder = towers[family]
    processor = PROCESSORS[family].from_pretrained(folder)
    settings = ImageSettings.from_model_folder(folder, draft=False)
    for index, size in enumerate(IMAGE_SIZES):
        rgb_noise(size, seed=index).filter(ImageFilter.GaussianBlur(1)).save(tmp_path / f"{index}.png")
    ours = pixel_values(torch.from_numpy(np.stack([load_image(tmp_path, f"{i}.png", settings)
                                                   for i in range(len(IMAGE_SIZES))])), settings)
    theirs = torch.cat([processor(Image.open(tmp_path / f"{i}.png").convert("RGB"), return_tensors="pt")
                        ["pixel_values"] for i in range(len(IMAGE_SIZES))])
    assert ours.shape == theirs.shape == (len(IMAGE_SIZES), 3, 32, 32)
    difference = (ours - theirs).abs()
    levels = difference * torch.tensor(settings.std).view(1, 3, 1, 1) * 255  # back to 0..255 levels
    assert float(levels.max()) <= LEVELS + 1e-3, family
    assert float(levels.mean()) < 0.5, family  # rare level flips, not a shifted or misplaced image
    exact = [i for i, size in enumerate(IMAGE_SIZES) if _needs_no_resampling(size, settings)]
    assert exact  # each family has a case where only the crop acts: there the pixels are equal
    torch.testing.assert_close(ours[exact], theirs[exact], atol=1e-5, rtol=0)


def _needs_no_resampling(size, settings):
    side = settings.resize_side
    return (size == (side, side)) if settings.resize == "square" else min(size) == side


def test_preprocessing_is_read_per_family(towers):
    got = {family: ImageSettings.from_model_folder(towers[family]) for family in PROCESSORS}
    assert (got["clip"].resize, got["clip"].resize_side, got["clip"].resample) == ("shortest_edge", 32, "bicubic")
    assert (got["siglip"].resize, got["siglip"].resample, got["siglip"].mean) == ("square", "bicubic",
                                                                                  (0.5, 0.5, 0.5))
    assert (got["vit"].resize, got["vit"].resample) == ("square", "bilinear")
    assert (got["dinov2"].resize, got["dinov2"].resize_side, got["dinov2"].size) == ("shortest_edge", 40, 32)
    assert got["dinov2"].mean == pytest.approx(IMAGENET_DEFAULT_MEAN)
    assert got["clip"].record() == {"size": 32, "mean": got["clip"].mean, "std": got["clip"].std,
                                    "max_pixels": got["clip"].max_pixels, "draft": True}  # CLIP's record as before


@pytest.mark.slow  # about 3 s a family
@pytest.mark.parametrize("family", list(EXPECTED))
def test_each_image_family_through_embed_train_head_and_predict(family, towers, text_model, small_data, tmp_path,
                                                                capsys):
    flags = embed_flags(small_data, text_model, towers[family], tmp_path / "cache")
    flags[flags.index("--clip-model")] = "--image-model"  # the new spelling; --clip-model is its alias
    assert main(flags) == 0, capsys.readouterr().err
    manifest = cache.read_manifest(tmp_path / "cache")
    embedding, width = EXPECTED[family]
    assert manifest["inputs"]["image"]["embedding"] == embedding and manifest["dims"]["image"] == width
    assert manifest["config"]["image_family"] == family
    assert main(["train-head", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 *SMALL_FLAGS, "--max-epochs", "2"]) == 0
    assert read_encoders(tmp_path / "run")["image_family"] == family  # the run names its image tower's family
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(tmp_path / "run"), "--input", str(small_data / "test.tsv"), "--out",
                 str(out), "--image-root", str(small_data), "--device", "cpu", "--num-workers", "0"]) == 0
    got = pd.read_csv(out, dtype={"id": str})
    expected = pd.read_csv(tmp_path / "run" / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(expected["id"]) and (got["status"] == "ok").all()
    np.testing.assert_allclose(got["prob_real"], expected["prob_real"], atol=1e-5)


def test_the_vectors_are_each_towers_own(towers):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        siglip = transformers.SiglipModel.from_pretrained(towers["siglip"]).eval()
        torch.testing.assert_close(load_image_encoder(towers["siglip"], "auto").eval()(pixels),
                                   siglip.get_image_features(pixel_values=pixels).pooler_output, atol=1e-5, rtol=0)
        dinov2 = transformers.Dinov2Model.from_pretrained(towers["dinov2"]).eval()
        torch.testing.assert_close(load_image_encoder(towers["dinov2"], "auto").eval()(pixels),
                                   dinov2(pixel_values=pixels).last_hidden_state[:, 0], atol=1e-5, rtol=0)
        resnet = transformers.ResNetModel.from_pretrained(towers["backbone"]).eval()
        torch.testing.assert_close(load_image_encoder(towers["backbone"], "auto").eval()(pixels),
                                   resnet(pixel_values=pixels).pooler_output.flatten(1), atol=1e-5, rtol=0)


def test_a_vit_classifier_folder_embeds_its_cls_token(tmp_path):
    folder = tmp_path / "vit-classifier"
    torch.manual_seed(0)
    classifier = transformers.ViTForImageClassification(transformers.ViTConfig(**TOWER, num_labels=2)).eval()
    classifier.save_pretrained(folder)  # no pooler weights; a classifier head rides along
    assert resolve_embedding(folder) == ("cls", "a vit folder without pooler weights")
    with pytest.raises(UserError, match="missing"):  # its pooler would be random
        load_image_encoder(folder, "pooled")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(load_image_encoder(folder, "auto").eval()(pixels),
                                   classifier.vit(pixel_values=pixels).last_hidden_state[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("family", "embedding"), [("siglip", "projected"), ("dinov2", "cls"), ("clip", "cls")])
def test_an_impossible_embedding_is_a_clear_error_listing_the_valid_ones(family, embedding, towers, text_model,
                                                                         small_data, tmp_path, capsys):
    flags = embed_flags(small_data, text_model, towers[family], tmp_path / "cache") + ["--image-embedding", embedding]
    assert main(flags) == 2
    err = capsys.readouterr().err
    valid = ", ".join(image_family(json.loads((towers[family] / "config.json").read_text())["model_type"]).embeddings)
    assert f"--image-embedding {embedding}: the image model {towers[family]} is a {family} model" in err
    assert f"use one of: auto, {valid}" in err and "Traceback" not in err


def _trained_adapter(tower_model, targets, folder):
    """A PEFT adapter with non-zero weights (PEFT starts B at zero), saved; returns the merged model."""
    model = peft.get_peft_model(tower_model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    model.save_pretrained(folder)
    return copy.deepcopy(model).merge_and_unload().eval()


@pytest.mark.parametrize("family", ["siglip", "vit", "dinov2"])
def test_a_lora_adapter_of_each_family_merges_to_peft_s_own_merge(family, towers, tmp_path):
    encoder = load_image_encoder(towers[family], "auto").eval()
    merged = _trained_adapter(copy.deepcopy(encoder.vision_model), encoder.family.lora_targets, tmp_path / "lora")
    summary = apply_clip_checkpoint(encoder, tmp_path / "lora")
    assert summary["lora_modules"] == 2 * len(encoder.family.lora_targets)  # every target of both layers
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = merged(pixel_values=pixels).pooler_output
        torch.testing.assert_close(encoder(pixels), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(load_image_encoder(towers[family], "auto").eval()(pixels), expected, atol=1e-3)


def test_a_lora_checkpoint_for_a_backbone_without_targets_is_refused_and_full_weights_load(towers, tmp_path):
    encoder = load_image_encoder(towers["backbone"], "auto").eval()
    _trained_adapter(copy.deepcopy(encoder.vision_model), ["convolution"], tmp_path / "lora")
    with pytest.raises(UserError, match="a backbone model, into which this tool merges no LoRA"):
        apply_clip_checkpoint(encoder, tmp_path / "lora", lora_alpha=8)
    torch.manual_seed(9)
    changed = {key: torch.randn_like(value) if value.is_floating_point() else value
               for key, value in encoder.vision_model.state_dict().items()}
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in changed.items()}, tmp_path / "full.safetensors")
    apply_clip_checkpoint(encoder, tmp_path / "full.safetensors")
    assert all(torch.equal(encoder.vision_model.state_dict()[key], value) for key, value in changed.items())


def test_an_unchanged_clip_users_cache_keeps_its_fingerprint(towers, text_model, small_data, tmp_path, capsys):
    """The image part of the fingerprint holds exactly the keys it held before families, and the old flags and
    the new ones (with the embedding `auto` resolves to) find the same cache up to date."""
    flags = embed_flags(small_data, text_model, towers["clip"], tmp_path / "cache") + ["--splits", "val"]
    assert main(flags) == 0
    inputs = cache.read_manifest(tmp_path / "cache")["inputs"]
    assert sorted(inputs["image"]) == ["draft", "embedding", "max_pixels", "mean", "size", "std"]
    assert inputs["image"]["embedding"] == "projected"  # what --clip-embedding's old default gave
    capsys.readouterr()
    renamed = [("--image-model" if word == "--clip-model" else word) for word in flags]
    assert main(renamed + ["--image-embedding", "projected"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert main(flags + ["--clip-embedding", "projected"]) == 0
    assert "is up to date" in capsys.readouterr().out


@pytest.mark.slow  # about 5 s a family
@pytest.mark.parametrize("family", list(PROCESSORS))
def test_finetune_e2e_exports_each_image_family_and_embeds_it_back(family, towers, text_model, small_data, tmp_path):
    from pipeline.data.splits import read_split

    run = tmp_path / "run"
    assert main(["finetune-e2e", "--data-dir", str(small_data), "--text-model", str(text_model), "--image-model",
                 str(towers[family]), "--num-workers", "0", "--device", "cpu", "--out", str(run),
                 "--train-text", "frozen", "--train-image", "lora", "--batch-size", "6", "--max-epochs", "1",
                 "--lr-encoder", "1e-2", "--seed", "3"]) == 0
    recorded = json.loads((run / "config.json").read_text())["finetune"]["lora_targets"]
    assert recorded == list(image_family_by_folder(towers[family]).lora_targets)
    exported = run / "export" / "clip_model"
    assert image_family_by_folder(exported).name == family  # the export is a folder of the same family
    assert main(["embed", "--data-dir", str(small_data), "--text-model", str(run / "export" / "text_model"),
                 "--image-model", str(exported), "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0",
                 "--device", "cpu", "--splits", "val"]) == 0
    via_lora = tmp_path / "lora-cache"
    assert main(["embed", "--data-dir", str(small_data), "--text-model", str(run / "export" / "text_model"),
                 "--image-model", str(towers[family]), "--image-lora", str(run / "export" / "clip_lora"),
                 "--cache-dir", str(via_lora), "--num-workers", "0", "--device", "cpu", "--splits", "val"]) == 0
    merged, adapter = cache.load_split(tmp_path / "cache", "val"), cache.load_split(via_lora, "val")
    assert len(merged.ids) == len(read_split(small_data, "val"))
    np.testing.assert_allclose(merged.image_emb, adapter.image_emb, atol=1e-5)  # export = base + its adapter
    base = tmp_path / "base-cache"
    assert main(["embed", "--data-dir", str(small_data), "--text-model", str(run / "export" / "text_model"),
                 "--image-model", str(towers[family]), "--cache-dir", str(base), "--num-workers", "0",
                 "--device", "cpu", "--splits", "val"]) == 0
    assert not np.allclose(cache.load_split(base, "val").image_emb, merged.image_emb, atol=1e-4)  # LoRA trained


def image_family_by_folder(folder):
    return image_family(json.loads((folder / "config.json").read_text())["model_type"])


HOSTILE_PREPROCESSORS = {  # what the processor would do and this pipeline cannot: refused, never approximated
    "resample_lanczos": ({"resample": 1}, "resample 1 is not one this pipeline resizes with"),
    "no_resize": ({"do_resize": False}, "do_resize is false"),
    "size_below_crop": ({"size": {"shortest_edge": 16}}, "is smaller than the crop"),
    "size_not_square": ({"size": {"height": 32, "width": 40}, "crop_size": None}, "is not square"),
    "other_rescale": ({"rescale_factor": 0.5}, "does not rescale pixels by 1/255"),
    "crop_pct_text": ({"crop_pct": "most"}, "crop_pct 'most' is not a fraction"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PREPROCESSORS))
def test_a_preprocessor_this_pipeline_cannot_follow_is_one_error_naming_the_key(case, towers, text_model, small_data,
                                                                                 tmp_path, capsys):
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(towers["clip"], folder)
    path = folder / "preprocessor_config.json"
    change, message = HOSTILE_PREPROCESSORS[case]
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    assert main(embed_flags(small_data, text_model, folder, tmp_path / "cache")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and "Traceback" not in err
