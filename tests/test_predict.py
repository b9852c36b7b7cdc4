"""`predict` and `Classifier` on tiny models: the run's own probabilities back, the encoder guard,
unlabelled files, bad rows kept in order, resuming from kept parts."""

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import embed_flags, make_dataset, tiny_clip_config, write_split
from PIL import Image
from transformers import CLIPModel

import pipeline
from pipeline import Classifier
from pipeline.__main__ import main
from pipeline.embed import cache
from pipeline.errors import UserError
from pipeline.predict import encoders as guard
from pipeline.predict.run import read_results
from pipeline.runs.record import read_run
from tests.helpers import SMALL_FLAGS, trained_run


def drop_labels(path, out):
    """A copy of a split file without its 2_way_label column."""
    with open(path, newline="") as handle:
        table = [row for row in csv.reader(handle, delimiter="\t")]
    column = table[0].index("2_way_label")
    out.write_text("\n".join("\t".join(v for i, v in enumerate(row) if i != column) for row in table) + "\n")
    return out


def predict_flags(run, input_path, out, image_root, *extra):
    return ["predict", "--run", str(run), "--input", str(input_path), "--out", str(out), "--image-root",
            str(image_root), "--device", "cpu", "--num-workers", "0", "--batch-size", "4", "--part-rows", "5", *extra]


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, tiny_bert, tiny_clip):
    return trained_run(tmp_path_factory.mktemp("predict"), tiny_bert, tiny_clip, "--max-epochs", "3")


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, tiny_bert, tiny_clip):
    root = tmp_path_factory.mktemp("predict-e2e")
    data = make_dataset(root / "data")
    assert main(["finetune-e2e", "--data-dir", str(data), "--text-model", str(tiny_bert), "--clip-model",
                 str(tiny_clip), "--num-workers", "0", "--device", "cpu", "--out", str(root / "run"),
                 "--train-text", "full", "--train-image", "lora", "--batch-size", "8", "--max-epochs", "2",
                 "--lr-encoder", "1e-2", "--seed", "3"]) == 0
    return {"root": root, "data": data, "run": root / "run"}


@pytest.mark.parametrize("which", ["head_run", "e2e_run"])
def test_predict_on_the_test_split_gives_the_runs_own_probabilities(which, request, tmp_path, capsys):
    run = request.getfixturevalue(which)
    unlabelled = drop_labels(run["data"] / "test.tsv", tmp_path / "new.tsv")
    out = tmp_path / "pred.csv"
    assert main(predict_flags(run["run"], unlabelled, out, run["data"])) == 0
    got = read_results(out)
    expected = pd.read_csv(run["run"] / "predictions_test.csv", dtype={"id": str})
    assert list(got.columns) == ["id", "prob_real", "pred", "pred_name", "status", "reason", "prob_fake"]
    assert list(got["id"]) == list(expected["id"]) and (got["status"] == "ok").all()
    np.testing.assert_allclose(got["prob_real"], expected["prob_real"], atol=1e-5)
    np.testing.assert_allclose(got["prob_fake"] + got["prob_real"], 1.0, atol=1e-12)
    threshold = json.loads((run["run"] / "encoders.json").read_text())["threshold"]
    assert list(got["pred"]) == list((got["prob_real"] > threshold).astype(int))
    assert set(got["pred_name"]) <= {"fake", "real"}
    assert not (tmp_path / "pred.csv.metrics.json").exists()
    assert json.loads((tmp_path / "pred.csv.meta.json").read_text())["warnings"] == []
    assert "8 rows: 8 classified" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*parts*"))  # the temporary parts are gone


def test_e2e_run_records_its_own_exported_encoders(e2e_run):
    record = json.loads((e2e_run["run"] / "encoders.json").read_text())
    assert record["text_model"]["in_run"] == "export/text_model" and record["clip_lora"] is None
    assert record["class_names"] == ["fake", "real"] and 0 <= record["threshold"] <= 1
    run = read_run(e2e_run["run"])  # its run record: the kind, its own split files, the same decision
    assert run.kind == "finetune-e2e" and run.cache is None and run.data["data_dir"] == str(e2e_run["data"])
    assert run.decision_threshold == record["threshold"]
    assert run.encoders == {k: v for k, v in record.items() if k not in ("class_names", "threshold")}
    assert json.loads((e2e_run["run"] / "config.json").read_text())["pipeline_version"] == pipeline.__version__


def test_api_and_cli_agree_with_pil_images(head_run, tmp_path):
    data = head_run["data"]
    out = tmp_path / "cli.csv"
    assert main(predict_flags(head_run["run"], data / "val.tsv", out, data)) == 0
    cli = read_results(out)
    rows = pd.read_csv(data / "val.tsv", sep="\t", dtype=str)
    images = [Image.open(data / p) if i % 2 else str(data / p) for i, p in enumerate(rows["local_image_path"])]
    clf = Classifier.from_run(head_run["run"], device="cpu", batch_size=3)
    api = clf.predict(rows["clean_title"], images, ids=rows["id"], labels=rows["2_way_label"].astype(int))
    assert list(api.columns) == list(cli.columns) == ["id", "prob_real", "pred", "pred_name", "status", "reason",
                                                      "prob_fake", "label", "correct"]
    assert list(api["id"]) == list(cli["id"])
    np.testing.assert_allclose(api["prob_real"], cli["prob_real"], atol=1e-5)
    assert list(api["pred"]) == list(cli["pred"]) and list(api["correct"]) == list(cli["correct"])
    tsv = clf.predict_tsv(data / "val.tsv", image_root=data, num_workers=0)
    np.testing.assert_allclose(tsv["prob_real"], cli["prob_real"], atol=1e-5)
    metrics = json.loads((tmp_path / "cli.csv.metrics.json").read_text())
    assert metrics["rows"] == 8 and metrics["accuracy"] == pytest.approx(cli["correct"].mean())


def test_bad_rows_keep_their_place_with_a_status(head_run, tmp_path):
    data = head_run["data"]
    (data / "notes.jpg").write_text("not an image")
    write_split(tmp_path, "bad", [
        {"id": "ok1", "clean_title": "a photo", "local_image_path": "images/tr0000.jpg"},
        {"id": "gone", "clean_title": "a cat", "local_image_path": "images/nothing.jpg"},
        {"id": "blank", "clean_title": "  ", "local_image_path": "images/tr0001.jpg"},
        {"id": "text", "clean_title": "a dog", "local_image_path": "notes.jpg"},
        {"id": "ok2", "clean_title": "the man", "local_image_path": "images/tr0002.jpg"},
        {"id": "ok3", "clean_title": "the dog", "local_image_path": "images/tr0003.jpg"},
    ])
    out = tmp_path / "bad.csv"
    skip = ["--on-bad-image", "skip", "--on-empty-title", "skip"]
    assert main(predict_flags(head_run["run"], tmp_path / "bad.tsv", out, data, *skip)) == 0
    got = read_results(out)
    assert list(got["id"]) == ["ok1", "gone", "blank", "text", "ok2", "ok3"]
    assert list(got["status"]) == ["ok", "missing_file", "empty_title", "not_an_image", "ok", "ok"]
    assert got["prob_real"].isna().tolist() == [False, True, True, True, False, False]
    assert got["pred"].isna().tolist() == got["prob_real"].isna().tolist()
    lines = out.read_text().splitlines()
    assert lines[2] == "gone,,,,missing_file,missing_file,"  # empty probabilities, prediction and name
    assert main(predict_flags(head_run["run"], tmp_path / "bad.tsv", out, data, "--on-bad-image", "fail")) == 2
    # by default the head's missing vectors score the half-posts
    assert main(predict_flags(head_run["run"], tmp_path / "bad.tsv", out, data)) == 0
    got = read_results(out)
    assert list(got["status"]) == ["ok", "ok_text_only", "ok_image_only", "ok_text_only", "ok", "ok"]
    assert not got["prob_real"].isna().any()


def other_clip(folder, tiny_clip):
    torch.manual_seed(99)
    CLIPModel(tiny_clip_config()).save_pretrained(folder)
    shutil.copy(tiny_clip / "preprocessor_config.json", folder)
    return folder


def test_other_encoders_are_refused_and_moved_ones_accepted(head_run, tiny_clip, tiny_bert, tmp_path, capsys):
    data = head_run["data"]
    args = predict_flags(head_run["run"], data / "test.tsv", tmp_path / "p.csv", data)
    other = other_clip(tmp_path / "other-clip", tiny_clip)
    for extra, named in ((["--clip-model", str(other)], "--clip-model"), (["--pooling", "mean"], "--pooling"),
                         (["--clip-lora", str(tiny_bert / "vocab.txt")], "--clip-lora")):
        assert main(args + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {named}") and "--allow-other-encoders" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()
    assert main(args + ["--clip-model", str(other), "--allow-other-encoders"]) == 0
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert "content differs" in meta["warnings"][0]
    moved = shutil.copytree(tiny_clip, tmp_path / "moved-clip")
    assert main(args + ["--clip-model", str(moved)]) == 0
    assert json.loads((tmp_path / "p.csv.meta.json").read_text())["warnings"] == []


def test_another_lora_is_refused(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"one")
    (tmp_path / "b.pt").write_bytes(b"two")
    lora = {"path": str(tmp_path / "a.pt"), "sha256": cache.file_sha256(tmp_path / "a.pt")}
    record = {"text_model": None, "clip_model": None, "clip_lora": lora, "pooling": "cls", "max_length": 8,
              "clip_embedding": "projected", "image": {}}
    settings, warnings = guard.resolve(tmp_path, record, {})
    assert settings["clip_lora"] == str(tmp_path / "a.pt") and warnings == []
    with pytest.raises(UserError, match="--clip-lora .*b.pt: content differs from the CLIP checkpoint"):
        guard.resolve(tmp_path, record, {"clip_lora": str(tmp_path / "b.pt")})
    (tmp_path / "a.pt").unlink()
    with pytest.raises(UserError, match="is not there; pass --clip-lora"):
        guard.resolve(tmp_path, record, {})


def test_unlabelled_split_embeds_training_refuses_predict_works(head_run, tiny_bert, tiny_clip, tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    drop_labels(data / "test.tsv", data / "test.tsv")
    args = embed_flags(data, tiny_bert, tiny_clip, tmp_path / "cache")
    assert main(args) == 0
    assert "unlabelled" in capsys.readouterr().out
    manifest = cache.read_manifest(tmp_path / "cache")
    assert manifest["splits"]["test"]["labelled"] is False and manifest["splits"]["train"]["labelled"] is True
    part = pq.read_table(cache.part_path(tmp_path / "cache", "test", 0))
    assert part.column("label").null_count == part.num_rows > 0
    assert (cache.load_split(tmp_path / "cache", "test").labels == -1).all()
    for command in (["train-head", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")],
                    ["ablate", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "ablation")],
                    ["finetune-e2e", "--data-dir", str(data), "--text-model", str(tiny_bert), "--clip-model",
                     str(tiny_clip), "--device", "cpu", "--num-workers", "0", "--out", str(tmp_path / "e2e")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "unlabelled" in err and len(err.splitlines()) == 1, err
    assert main(predict_flags(head_run["run"], data / "test.tsv", tmp_path / "p.csv", data)) == 0
    assert len(read_results(tmp_path / "p.csv")) == 8


def test_kept_parts_are_reused_on_a_rerun(head_run, tmp_path, capsys):
    data = head_run["data"]
    args = predict_flags(head_run["run"], data / "train.tsv", tmp_path / "p.csv", data,
                         "--cache-dir", str(tmp_path / "parts"))
    assert main(args) == 0
    first = (tmp_path / "p.csv").read_text()
    parts = sorted((tmp_path / "parts" / "posts").glob("part-*.parquet"))
    assert len(parts) == 5  # 24 rows in parts of 5
    parts[-1].unlink()  # as if killed before the last part
    stamps = {p: p.stat().st_mtime_ns for p in parts[:-1]}
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming; 4 part(s) already embedded" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert (tmp_path / "p.csv").read_text() == first


def test_predict_applies_the_runs_calibration_temperature(head_run, tiny_bert, tiny_clip, tmp_path):
    """A head trained with --calibrate temperature: predict gives the calibrated probabilities of the run.
    Two val labels are flipped: on the demo-like val split the head separates every row, and such a fit
    is degenerate and not used (tests/test_training_refuses.py)."""
    data = tmp_path / "data"
    shutil.copytree(head_run["data"], data)
    val = pd.read_csv(data / "val.tsv", sep="\t", dtype=str)
    val.loc[:1, "2_way_label"] = val.loc[:1, "2_way_label"].map({"0": "1", "1": "0"})
    val.to_csv(data / "val.tsv", sep="\t", index=False)
    assert main(embed_flags(data, tiny_bert, tiny_clip, tmp_path / "cache")) == 0
    run = tmp_path / "calibrated"
    assert main(["train-head", "--cache-dir", str(tmp_path / "cache"), "--out", str(run), *SMALL_FLAGS,
                 "--max-epochs", "3", "--calibrate", "temperature", "--no-report"]) == 0
    temperature = json.loads((run / "head" / "head_config.json").read_text())["extra"]["calibration"]["temperature"]
    assert temperature > 0 and abs(temperature - 1) > 1e-3  # a real rescaling, so the check below can fail
    unlabelled = drop_labels(head_run["data"] / "test.tsv", tmp_path / "new.tsv")
    assert main(predict_flags(run, unlabelled, tmp_path / "pred.csv", head_run["data"])) == 0
    expected = pd.read_csv(run / "predictions_test.csv", dtype={"id": str})
    np.testing.assert_allclose(read_results(tmp_path / "pred.csv")["prob_real"], expected["prob_real"], atol=1e-5)


def test_the_api_scores_half_posts_with_the_heads_missing_vectors(head_run):
    """A post without image or without title gets a probability, marked as a half-post; the half that is there
    decides it, as the head's missing vector stands in for the other."""
    data = head_run["data"]
    rows = pd.read_csv(data / "test.tsv", sep="\t", dtype=str)
    title, image = rows["clean_title"][0], str(data / rows["local_image_path"][0])
    clf = Classifier.from_run(head_run["run"], device="cpu")
    assert clf.model.head.supports_missing
    got = clf.predict([title, "", title, ""], [None, image, image, None], ids=["t", "i", "both", "none"])
    assert list(got["status"][:3]) == ["ok_text_only", "ok_image_only", "ok"]
    assert got["prob_real"][:3].notna().all() and np.isnan(got["prob_real"][3])
    assert got["status"][3] not in ("ok", "ok_text_only", "ok_image_only")  # neither half: a reason, no score
    assert len({round(p, 6) for p in got["prob_real"][:3]}) == 3  # each half counts: three different scores


def test_cache_dir_never_loses_files_predict_did_not_write(head_run, tmp_path, capsys):
    data = head_run["data"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = predict_flags(head_run["run"], data / "val.tsv", tmp_path / "p.csv", data, "--cache-dir", str(mine))
    assert main(args) == 2  # a folder that is not one of ours is refused, untouched
    assert "not empty and not a cache this tool wrote" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    parts = tmp_path / "parts"
    assert main(predict_flags(head_run["run"], data / "val.tsv", tmp_path / "p.csv", data,
                              "--cache-dir", str(parts))) == 0
    (parts / "posts" / "user.jpg").write_bytes(b"a user's file among our parts")
    assert main(predict_flags(head_run["run"], data / "test.tsv", tmp_path / "q.csv", data,
                              "--cache-dir", str(parts))) == 0  # another input: our parts are replaced
    assert "built from other inputs (changed: image_files, input); rebuilding it" in capsys.readouterr().out
    assert (parts / "posts" / "user.jpg").read_bytes() == b"a user's file among our parts"


def test_a_damaged_encoders_record_is_an_error_not_a_traceback(head_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(head_run["run"], run)
    data = head_run["data"]
    for damaged in ("[1, 2]", "{not json"):
        (run / "encoders.json").write_text(damaged)
        assert main(predict_flags(run, data / "test.tsv", tmp_path / "p.csv", data)) == 2
        err = capsys.readouterr().err
        assert f"{run / 'encoders.json'}: " in err and "train the head again" in err and "Traceback" not in err
