"""The text-image similarity feature (issue 22 item 4): one tiny random CLIP folder as both towers.

The cached similarity equals CLIPModel's own cosine of get_text_features / get_image_features; on a set whose
labels are the similarity above its median, `train-head --features similarity` learns them; a cache without
the column refuses the flag; predict on a similarity run gives its predictions_test.csv; every other cache
keeps its fingerprint and loads as before.
"""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from conftest import WORDS, embed_flags, rgb_noise, write_split
from test_text_families import build_family

from pipeline.__main__ import main
from pipeline.data.images import ImageSettings, load_image
from pipeline.embed import cache
from pipeline.model.batch import pixel_values, tokenize_titles
from pipeline.model.text_encoder import load_tokenizer
from tests.helpers import SMALL_FLAGS

COUNTS = (("train", 240), ("val", 80), ("test", 80))
PREPROCESSOR = {"crop_size": {"height": 32, "width": 32}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "CLIPImageProcessor",
                "size": {"shortest_edge": 32}}


def clip_folder(folder):
    """A tiny random CLIPModel with the conftest tokenizer: both towers in one folder."""
    build_family(folder, "clip")
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


def clip_similarity(folder, titles, image_root, paths, max_length=128):
    """The whole model's own (CLIPModel's, SiglipModel's) cosine of get_text_features and get_image_features,
    on the tokens and pixels stage one feeds it."""
    whole = transformers.AutoModel.from_pretrained(folder).eval()
    settings = ImageSettings.from_model_folder(folder)
    batch = tokenize_titles(load_tokenizer(folder), titles, max_length)
    pixels = torch.from_numpy(np.stack([load_image(image_root, path, settings) for path in paths]))
    with torch.no_grad():
        text = whole.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image = whole.get_image_features(pixel_values=pixel_values(pixels, settings))
    text, image = (getattr(v, "pooler_output", v) for v in (text, image))  # transformers 5 returns an output
    return torch.nn.functional.cosine_similarity(text, image, dim=1).numpy()


def write_posts(folder, seed=0):
    """{split: (titles, image paths)} with noise images of several sizes and random titles."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    posts = {}
    for split, count in COUNTS:
        titles, paths = [], []
        for i in range(count):
            key = f"{split[:2]}{i:04d}"
            rgb_noise(rng.choice([(32, 32), (48, 40), (40, 64)]), seed=rng.randrange(10**6)).save(
                folder / "images" / f"{key}.png")
            titles.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))))
            paths.append(f"images/{key}.png")
        posts[split] = (titles, paths)
    return posts


@pytest.fixture(scope="module")
def similarity_set(tmp_path_factory):
    """A data set labelled by CLIP's own similarity (above its median: real), embedded with that CLIP as both
    towers: {"root", "data", "clip", "cache", "reference" {split: (N,) similarity}}."""
    root = tmp_path_factory.mktemp("similarity")
    clip, data = clip_folder(root / "clip"), root / "data"
    posts = write_posts(data)
    reference = {split: clip_similarity(clip, titles, data, paths) for split, (titles, paths) in posts.items()}
    median = float(np.median(np.concatenate(list(reference.values()))))
    for split, (titles, paths) in posts.items():
        write_split(data, split, [{"id": f"{split[:2]}{i:04d}", "clean_title": title,
                                   "2_way_label": int(reference[split][i] > median), "local_image_path": path}
                                  for i, (title, path) in enumerate(zip(titles, paths))])
    assert main(embed_flags(data, clip, clip, root / "cache") + ["--part-rows", "64", "--batch-size", "32"]) == 0
    return {"root": root, "data": data, "clip": clip, "cache": root / "cache", "reference": reference}


def test_the_cached_similarity_is_clips_own_cosine_and_the_manifest_says_so(similarity_set):
    manifest = cache.read_manifest(similarity_set["cache"])
    assert manifest["features"] == ["similarity"] and manifest["inputs"]["features"] == ["similarity"]
    for split, expected in similarity_set["reference"].items():
        loaded = cache.load_split(similarity_set["cache"], split)
        assert loaded.similarity.dtype == np.float32
        np.testing.assert_allclose(loaded.similarity, expected, atol=1e-5, rtol=0)
    assert np.ptp(similarity_set["reference"]["train"]) > 0  # a real spread, not one value everywhere


# Enough optimiser steps for a threshold on one number (240 rows: 8 steps an epoch), and early stopping on the
# validation loss, which keeps improving as the boundary sharpens where 80 rows' accuracy has long stopped moving.
TRAIN_FLAGS = ["--batch-size", "32", "--lr", "1e-2", "--metric", "loss", "--max-epochs", "100", "--patience", "25"]


def _train(similarity_set, out, *flags):
    assert main(["train-head", "--cache-dir", str(similarity_set["cache"]), "--out", str(out), *SMALL_FLAGS,
                 *TRAIN_FLAGS, "--bootstrap", "0", "--no-report", *flags]) == 0
    return json.loads((out / "metrics.json").read_text())["test"]["accuracy"]


@pytest.fixture(scope="module")
def similarity_run(similarity_set):
    """train-head --features similarity on the set: (run folder, test accuracy)."""
    out = similarity_set["root"] / "run-sim"
    return out, _train(similarity_set, out, "--features", "similarity")


@pytest.mark.slow  # trains heads for up to 100 epochs (about 10 s on a busy CPU)
def test_features_similarity_learns_labels_made_from_the_similarity(similarity_set, similarity_run, capsys):
    out, with_it = similarity_run
    # The embeddings alone carry some of it (the cosine is a function of them): 0.86-0.90 over seeds 0-3.
    without = _train(similarity_set, similarity_set["root"] / "run-plain")
    with capsys.disabled():
        print(f"\ntest accuracy with --features similarity {with_it:.4f}, without {without:.4f}")
    assert with_it >= 0.95
    assert with_it > without
    head = json.loads((out / "head" / "head_config.json").read_text())["head"]
    assert head["features"] == ["similarity"]


@pytest.mark.slow  # trains heads for up to 100 epochs (about 10 s on a busy CPU)
def test_predict_on_a_similarity_run_gives_its_predictions_test_csv(similarity_set, similarity_run, tmp_path):
    out, _ = similarity_run
    pred = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(out), "--input", str(similarity_set["data"] / "test.tsv"), "--out", str(pred),
                 "--image-root", str(similarity_set["data"]), "--device", "cpu", "--num-workers", "0"]) == 0
    got = pd.read_csv(pred, dtype={"id": str})
    expected = pd.read_csv(out / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(expected["id"]) and (got["status"] == "ok").all()
    np.testing.assert_allclose(got["prob_real"], expected["prob_real"], atol=1e-5)
    # The Python API computes the same feature for posts given one by one.
    from pipeline.predict.classifier import Classifier

    rows = pd.read_csv(similarity_set["data"] / "test.tsv", sep="\t", dtype={"id": str}).head(7)
    frame = Classifier.from_run(out, device="cpu").predict(
        list(rows["clean_title"]), [str(similarity_set["data"] / p) for p in rows["local_image_path"]])
    np.testing.assert_allclose(frame["prob_real"], expected["prob_real"][:7], atol=1e-5)


def test_a_cache_without_similarity_refuses_features_similarity_saying_how_to_build_one(tiny_bert, tiny_clip, tmp_path,
                                                                                       capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data")
    assert main(embed_flags(data, tiny_bert, tiny_clip, tmp_path / "cache")) == 0
    manifest = cache.read_manifest(tmp_path / "cache")
    assert "features" not in manifest and "features" not in manifest["inputs"]
    assert cache.load_split(tmp_path / "cache", "train").similarity is None  # no column, no feature
    capsys.readouterr()
    assert main(["train-head", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), *SMALL_FLAGS,
                 "--features", "similarity"]) != 0
    err = capsys.readouterr().err
    assert "--features similarity" in err and "no similarity column" in err
    assert "one CLIP or SigLIP folder as both --text-model and --image-model" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_unknown_feature_is_refused_listing_the_known_ones(xor_cache, tmp_path, capsys):
    assert main(["train-head", "--cache-dir", str(xor_cache), "--out", str(tmp_path / "run"), *SMALL_FLAGS,
                 "--features", "similarty"]) != 0
    assert "--features similarty: not a set of extra features; give similarity" in capsys.readouterr().err


@pytest.mark.slow  # trains heads for up to 100 epochs (about 10 s on a busy CPU)
def test_ablate_gains_a_variant_with_the_similarity(similarity_set, tmp_path):
    out = tmp_path / "ablation"
    assert main(["ablate", "--cache-dir", str(similarity_set["cache"]), "--out", str(out), "--modalities", "text",
                 "text,image", "--fusions", "concat", "--seeds", "0", "--features", "similarity",
                 "--reference", "text+image/concat", *SMALL_FLAGS, *TRAIN_FLAGS, "--bootstrap", "0",
                 "--no-report"]) == 0
    runs = pd.read_csv(out / "ablation.csv")
    assert list(zip(runs["modalities"], runs["fusion"])) == [("text", "-"), ("text+image", "concat"),
                                                             ("text+image", "concat+similarity")]
    accuracy = dict(zip(runs["fusion"], runs["test_accuracy"]))
    assert accuracy["concat+similarity"] >= 0.95 and accuracy["concat+similarity"] > accuracy["concat"]
    assert "concat+similarity" in (out / "ablation.md").read_text()
    assert json.loads((out / "config.json").read_text())["grid"]["features"] == ["similarity"]


@pytest.mark.slow  # trains heads for up to 100 epochs (about 10 s on a busy CPU)
def test_the_report_shows_the_similarity_per_class_when_the_run_read_it(similarity_set, similarity_run, tmp_path):
    out, _ = similarity_run
    summary = json.loads((out / "similarity.json").read_text())
    test = cache.load_split(similarity_set["cache"], "test")
    for label, name in enumerate(("fake", "real")):
        values = test.similarity[test.labels == label]
        assert summary["splits"]["test"][name]["rows"] == len(values)
        assert summary["splits"]["test"][name]["quantiles"][2] == pytest.approx(float(np.median(values)), abs=1e-6)
        assert sum(summary["splits"]["test"][name]["histogram"]) == len(values)
    # Labels are the similarity above its median: every real row lies above every fake one.
    assert summary["splits"]["train"]["real"]["quantiles"][0] > summary["splits"]["train"]["fake"]["quantiles"][-1]
    assert main(["report", str(out), "--out", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    assert 'id="similarity"' in page and "test rows per similarity bin" in page
    assert f"{summary['splits']['test']['real']['mean']:.4f}" in page
    # A run that did not read it has no such section.
    plain = similarity_set["root"] / "run-no-sim"
    _train(similarity_set, plain, "--max-epochs", "2")
    assert not (plain / "similarity.json").exists()
    assert main(["report", str(plain), "--out", str(tmp_path / "plain.html")]) == 0
    assert 'id="similarity"' not in (tmp_path / "plain.html").read_text()


def test_a_siglip_folder_as_both_towers_caches_siglips_own_cosine(tmp_path):
    from conftest import make_dataset
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    folder = build_family(tmp_path / "siglip", "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    data = make_dataset(tmp_path / "data", counts=(("train", 6), ("val", 4), ("test", 4)))
    assert main(embed_flags(data, folder, folder, tmp_path / "cache") + ["--max-length", "16"]) == 0
    assert cache.read_manifest(tmp_path / "cache")["features"] == ["similarity"]
    rows = pd.read_csv(data / "test.tsv", sep="\t", dtype={"id": str})
    expected = clip_similarity(folder, list(rows["clean_title"]), data, list(rows["local_image_path"]), 16)
    got = cache.load_split(tmp_path / "cache", "test")
    assert list(got.ids) == list(rows["id"])
    np.testing.assert_allclose(got.similarity, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("flags", "why"), [(["--image-embedding", "pooled"], "image vector before the projection"),
                                            (["--pooling", "mean"], "text vector not get_text_features'"),
                                            ("other image model", "two models")])
def test_no_similarity_unless_the_towers_are_one_models_projected_pair(flags, why, similarity_set, tiny_clip,
                                                                       tmp_path):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", counts=(("train", 4), ("val", 2), ("test", 2)))
    clip = similarity_set["clip"]
    images, flags = (tiny_clip, []) if flags == "other image model" else (clip, flags)
    assert main(embed_flags(data, clip, images, tmp_path / "cache") + flags) == 0, why
    manifest = cache.read_manifest(tmp_path / "cache")
    assert "features" not in manifest and "features" not in manifest["inputs"], why
    assert cache.load_split(tmp_path / "cache", "train").similarity is None


def test_an_image_lora_or_another_family_gives_no_pair():
    from pipeline.model.similarity import is_same_model_pair

    assert is_same_model_pair("clip", "clip", "projected", "projected", same_content=True, image_lora=None)
    assert is_same_model_pair("siglip", "siglip", "pooler", "pooled", same_content=True, image_lora=None)
    # A task LoRA moves the image tower out of the space its text tower was aligned with (docs/your-data.md).
    assert not is_same_model_pair("clip", "clip", "projected", "projected", same_content=True, image_lora="ck.pt")
    assert not is_same_model_pair("clip", "clip", "projected", "projected", same_content=False, image_lora=None)
    assert not is_same_model_pair("bert", "clip", "cls", "projected", same_content=False, image_lora=None)


def test_the_head_reads_the_mean_where_a_row_has_no_similarity_and_refuses_features_without_it():
    from pipeline.errors import UserError
    from pipeline.model.config import HeadConfig
    from pipeline.model.head import FusionHead, set_feature_scale
    from pipeline.model.similarity import cosine_similarity

    torch.manual_seed(0)
    head = FusionHead(HeadConfig(text_dim=4, image_dim=4, proj_dim=8, hidden_dim=8, features="similarity")).eval()
    set_feature_scale(head, np.array([[0.1], [0.3], [np.nan]]))
    assert float(head.feature_shift) == pytest.approx(0.2) and float(head.feature_scale) == pytest.approx(0.1414, 1e-3)
    vectors = torch.randn(4, 4)
    base = {"text_emb": vectors, "image_emb": vectors.flip(0)}
    with torch.no_grad():
        at_mean = head({**base, "similarity": torch.full((4,), 0.2)})
        unknown = head({**base, "similarity": torch.full((4,), float("nan"))})
        no_image = head({**base, "similarity": torch.full((4,), 0.9), "has_image": torch.zeros(4, dtype=torch.bool)})
        no_image_at_mean = head({**base, "similarity": torch.full((4,), 0.2),
                                 "has_image": torch.zeros(4, dtype=torch.bool)})
        far = head({**base, "similarity": torch.full((4,), 0.9)})
    torch.testing.assert_close(unknown, at_mean)
    torch.testing.assert_close(no_image, no_image_at_mean)
    assert not torch.allclose(far, at_mean)  # the feature does reach the logits
    with pytest.raises(UserError, match="reads the extra feature similarity"):
        head(base)
    # A zero vector or a missing half has no cosine.
    got = cosine_similarity(np.array([[1.0, 0], [0, 0], [1, 1]]), np.array([[1.0, 0], [1, 0], [1, 0]]),
                            has_text=[True, True, False])
    assert got[0] == pytest.approx(1.0) and np.isnan(got[1]) and np.isnan(got[2])


def test_a_head_config_written_before_features_loads_without_them(tmp_path):
    from pipeline.model.config import HeadConfig
    from pipeline.model.head import FusionHead, load_head, save_head

    folder = tmp_path / "head"
    save_head(folder, FusionHead(HeadConfig(text_dim=4, image_dim=4, proj_dim=8, hidden_dim=8)))
    payload = json.loads((folder / "head_config.json").read_text())
    del payload["head"]["features"]  # as every head saved so far
    (folder / "head_config.json").write_text(json.dumps(payload))
    assert load_head(folder).config.features == ()


def test_a_same_model_cache_of_before_the_feature_loads_without_it_and_embed_says_what_changed(
        similarity_set, tmp_path, capsys):
    """The cache a CLIP-as-both-towers user built before the feature: fingerprint without `features`, parts
    without the column. It trains as before, and embed names the feature as what changed."""
    import shutil

    import pyarrow.parquet as pq

    from pipeline.embed.fingerprint import combine
    from pipeline.files import file_sha256

    old = tmp_path / "cache"
    shutil.copytree(similarity_set["cache"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["features"], manifest["inputs"]["features"]
    manifest["fingerprint"] = combine(manifest["inputs"])
    for split, info in manifest["splits"].items():
        for part in info["parts"]:
            path = old / split / part["file"]
            pq.write_table(pq.read_table(path).drop_columns(["similarity"]), path)
            part["sha256"] = file_sha256(path)
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / "fingerprint.json").write_text(json.dumps({"fingerprint": manifest["fingerprint"],
                                                      "inputs": manifest["inputs"]}))
    assert cache.load_split(old, "train").similarity is None
    assert main(["train-head", "--cache-dir", str(old), "--out", str(tmp_path / "run"), *SMALL_FLAGS,
                 "--max-epochs", "1", "--bootstrap", "0", "--no-report"]) == 0
    capsys.readouterr()
    data, clip = similarity_set["data"], similarity_set["clip"]
    assert main(embed_flags(data, clip, clip, old) + ["--part-rows", "64", "--batch-size", "32"]) != 0
    assert "changed: features" in capsys.readouterr().err
