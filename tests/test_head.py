import pytest
import torch

from pipeline.errors import UserError
from pipeline.model.config import FUSIONS, HeadConfig
from pipeline.model.head import FusionHead, load_head, save_head
from tests.helpers import IMAGE_DIM, TEXT_DIM, small_head


def features(rows=5):
    return {"text_emb": torch.randn(rows, TEXT_DIM), "image_emb": torch.randn(rows, IMAGE_DIM)}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_kind_gives_two_logits_and_learns(fusion):
    torch.manual_seed(0)
    head = FusionHead(small_head(fusion=fusion))
    batch = features(8)
    assert head(batch).shape == (8, 2)
    # one row without its image and one without its title: the missing vectors are on the path too
    batch.update(has_text=torch.arange(8) != 1, has_image=torch.arange(8) != 2)
    head(batch).sum().backward()  # every parameter is on the gradient path
    assert all(p.grad is not None for p in head.parameters())


def test_single_modality_head_ignores_the_other_key():
    torch.manual_seed(0)
    head = FusionHead(small_head(modalities="text")).eval()
    batch = features()
    other = dict(batch, image_emb=torch.randn(5, 99))  # any width: it is never read
    assert torch.equal(head(batch), head(other))
    assert "image" not in head.projections


def test_modalities_are_parsed_into_one_order():
    assert HeadConfig(modalities="image,text").modalities == ("text", "image")
    assert HeadConfig(modalities=["image"]).modalities == ("image",)


@pytest.mark.parametrize("overrides, message", [
    ({"fusion": "sum"}, "--fusion 'sum': not a valid choice; use one of: concat, max, mean, gated"),
    ({"modalities": "text,audio"}, "one or both of text, image"),
    ({"modalities": "text,text"}, "without repeats"),
    ({"proj_dim": 0}, "--proj-dim 0: needs to be a whole number of at least 1"),
    ({"dropout": 1.0}, "dropout 1.0"),
])
def test_bad_config_names_the_field_and_the_choices(overrides, message):
    with pytest.raises(UserError, match=message):
        HeadConfig(**overrides)


def test_save_and_load_round_trip_without_flags(tmp_path):
    torch.manual_seed(0)
    head = FusionHead(small_head(fusion="gated")).eval()
    save_head(tmp_path, head, extra_config={"note": "test"})
    loaded = load_head(tmp_path)
    assert loaded.config == head.config and not loaded.training
    batch = features()
    assert torch.equal(head(batch), loaded(batch))


def test_loading_for_features_of_another_width_is_a_clear_error(tmp_path):
    save_head(tmp_path, FusionHead(small_head()))
    with pytest.raises(UserError, match=f"text is 768 wide but .* expects {TEXT_DIM}"):
        load_head(tmp_path, dims={"text": 768, "image": IMAGE_DIM}, dims_source="cache/manifest.json")
    load_head(tmp_path, dims={"text": TEXT_DIM, "image": IMAGE_DIM})  # matching widths load


def test_missing_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="head_config.json: missing"):
        load_head(tmp_path)
    save_head(tmp_path, FusionHead(small_head()))
    other = tmp_path / "other"
    save_head(other, FusionHead(small_head(proj_dim=8)))
    (tmp_path / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="weights do not fit"):
        load_head(tmp_path)
    config_path = tmp_path / "head_config.json"
    config_path.write_text(config_path.read_text().replace('"concat"', '"sum"'))
    with pytest.raises(UserError, match="head_config.json: not a valid head config .*fusion 'sum'"):
        load_head(tmp_path)
