"""Label columns and class names: any label column, K classes, label sets kept apart from the vectors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cache_dir_of, embed_flags, make_dataset, with_flag

from pipeline.__main__ import main
from pipeline.data.classes import FAKEDDIT_CLASS_NAMES
from pipeline.embed import cache
from pipeline.embed.labels import label_file
from pipeline.errors import UserError
from pipeline.train.fit import load_cached_splits

SIX = FAKEDDIT_CLASS_NAMES["6_way_label"]


def _frame(folder, split):
    return pd.read_csv(Path(folder) / f"{split}.tsv", sep="\t", dtype=str, keep_default_na=False)


def add_columns(folder, **columns):
    """Give every split file more label columns: name -> function(row index, frame) -> value."""
    for split in ("train", "val", "test"):
        frame = _frame(folder, split)
        for name, value in columns.items():
            frame[name] = [value(i, frame) for i in range(len(frame))]
        frame.to_csv(Path(folder) / f"{split}.tsv", sep="\t", index=False)


@pytest.fixture
def labelled(dataset):
    """The small dataset with a 6-way column (i % 6), a 3-way one (i % 3) and a flipped 2-way one."""
    add_columns(dataset, **{"6_way_label": lambda i, f: str(i % 6), "3_way_label": lambda i, f: str(i % 3),
                            "flipped": lambda i, f: str(1 - int(f["2_way_label"][i]))})
    return dataset


def _error(args, capsys):
    assert main(args) == 2
    return capsys.readouterr().err


def test_a_chosen_label_column_is_read_named_and_counted(embed_args, labelled, capsys):
    args = embed_args + ["--label-column", "6_way_label"]
    assert main(args) == 0
    out = capsys.readouterr().out
    folder = cache_dir_of(args)
    manifest = cache.read_manifest(folder)
    assert manifest["label_column"] == "6_way_label"
    assert manifest["classes"] == {str(i): name for i, name in enumerate(SIX)}
    assert manifest["splits"]["train"]["class_counts"] == dict.fromkeys(SIX, 4)  # 24 rows, i % 6
    assert (Path(folder) / label_file("6_way_label", "train")).is_file()
    split = cache.load_split(folder, "val")
    expected = _frame(labelled, "val").set_index("id")["6_way_label"].astype(int)
    assert list(split.labels) == list(expected[list(split.ids)])
    header = next(line for line in out.splitlines() if line.startswith("split"))
    assert all(name in header for name in SIX) and "fake" not in header  # a count per class in the summary


def test_a_label_outside_the_classes_names_file_line_and_value(embed_args, labelled, capsys):
    frame = _frame(labelled, "val")
    frame.loc[3, "6_way_label"] = "6"
    frame.loc[5, "6_way_label"] = "2.5"
    frame.to_csv(labelled / "val.tsv", sep="\t", index=False)
    err = _error(embed_args + ["--label-column", "6_way_label"], capsys)
    assert str(labelled / "val.tsv") in err and "column 6_way_label" in err and "0 to 5" in err
    assert "line 5: '6'" in err and "line 7: '2.5'" in err and "2 row(s)" in err
    # The default two-way column keeps its message of before N classes.
    frame = _frame(labelled, "test")
    frame.loc[0, "2_way_label"] = "2"
    frame.to_csv(labelled / "test.tsv", sep="\t", index=False)
    err = _error(embed_args, capsys)
    assert "column 2_way_label must be 0 (fake) or 1 (real)" in err and "line 2: '2'" in err


def test_num_classes_bounds_the_labels_of_any_column(embed_args, labelled, capsys):
    err = _error(embed_args + ["--label-column", "6_way_label", "--num-classes", "4"], capsys)
    assert "0 to 3 (--num-classes" in err and "'4'" in err


def test_a_class_absent_from_train_is_named(embed_args, labelled, capsys):
    frame = _frame(labelled, "train")
    frame["3_way_label"] = frame["3_way_label"].replace("2", "1")
    frame.to_csv(labelled / "train.tsv", sep="\t", index=False)
    err = _error(embed_args + ["--label-column", "3_way_label"], capsys)
    assert "class 2 (fake_false_text) has no row in train" in err and str(labelled / "train.tsv") in err
    assert not (Path(cache_dir_of(embed_args)) / cache.MANIFEST_NAME).exists()


def test_class_names_must_match_the_count(embed_args, labelled, capsys):
    err = _error(embed_args + ["--label-column", "3_way_label", "--class-names", "a,b"], capsys)
    assert "--class-names gives 2 names but there are 3 classes" in err
    assert main(embed_args + ["--label-column", "3_way_label", "--class-names", "x,y,z"]) == 0
    assert cache.read_manifest(cache_dir_of(embed_args))["classes"] == {"0": "x", "1": "y", "2": "z"}


def test_relabelling_runs_no_encoder_and_training_uses_the_new_labels(embed_args, labelled, tmp_path,
                                                                      monkeypatch, capsys):
    calls = []
    real_call = torch.nn.Module.__call__

    def counting(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return real_call(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    assert main(embed_args) == 0
    assert calls  # the counter sees the encoders when they do run
    folder = Path(cache_dir_of(embed_args))
    fingerprint = (folder / cache.FINGERPRINT_NAME).read_text()
    parts = {p: p.stat().st_mtime_ns for p in folder.glob("*/part-*.parquet")}
    calls.clear()
    assert main(embed_args + ["--label-column", "flipped"]) == 0
    assert main(embed_args + ["--label-column", "6_way_label"]) == 0
    assert calls == []  # no forward pass of any module
    assert "no encoder ran" in capsys.readouterr().out
    assert (folder / cache.FINGERPRINT_NAME).read_text() == fingerprint
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/part-*.parquet")} == parts
    manifest = cache.read_manifest(folder)
    assert set(manifest["label_sets"]) == {"2_way_label", "flipped", "6_way_label"}
    assert manifest["label_column"] == "6_way_label"
    # Every label set stays readable; the default is the last embed's.
    _, six = load_cached_splits(folder)
    view, flipped = load_cached_splits(folder, label_column="flipped")
    _, two = load_cached_splits(folder, label_column="2_way_label")
    assert view["label_column"] == "flipped" and view["classes"] == {"0": "class_0", "1": "class_1"}
    assert np.array_equal(flipped["test"].labels, 1 - two["test"].labels)
    assert six["train"].labels.max() == 5
    monkeypatch.setattr(torch.nn.Module, "__call__", real_call)
    run = tmp_path / "run"
    assert main(["train-head", "--cache-dir", str(folder), "--label-column", "flipped", "--out", str(run),
                 "--max-epochs", "2", "--bootstrap", "0", "--device", "cpu", "--no-report"]) == 0
    predictions = pd.read_csv(run / "predictions_test.csv", dtype={"id": str})
    truth = dict(zip(flipped["test"].ids, flipped["test"].labels))
    assert [truth[key] for key in predictions["id"]] == list(predictions["label"])


def test_labels_are_checked_against_the_vectors(embed_args, labelled, capsys):
    assert main(embed_args + ["--label-column", "3_way_label"]) == 0
    folder = Path(cache_dir_of(embed_args))
    path = folder / label_file("3_way_label", "val")
    table = pd.read_parquet(path)
    table.iloc[::-1].to_parquet(path)  # the same labels, in another order
    with pytest.raises(UserError, match="checksum differs"):
        cache.load_split(folder, "val")
    manifest = json.loads((folder / cache.MANIFEST_NAME).read_text())
    from pipeline.files import file_sha256

    manifest["label_sets"]["3_way_label"]["splits"]["val"]["sha256"] = file_sha256(path)
    (folder / cache.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not the cache parts' ids in order"):
        cache.load_split(folder, "val")
    with pytest.raises(UserError, match="no labels from column 'nope'"):
        load_cached_splits(folder, label_column="nope")


def test_a_cache_from_before_label_sets_loads_as_2_way_label(xor_cache):
    """write_cache writes parts with their labels inside and a manifest without label sets, as embed did."""
    manifest, splits = load_cached_splits(xor_cache)
    assert "label_sets" not in cache.read_manifest(xor_cache)
    assert manifest["label_column"] == "2_way_label" and set(np.unique(splits["train"].labels)) == {0, 1}
    with pytest.raises(UserError, match="holds the labels of 2_way_label only"):
        load_cached_splits(xor_cache, label_column="6_way_label")


def test_the_label_column_never_enters_the_fingerprint(embed_args, labelled, tmp_path):
    other = with_flag(embed_args, "--cache-dir", str(tmp_path / "six"))
    assert main(embed_args) == 0 and main(other + ["--label-column", "6_way_label"]) == 0
    default, six = (json.loads((Path(cache_dir_of(a)) / cache.FINGERPRINT_NAME).read_text())
                    for a in (embed_args, other))
    assert default == six and cache.FINGERPRINT_FORMAT == 3
    assert not any("label" in key or "class" in key for key in default["inputs"])


def test_doctor_reads_six_classes(tiny_bert, tiny_clip, tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    add_columns(data, **{"6_way_label": lambda i, f: str(i % 6),
                         "subreddit": lambda i, f: f"r{i % 6}"})  # a perfect proxy of the 6-way label
    frame = _frame(data, "test")
    frame.loc[0, "local_image_path"] = "images/tr0001.jpg"  # train row 1 (class 1) as test row 0 (class 0)
    frame.to_csv(data / "test.tsv", sep="\t", index=False)
    folder = tmp_path / "cache"
    assert main(embed_flags(data, tiny_bert, tiny_clip, folder) + ["--label-column", "6_way_label"]) == 0
    assert main(["doctor", "--cache-dir", str(folder), "--data-dir", str(data), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((folder / "doctor" / "doctor.json").read_text())
    assert report["label_column"] == "6_way_label"
    assert report["class_balance"]["train"]["counts"] == dict.fromkeys(SIX, 4)
    assert report["class_balance"]["test"]["counts"] == dict(zip(SIX, [2, 2, 1, 1, 1, 1]))
    assert report["label_conflicts"]["exact_image"] >= 1  # labels 0 and 1 on one image
    assert report["label_proxies"]["subreddit"]["test_accuracy"] == 1.0
    assert "4 satire_parody" in printed


def test_finetune_e2e_trains_a_three_way_head_and_keeps_the_names(tiny_bert, tiny_clip, tmp_path):
    data = make_dataset(tmp_path / "data")
    add_columns(data, **{"3_way_label": lambda i, f: str(i % 3 if i % 4 else 0)})  # more of class 0
    counts = np.bincount(_frame(data, "train")["3_way_label"].astype(int))
    out = tmp_path / "run"
    assert main(["finetune-e2e", "--data-dir", str(data), "--text-model", str(tiny_bert), "--clip-model",
                 str(tiny_clip), "--num-workers", "0", "--device", "cpu", "--out", str(out),
                 "--label-column", "3_way_label", "--class-names", "a,b,c", "--train-text", "frozen",
                 "--train-image", "lora", "--batch-size", "8", "--max-epochs", "1", "--no-report"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["a", "b", "c"]
    assert config["class_weights"] == pytest.approx(list(counts.sum() / (3 * counts)))  # balanced
    assert config["finetune"]["head"]["num_classes"] == 3
    head = json.loads((out / "export" / "head" / "head_config.json").read_text())
    assert head["head"]["num_classes"] == 3 and head["extra"]["class_names"] == ["a", "b", "c"]
    assert "--label-column 3_way_label --class-names a,b,c" in (out / "export" / "embed.sh").read_text()
    test = json.loads((out / "metrics.json").read_text())["test"]
    predictions = pd.read_csv(out / "predictions_test.csv", dtype={"id": str})
    probs = predictions[["prob_a", "prob_b", "prob_c"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert list(predictions["pred"]) == list(probs.argmax(axis=1))
    assert list(predictions["pred_name"]) == [("a", "b", "c")[k] for k in predictions["pred"]]
    truth = _frame(data, "test").set_index("id")["3_way_label"].astype(int)
    assert list(predictions["label"]) == list(truth[list(predictions["id"])])
    confusion = np.array(test["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == test["rows"] == len(predictions)
    assert test["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert set(test["per_class"]) == {"a", "b", "c"}
    # The run folder is stage two's own: run.json names the column, and predict gives the run's probabilities.
    record = json.loads((out / "run.json").read_text())
    assert record["label_column"] == "3_way_label" and record["class_names"] == ["a", "b", "c"]
    assert record["threshold"] is None  # K > 2: the argmax decides
    assert main(["predict", "--run", str(out), "--input", str(data / "test.tsv"), "--out", str(tmp_path / "p.csv"),
                 "--image-root", str(data), "--device", "cpu", "--num-workers", "0"]) == 0
    again = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    assert list(again["id"]) == list(predictions["id"]) and list(again["label"]) == list(predictions["label"])
    np.testing.assert_allclose(again[["prob_a", "prob_b", "prob_c"]].to_numpy(), probs, atol=1e-5)


def test_finetune_e2e_refuses_weights_of_another_count(tiny_bert, tiny_clip, tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    add_columns(data, **{"3_way_label": lambda i, f: str(i % 3)})
    assert main(["finetune-e2e", "--data-dir", str(data), "--text-model", str(tiny_bert), "--clip-model",
                 str(tiny_clip), "--num-workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--label-column", "3_way_label", "--class-weights", "1,2", "--no-report"]) == 2
    assert "gives 2 numbers for 3 classes" in capsys.readouterr().err


def test_a_rebuild_replaces_the_label_sets_with_its_own(embed_args, labelled):
    assert main(embed_args) == 0 and main(embed_args + ["--label-column", "6_way_label"]) == 0
    folder = Path(cache_dir_of(embed_args))
    assert main(with_flag(embed_args, "--max-length", "64") + ["--on-stale", "rebuild"]) == 0
    manifest = cache.read_manifest(folder)
    assert list(manifest["label_sets"]) == ["2_way_label"] and not (folder / ".rebuild").exists()
    assert sorted(p.relative_to(folder).as_posix() for p in (folder / "labels").rglob("*.parquet")) == [
        label_file("2_way_label", split) for split in ("test", "train", "val")]
    truth = _frame(labelled, "test").set_index("id")["2_way_label"].astype(int)
    split = cache.load_split(folder, "test")
    assert list(split.labels) == list(truth[list(split.ids)])


def test_embed_on_a_complete_cache_without_label_sets_adds_one_without_encoders(embed_args, monkeypatch):
    """A cache embedded before label sets (its manifest has none) is complete for today's embed too."""
    import shutil

    assert main(embed_args) == 0
    folder = Path(cache_dir_of(embed_args))
    manifest = json.loads((folder / cache.MANIFEST_NAME).read_text())
    for key in ("label_sets", "label_column"):
        del manifest[key]
    (folder / cache.MANIFEST_NAME).write_text(json.dumps(manifest))
    shutil.rmtree(folder / "labels")
    monkeypatch.setattr(torch.nn.Module, "__call__", lambda *a, **k: pytest.fail("an encoder ran"))
    assert main(embed_args) == 0
    assert list(cache.read_manifest(folder)["label_sets"]) == ["2_way_label"]
    assert set(cache.load_split(folder, "train").labels) == {0, 1}
