"""Every text family through stage one, a head and `predict`; CLIP's and SigLIP's own text towers equal
their `get_text_features`; fine-tuned classifiers of families without a BERT pooler embed with `--pooling auto`;
impossible poolings are clear errors; the fingerprint of a BERT cache is what it was before families.

Each family is a tiny random model built from its config and saved with `save_pretrained` beside the tiny
WordPiece tokenizer of conftest (a tokenizer of any kind feeds any family; CLIP's config names [CLS] and
[SEP] as its BOS and EOS, so it pools at the real end of each title).
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from conftest import WORDS, build_tiny_clip, embed_flags, make_dataset, tiny_clip_config
from transformers import BertTokenizerFast

from pipeline.__main__ import main
from pipeline.embed import cache
from pipeline.model.batch import tokenize_titles
from pipeline.model.families import GENERIC_TEXT, TEXT_FAMILIES, text_family
from pipeline.model.text_encoder import TextEncoder, load_text_model, load_tokenizer, resolve_pooling
from pipeline.runs.encoders import read_encoders
from tests.helpers import SMALL_FLAGS

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz")
SMALL_TEXT_TOWER = dict(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=0)
TITLES = ["the cat", "a photo of the city council news you won't believe"]  # different lengths: padding matters


def _config(name, **settings):
    return getattr(transformers, name)(vocab_size=len(VOCAB), **settings)


def _clip():
    config = tiny_clip_config()
    config.text_config = transformers.CLIPTextConfig(**SMALL_TEXT_TOWER, max_position_embeddings=128)
    return transformers.CLIPModel(config)


def _siglip():
    return transformers.SiglipModel(transformers.SiglipConfig(
        text_config=dict(**SMALL_TEXT_TOWER, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16)))


# family -> (model built from a config, extra embed flags)
MODELS = {
    "bert": (lambda: transformers.BertModel(_config("BertConfig", **SMALL)), []),
    # RoBERTa's positions start after its padding id: room for 128 tokens plus that offset.
    "roberta": (lambda: transformers.RobertaModel(_config("RobertaConfig", **SMALL, pad_token_id=0,
                                                          max_position_embeddings=130)), []),
    "xlm-roberta": (lambda: transformers.XLMRobertaModel(_config("XLMRobertaConfig", **SMALL, pad_token_id=0,
                                                                 max_position_embeddings=130)), []),
    "distilbert": (lambda: transformers.DistilBertModel(_config("DistilBertConfig", dim=32, n_layers=2, n_heads=2,
                                                                hidden_dim=64)), []),
    "deberta-v2": (lambda: transformers.DebertaV2Model(_config("DebertaV2Config", **SMALL)), []),
    "electra": (lambda: transformers.ElectraModel(_config("ElectraConfig", **SMALL, embedding_size=16)), []),
    "clip": (_clip, []),
    "siglip": (_siglip, ["--max-length", "16"]),
}


def save_tokenizer(folder):
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)


def build_family(folder, family):
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    MODELS[family][0]().save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def build_sentence_transformers(folder):
    """A BERT folder with sentence-transformers' modules.json saying mean pooling."""
    build_family(folder, "bert")
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Transformer"},
                                                     {"idx": 1, "path": "1_Pooling", "type": "x.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("families") / "data",
                        counts=(("train", 12), ("val", 6), ("test", 6)))


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip-image"))


# (case, family, pooling `auto` must resolve to, width of the cached text vector)
CASES = [("bert", "bert", "cls", 32), ("roberta", "roberta", "cls", 32), ("xlm-roberta", "xlm-roberta", "cls", 32),
         ("distilbert", "distilbert", "cls", 32), ("deberta-v2", "deberta-v2", "cls", 32),
         ("electra", "electra", "cls", 32), ("sentence-transformers", "bert", "mean", 32),
         ("clip", "clip", "projected", 24), ("siglip", "siglip", "pooler", 16)]


@pytest.mark.slow  # about 5 s a family
@pytest.mark.parametrize(("case", "family", "pooling", "width"), CASES, ids=[c[0] for c in CASES])
def test_each_family_through_embed_train_head_and_predict(case, family, pooling, width, small_data, image_model,
                                                          tmp_path, capsys):
    folder = tmp_path / case
    build_sentence_transformers(folder) if case == "sentence-transformers" else build_family(folder, family)
    # CLIP's own folder serves as both towers; the others pair with the tiny CLIP image tower.
    images = folder if case == "clip" else image_model
    if case == "clip":
        shutil.copy(image_model / "preprocessor_config.json", folder)
    extra = MODELS[family][1]
    assert main(embed_flags(small_data, folder, images, tmp_path / "cache") + extra) == 0, capsys.readouterr().err
    manifest = cache.read_manifest(tmp_path / "cache")
    assert manifest["config"]["pooling"]["resolved"] == pooling
    assert manifest["config"]["text_family"] == family
    assert manifest["dims"]["text"] == width
    assert main(["train-head", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 *SMALL_FLAGS, "--max-epochs", "2"]) == 0
    assert read_encoders(tmp_path / "run")["text_family"] == family  # the run names its text tower's family
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(tmp_path / "run"), "--input", str(small_data / "test.tsv"), "--out",
                 str(out), "--image-root", str(small_data), "--device", "cpu", "--num-workers", "0"]) == 0
    got = pd.read_csv(out, dtype={"id": str})
    expected = pd.read_csv(tmp_path / "run" / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(expected["id"]) and (got["status"] == "ok").all()
    np.testing.assert_allclose(got["prob_real"], expected["prob_real"], atol=1e-5)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_the_text_tower_of_a_two_tower_model_equals_its_get_text_features(family, tmp_path):
    folder = build_family(tmp_path / family, family)
    pooling, _ = resolve_pooling(folder)
    encoder = TextEncoder(load_text_model(folder, pooling), pooling).eval()
    tokenizer = load_tokenizer(folder)
    batch = tokenize_titles(tokenizer, TITLES, 16)
    whole = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        got = encoder(**batch)  # token_type_ids included: the tower must leave them out
        expected = whole.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert "token_type_ids" in batch and "token_type_ids" not in encoder.input_names
    if family == "siglip":  # SigLIP pools the last position: titles padded to --max-length as it was trained
        assert batch["input_ids"].shape[1] == 16
    torch.testing.assert_close(got, expected.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["deberta-v2", "distilbert"])
def test_a_fine_tuned_classifier_of_a_family_without_bert_pooler_embeds_with_auto(family, small_data, image_model,
                                                                                 tmp_path):
    classes = {"deberta-v2": "DebertaV2ForSequenceClassification",
               "distilbert": "DistilBertForSequenceClassification"}
    folder = tmp_path / family
    build_family(folder, family)
    torch.manual_seed(5)
    classifier = getattr(transformers, classes[family])(transformers.AutoConfig.from_pretrained(folder)).eval()
    classifier.save_pretrained(folder)  # its task head (and DeBERTa's ContextPooler) ride along
    assert json.loads((folder / "config.json").read_text())["architectures"] == [classes[family]]
    assert main(embed_flags(small_data, folder, image_model, tmp_path / "cache") + ["--splits", "val"]) == 0
    assert cache.read_manifest(tmp_path / "cache")["config"]["pooling"]["resolved"] == "cls"
    val = cache.load_split(tmp_path / "cache", "val")
    title = pd.read_csv(small_data / "val.tsv", sep="\t", dtype={"id": str}).set_index("id").loc[val.ids[0]]
    batch = tokenize_titles(load_tokenizer(folder), [title["clean_title"]], 128)
    with torch.no_grad():  # the classifier's own encoder, by hand: its first token's state
        hidden = getattr(classifier, classifier.base_model_prefix)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    np.testing.assert_allclose(val.text_emb[0], hidden[0, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize(("family", "pooling"), [("distilbert", "pooler"), ("clip", "cls"), ("bert", "projected"),
                                                 ("deberta-v2", "pooler")])
def test_an_impossible_pooling_is_a_clear_error_listing_the_valid_ones(family, pooling, small_data, image_model,
                                                                       tmp_path, capsys):
    folder = build_family(tmp_path / family, family)
    assert main(embed_flags(small_data, folder, image_model, tmp_path / "cache") + ["--pooling", pooling]) == 2
    err = capsys.readouterr().err
    valid = ", ".join(text_family(json.loads((folder / "config.json").read_text())["model_type"]).poolings)
    assert f"error: --pooling {pooling}: the text model {folder} is a {family} model" in err
    assert f"use one of: auto, {valid}" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # refused before the cache folder is made


def test_the_family_table_agrees_with_peft_and_with_each_models_forward():
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    for family in TEXT_FAMILIES:
        for model_type in family.model_types:
            if model_type in peft_defaults:
                assert family.lora_targets == tuple(peft_defaults[model_type]), model_type
    for name, (build, _) in MODELS.items():
        model = build()
        family = text_family(model.config.model_type)
        assert family.name == name and family is not GENERIC_TEXT
        encoder = TextEncoder(model, family.auto)
        assert encoder.input_names == family.inputs, name  # every input the table names, the forward takes
        modules = {module_name.rsplit(".", 1)[-1] for module_name, _ in model.named_modules()}
        assert set(family.lora_targets) <= modules, name  # the LoRA targets exist in the model


def test_the_fingerprint_of_a_bert_cache_is_unchanged_and_a_clip_text_tower_is_named(small_data, image_model,
                                                                                     tmp_path):
    from pipeline.data.images import ImageSettings
    from pipeline.data.splits import read_split
    from pipeline.embed.config import EmbedConfig
    from pipeline.embed.run import fingerprint_inputs

    def inputs(text_model, pooling):
        config = EmbedConfig(data_dir=str(small_data), text_model=str(text_model), clip_model=str(image_model),
                             cache_dir=str(tmp_path / "cache"), pooling=pooling)
        splits = {name: read_split(small_data, name, config.image_pattern) for name in config.splits}
        return fingerprint_inputs(config, splits, ImageSettings.from_model_folder(image_model))

    bert = inputs(build_family(tmp_path / "bert", "bert"), "cls")
    # The components and text settings a cache written before families existed was fingerprinted with.
    assert sorted(bert) == ["cache_dtype", "clip_lora", "clip_model", "format_version", "half_posts", "image",
                            "image_pattern", "image_root", "lora_alpha", "part_rows", "placeholders", "splits",
                            "text", "text_model"]
    assert bert["text"] == {"pooling": "cls", "max_length": 128}
    assert inputs(build_family(tmp_path / "clip", "clip"), "projected")["text"] == {
        "pooling": "projected", "max_length": 128, "family": "clip"}


@pytest.mark.slow  # about 10 s a family
@pytest.mark.parametrize("family", ["distilbert", "clip"])
def test_finetune_e2e_with_text_lora_takes_the_familys_targets_and_predict_follows(family, small_data, image_model,
                                                                                  tmp_path):
    from safetensors.torch import load_file

    folder = build_family(tmp_path / family, family)
    shutil.copy(image_model / "preprocessor_config.json", folder)
    images = folder if family == "clip" else image_model
    run = tmp_path / "run"
    assert main(["finetune-e2e", "--data-dir", str(small_data), "--text-model", str(folder), "--clip-model",
                 str(images), "--num-workers", "0", "--device", "cpu", "--out", str(run), "--train-text", "lora",
                 "--train-image", "frozen", "--batch-size", "6", "--max-epochs", "2", "--lr-encoder", "1e-2",
                 "--seed", "3"]) == 0
    checkpoint = sorted((run / "checkpoints").glob("checkpoint-*/model.safetensors"))[-1]
    lora = [key for key in load_file(checkpoint) if "lora_A" in key]
    targets = text_family(json.loads((folder / "config.json").read_text())["model_type"]).lora_targets
    assert lora and {key.split(".lora_A")[0].rsplit(".", 1)[-1] for key in lora} == set(targets)
    assert json.loads((run / "config.json").read_text())["finetune"]["text_lora_targets"] == list(targets)
    exported = json.loads((run / "export" / "text_model" / "config.json").read_text())
    assert text_family(exported["model_type"]).name == family  # the export is a folder of the same family
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "--input", str(small_data / "test.tsv"), "--out", str(out),
                 "--image-root", str(small_data), "--device", "cpu", "--num-workers", "0"]) == 0
    got = pd.read_csv(out, dtype={"id": str})
    expected = pd.read_csv(run / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(expected["id"])
    np.testing.assert_allclose(got["prob_real"], expected["prob_real"], atol=1e-5)


def test_a_folder_of_no_image_family_as_the_image_model_is_refused_naming_the_families(small_data, tmp_path,
                                                                                       capsys):
    bert = build_family(tmp_path / "bert", "bert")
    assert main(embed_flags(small_data, bert, bert, tmp_path / "cache")) == 2
    err = capsys.readouterr().err
    assert f"--clip-model {bert}: model_type 'bert' is not of an image family" in err
    assert "clip: CLIPModel, CLIPVisionModel or CLIPVisionModelWithProjection" in err and "Traceback" not in err


def test_lora_targets_of_a_model_type_outside_the_table_come_from_peft_or_the_flag():
    from pipeline.errors import UserError
    from pipeline.model.families import family_lora_targets

    assert family_lora_targets(GENERIC_TEXT, "layoutlm") == ("query", "value")  # in PEFT's table, not ours
    assert family_lora_targets(GENERIC_TEXT, "mpnet", given=("q", "v")) == ("q", "v")
    with pytest.raises(UserError, match="model_type 'mpnet'; pass --text-lora-targets"):
        family_lora_targets(GENERIC_TEXT, "mpnet")


def test_a_clip_text_tower_saved_without_its_projection_pools_at_eos_and_refuses_projected(tmp_path):
    from pipeline.errors import UserError

    folder = tmp_path / "clip-text"
    torch.manual_seed(0)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**SMALL_TEXT_TOWER)).save_pretrained(folder)
    save_tokenizer(folder)
    assert resolve_pooling(folder) == ("pooler", "a clip text tower saved without its projection")
    with pytest.raises(UserError, match="has no text_projection weights; use --pooling auto or one of: pooler"):
        load_text_model(folder, "projected")
    encoder = TextEncoder(load_text_model(folder, "pooler"), "pooler").eval()
    batch = tokenize_titles(load_tokenizer(folder), TITLES, 16)
    with torch.no_grad():
        expected = transformers.CLIPTextModel.from_pretrained(folder).eval()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        torch.testing.assert_close(encoder(**batch), expected, atol=1e-5, rtol=0)
    assert encoder.dim == SMALL_TEXT_TOWER["hidden_size"]
