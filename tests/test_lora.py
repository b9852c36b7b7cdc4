"""Every CLIP checkpoint layout users have gives the embeddings of a reference model with the LoRA merged by PEFT."""

import pickle

import peft
import pytest
import torch
from conftest import build_tiny_clip, tiny_clip_config
from safetensors.torch import save_file
from transformers import CLIPModel

from pipeline.errors import UserError
from pipeline.model.checkpoint import apply_clip_checkpoint
from pipeline.model.image_encoder import load_image_encoder

RANK, ALPHA = 4, 8


def image_features(clip, pixels):
    return clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained_lora(tiny_clip):
    """A PEFT model on the tiny CLIP with non-zero LoRA weights (PEFT starts B at zero)."""
    base = CLIPModel.from_pretrained(tiny_clip)
    model = peft.get_peft_model(base, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def reference(trained_lora, pixels):
    import copy

    merged = copy.deepcopy(trained_lora).merge_and_unload()
    with torch.no_grad():
        return image_features(merged.eval(), pixels)


def lora_keys(state):
    return {k: v for k, v in state.items() if "lora_" in k}


def embed_with(tiny_clip, checkpoint, pixels, lora_alpha=None):
    encoder = load_image_encoder(tiny_clip).eval()
    apply_clip_checkpoint(encoder, checkpoint, lora_alpha)
    with torch.no_grad():
        return encoder(pixels)


def test_peft_adapter_folder(tiny_clip, trained_lora, reference, pixels, tmp_path):
    trained_lora.save_pretrained(tmp_path / "adapter")
    assert torch.allclose(embed_with(tiny_clip, tmp_path / "adapter", pixels), reference, atol=1e-5)


def test_nested_pt_with_config_and_base_layers(tiny_clip, trained_lora, reference, pixels, tmp_path):
    # What a notebook saves: the whole PEFT state dict (base_layer + lora_A.default) beside optimizer state.
    path = tmp_path / "clip_lora_best.pt"
    torch.save({"model_state_dict": trained_lora.state_dict(), "optimizer_state_dict": {"step": 3},
                "config": {"lora_r": RANK, "lora_alpha": ALPHA}, "epoch": 2}, path)
    assert torch.allclose(embed_with(tiny_clip, path, pixels), reference, atol=1e-5)


def test_plain_lora_keys_need_alpha(tiny_clip, trained_lora, reference, pixels, tmp_path):
    path = tmp_path / "lora.pth"
    torch.save(peft.get_peft_model_state_dict(trained_lora), path)
    with pytest.raises(UserError, match="--lora-alpha"):
        embed_with(tiny_clip, path, pixels)
    assert torch.allclose(embed_with(tiny_clip, path, pixels, lora_alpha=ALPHA), reference, atol=1e-5)


def test_safetensors_with_module_prefix_and_alpha_metadata(tiny_clip, trained_lora, reference, pixels, tmp_path):
    state = {"module." + k: v.contiguous() for k, v in lora_keys(trained_lora.state_dict()).items()}
    save_file(state, tmp_path / "lora.safetensors", metadata={"lora_alpha": str(ALPHA)})
    assert torch.allclose(embed_with(tiny_clip, tmp_path / "lora.safetensors", pixels), reference, atol=1e-5)


def test_lora_on_vision_tower_alone_under_bin(tiny_clip, pixels, tmp_path):
    base = CLIPModel.from_pretrained(tiny_clip)
    vision = peft.get_peft_model(base.vision_model, peft.LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj"]))
    with torch.no_grad():
        for name, param in vision.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": lora_keys(vision.state_dict()), "lora_alpha": 6}, path)
    merged = vision.merge_and_unload()
    base.vision_model = merged
    with torch.no_grad():
        expected = image_features(base.eval(), pixels)
    assert torch.allclose(embed_with(tiny_clip, path, pixels), expected, atol=1e-5)


def test_full_fine_tuned_weights_with_prefix(tiny_clip, pixels, tmp_path):
    torch.manual_seed(9)
    other = CLIPModel(tiny_clip_config())
    path = tmp_path / "full.pt"
    torch.save({"model": {"clip." + k: v for k, v in other.state_dict().items()}}, path)
    with torch.no_grad():
        expected = image_features(other.eval(), pixels)
    assert torch.allclose(embed_with(tiny_clip, path, pixels), expected, atol=1e-5)


def test_mismatched_checkpoint_names_keys(tiny_clip, pixels, tmp_path):
    bigger = CLIPModel(tiny_clip_config(image_size=64))  # other position-embedding shape
    path = tmp_path / "other.pt"
    torch.save(bigger.state_dict(), path)
    with pytest.raises(UserError, match="wrong shape.*position_embedding"):
        embed_with(tiny_clip, path, pixels)
    torch.save({"encoder.totally.unknown.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match="unknown"):
        embed_with(tiny_clip, path, pixels)


def test_partial_full_weights_are_refused(tiny_clip, pixels, tmp_path):
    state = CLIPModel.from_pretrained(tiny_clip).state_dict()
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if "layers.1" not in k}, path)
    with pytest.raises(UserError, match="missing"):
        embed_with(tiny_clip, path, pixels)


class RunsCode:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickle_that_runs_code_is_refused(tiny_clip, pixels, tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": RunsCode()}, handle)
    with pytest.raises(UserError, match="refused"):
        embed_with(tiny_clip, path, pixels)


def test_other_clip_folder_kinds(tmp_path, pixels):
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    folder = build_tiny_clip(tmp_path / "clip")
    full = CLIPModel.from_pretrained(folder).eval()
    with_projection = CLIPVisionModelWithProjection(full.config.vision_config)
    with_projection.vision_model.load_state_dict(full.vision_model.state_dict())
    with_projection.visual_projection = full.visual_projection
    with_projection.config.projection_dim = full.config.projection_dim
    with_projection.save_pretrained(tmp_path / "vision_proj")
    with torch.no_grad():
        expected = image_features(full, pixels)
        got = load_image_encoder(tmp_path / "vision_proj").eval()(pixels)
    assert torch.allclose(got, expected, atol=1e-5)
    CLIPVisionModel(full.config.vision_config).save_pretrained(tmp_path / "vision_only")
    with pytest.raises(UserError, match="pooled"):
        load_image_encoder(tmp_path / "vision_only")
    assert load_image_encoder(tmp_path / "vision_only", "pooled").dim == 32
