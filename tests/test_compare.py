"""`compare`: runs from two caches matched by id, differences equal to hand counts, ablate's intervals, refusals."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import embed_flags, make_dataset
from sklearn.metrics import f1_score

from pipeline.__main__ import main
from pipeline.bench.synthetic import write_cache
from pipeline.compare.paired import match_rows
from pipeline.compare.runs import RunPredictions
from pipeline.runs.record import read_run
from tests.helpers import SMALL_FLAGS, small_splits
from tests.test_report import parse

TRAIN_FLAGS = ["--max-epochs", "3", "--patience", "1", "--bootstrap", "200", "--no-report", *SMALL_FLAGS]
HOSTILE = "<b onmouseover=alert(1)>run & <img src=x onerror=alert(2)>"


def train(cache, out, *flags):
    assert main(["train-head", "--cache-dir", str(cache), "--out", str(out), *TRAIN_FLAGS, *flags]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (text only) on cache A; run B (text+image) on cache B: another text encoder (fewer, noisier dims)
    and a test split that lacks A's first 20 rows, while A's lacks its own last 10."""
    root = tmp_path_factory.mktemp("compare")
    splits = small_splits("both", rows=2000)
    test = splits["test"]
    cache_a = {**splits, "test": test.subset(slice(0, len(test) - 10))}
    other_text = {name: split.subset(slice(None)) for name, split in splits.items()}
    rng = np.random.default_rng(5)
    for split in other_text.values():
        split.text_emb = np.ascontiguousarray(split.text_emb[:, :12] + rng.normal(0, 0.5, (len(split), 12)),
                                              dtype=np.float32)
    cache_b = {**other_text, "test": other_text["test"].subset(slice(20, None))}
    write_cache(root / "cache_a", cache_a, fingerprint="cache-a")
    write_cache(root / "cache_b", cache_b, fingerprint="cache-b")
    return {"root": root, "test_rows": len(test),
            "a": train(root / "cache_a", root / "run_a", "--modalities", "text"),
            "b": train(root / "cache_b", root / "run_b", "--modalities", "text,image", "--fusion", "concat")}


def compare(*args):
    return main(["compare", *map(str, args)])


def test_differences_equal_hand_counts_on_the_shared_ids(runs, tmp_path, capsys):
    assert compare(runs["a"], runs["b"], "--out", tmp_path / "cmp", "--bootstrap", "200") == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(table.columns) == ["run", "reference", "metric", "difference", "ci_low", "ci_high", "p_value", "rows"]
    assert list(table["metric"]) == ["accuracy", "f1_macro", "f1_fake", "f1_real"]
    a, b = (pd.read_csv(runs[key] / "predictions_test.csv", dtype={"id": str}) for key in ("a", "b"))
    shared = a.merge(b, on="id", suffixes=("_a", "_b"))
    assert len(shared) == runs["test_rows"] - 30
    by_metric = table.set_index("metric")
    accuracy = (shared["pred_b"] == shared["label_b"]).mean() - (shared["pred_a"] == shared["label_a"]).mean()
    assert by_metric.loc["accuracy", "difference"] == pytest.approx(accuracy, abs=1e-9)
    macro = (f1_score(shared["label_b"], shared["pred_b"], average="macro")
             - f1_score(shared["label_a"], shared["pred_a"], average="macro"))
    assert by_metric.loc["f1_macro", "difference"] == pytest.approx(macro, abs=1e-9)
    per_class = f1_score(shared["label_b"], shared["pred_b"], average=None) - f1_score(
        shared["label_a"], shared["pred_a"], average=None)
    assert list(by_metric.loc[["f1_fake", "f1_real"], "difference"]) == pytest.approx(list(per_class), abs=1e-9)
    assert (table["rows"] == len(shared)).all() and (table["run"] == str(runs["b"])).all()
    assert (table["ci_low"] <= table["difference"]).all() and (table["difference"] <= table["ci_high"]).all()
    assert accuracy > 0  # fusion wins where the label needs both
    out = capsys.readouterr().out
    assert f"{runs['a']}: {runs['test_rows'] - 10} test rows, {len(shared)} shared, 20 unshared" in out
    assert f"{runs['b']}: {runs['test_rows'] - 20} test rows, {len(shared)} shared, 10 unshared" in out
    config = json.loads((tmp_path / "cmp" / "config.json").read_text())
    assert read_run(tmp_path / "cmp").kind == "compare"  # written through the one run record
    assert [run["rows"]["unshared"] for run in config["runs"]] == [20, 10]
    assert [run["fingerprint"] for run in config["runs"]] == ["cache-a", "cache-b"]
    assert config["compare"]["bootstrap"] == 200 and config["compare"]["seed"] == 0
    assert f"| {runs['test_rows'] - 10} | {len(shared)} | 20 |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_reference_flag_flips_the_sign(runs, tmp_path):
    assert compare(runs["a"], runs["b"], "--out", tmp_path / "ab", "--bootstrap", "50") == 0
    assert compare(runs["a"], runs["b"], "--out", tmp_path / "ba", "--bootstrap", "50", "--reference", "run_b") == 0
    forward, backward = (pd.read_csv(tmp_path / name / "compare.csv") for name in ("ab", "ba"))
    assert list(backward["run"].unique()) == [str(runs["a"])]
    assert np.allclose(forward["difference"], -backward["difference"], atol=1e-12)


def test_tuned_thresholds_score_each_run_as_its_pred_tuned_column(runs, tmp_path):
    assert compare(runs["a"], runs["b"], "--out", tmp_path / "cmp", "--bootstrap", "20", "--threshold", "tuned") == 0
    a, b = (pd.read_csv(runs[key] / "predictions_test.csv", dtype={"id": str}) for key in ("a", "b"))
    shared = a.merge(b, on="id", suffixes=("_a", "_b"))
    accuracy = ((shared["pred_tuned_b"] == shared["label_b"]).mean()
                - (shared["pred_tuned_a"] == shared["label_a"]).mean())
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv").set_index("metric")
    assert table.loc["accuracy", "difference"] == pytest.approx(accuracy, abs=1e-9)
    config = json.loads((tmp_path / "cmp" / "config.json").read_text())
    tuned = json.loads((runs["a"] / "metrics.json").read_text())["test"]["tuned"]["threshold"]
    assert config["thresholds"][str(runs["a"])] == tuned != 0.5


def test_interval_agrees_with_ablates_paired_interval(runs, tmp_path):
    """The same pair of heads as ablate trains them (one cache, seed 0): same difference, same interval and p."""
    cache = runs["root"] / "cache_a"
    assert main(["ablate", "--cache-dir", str(cache), "--out", str(tmp_path / "ablation"), "--modalities", "text",
                 "text,image", "--fusions", "concat", "--seeds", "0", *TRAIN_FLAGS]) == 0
    text = train(cache, tmp_path / "text", "--modalities", "text")
    fused = train(cache, tmp_path / "fused", "--modalities", "text,image", "--fusion", "concat")
    assert compare(text, fused, "--out", tmp_path / "cmp", "--bootstrap", "200", "--threshold", "0.5") == 0
    ablation = pd.read_csv(tmp_path / "ablation" / "ablation.csv")
    variant = ablation[ablation["modalities"] == "text+image"].iloc[0]
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv").set_index("metric")
    for metric in ("accuracy", "f1_macro"):
        assert table.loc[metric, "rows"] == len(pd.read_csv(text / "predictions_test.csv"))
        assert table.loc[metric, "difference"] == pytest.approx(variant[f"test_{metric}_diff"], abs=1e-12)
        for column, suffix in (("ci_low", "low"), ("ci_high", "high"), ("p_value", "p")):
            assert table.loc[metric, column] == pytest.approx(variant[f"test_{metric}_diff_{suffix}"], abs=1e-12)


def test_different_label_sets_are_refused(runs, tmp_path, capsys):
    other = tmp_path / "other_labels"
    shutil.copytree(runs["b"], other)
    record = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**record, "class_names": ["satire", "news"]}))
    assert compare(runs["a"], other, "--out", tmp_path / "cmp") == 2
    err = capsys.readouterr().err
    assert "different label sets" in err and "satire, news" in err and "fake, real" in err
    assert not (tmp_path / "cmp").exists()


def test_folders_that_cannot_be_compared_are_named(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    no_predictions = tmp_path / "no_predictions"
    shutil.copytree(runs["b"], no_predictions)
    (no_predictions / "predictions_test.csv").unlink()
    other_ids = tmp_path / "other_ids"
    shutil.copytree(runs["b"], other_ids)
    predictions = pd.read_csv(other_ids / "predictions_test.csv", dtype={"id": str})
    predictions["id"] = "x" + predictions["id"]
    predictions.to_csv(other_ids / "predictions_test.csv", index=False)
    bad_prob = tmp_path / "bad_prob"
    shutil.copytree(runs["b"], bad_prob)
    predictions = pd.read_csv(bad_prob / "predictions_test.csv", dtype={"id": str})
    predictions.loc[3, "prob_real"] = 1.5
    predictions.to_csv(bad_prob / "predictions_test.csv", index=False)
    relabelled = tmp_path / "relabelled"
    shutil.copytree(runs["b"], relabelled)
    predictions = pd.read_csv(relabelled / "predictions_test.csv", dtype={"id": str})
    predictions.loc[0, "label"] = 1 - predictions.loc[0, "label"]
    predictions.to_csv(relabelled / "predictions_test.csv", index=False)
    no_prob = tmp_path / "no_prob"
    shutil.copytree(runs["b"], no_prob)
    predictions.drop(columns="prob_real").to_csv(no_prob / "predictions_test.csv", index=False)
    cases = [(empty, f"{empty}: not a run folder (no config.json)"),
             (relabelled, f"{relabelled}: id {predictions.loc[0, 'id']!r} has label"),
             (no_prob, "predictions_test.csv: no column prob_real"),
             (no_predictions, f"{no_predictions}: has no predictions_test.csv"),
             (other_ids, "share no test ids"),
             (bad_prob, "line 5, column prob_real: '1.5' is not a probability"),
             (runs["a"], f"{runs['a']}: given more than once")]
    for folder, message in cases:
        assert compare(runs["a"], folder, "--out", tmp_path / "cmp") == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_a_filled_out_is_left_byte_for_byte(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.csv").write_text("mine\n")
    assert compare(runs["a"], runs["b"], "--out", out, "--bootstrap", "20") == 2
    err = capsys.readouterr().err
    assert "not empty and not a compare run folder" in err and "--overwrite" in err
    assert (out / "compare.csv").read_text() == "mine\n"
    assert compare(runs["a"], runs["b"], "--out", out, "--bootstrap", "20", "--overwrite") == 0
    assert (out / "compare.csv").read_text().startswith("run,reference,metric")


def test_page_is_well_formed_escapes_a_hostile_run_name_and_links_nothing_outside(runs, tmp_path):
    hostile = tmp_path / HOSTILE
    shutil.copytree(runs["b"], hostile)
    assert compare(runs["a"], hostile, "--out", tmp_path / "cmp", "--bootstrap", "20") == 0
    text = (tmp_path / "cmp" / "compare.html").read_text()
    checker = parse(text)
    assert set(checker.references) == {"compare.csv", "compare.md", "config.json"}
    assert "http://" not in text and "https://" not in text
    assert "&lt;b onmouseover=alert(1)&gt;run &amp; &lt;img src=x onerror=alert(2)&gt;" in text
    assert "<b " not in text and "<img" not in text
    assert 'id="compare-table"' in text and "f1_macro" in text


def test_a_finetune_e2e_run_against_a_head_on_another_cache_of_the_same_data(tiny_bert, tiny_clip, tmp_path):
    """finetune-e2e's folder is read as train-head's: its test ids meet the head's, its seed seeds the bootstrap."""
    data = make_dataset(tmp_path / "data")
    assert main(embed_flags(data, tiny_bert, tiny_clip, tmp_path / "cache")) == 0
    head = train(tmp_path / "cache", tmp_path / "head", "--max-epochs", "2")
    e2e = tmp_path / "e2e"
    assert main(["finetune-e2e", "--data-dir", str(data), "--text-model", str(tiny_bert), "--clip-model",
                 str(tiny_clip), "--num-workers", "0", "--device", "cpu", "--out", str(e2e), "--train-text", "frozen",
                 "--train-image", "frozen", "--batch-size", "8", "--max-epochs", "1", "--seed", "3",
                 "--no-report"]) == 0
    assert compare(e2e, head, "--out", tmp_path / "cmp", "--bootstrap", "50") == 0
    config = json.loads((tmp_path / "cmp" / "config.json").read_text())
    assert [run["command"] for run in config["runs"]] == ["finetune-e2e", "train-head"]
    assert config["compare"]["seed"] == 3  # the reference's training seed
    test_ids = len(pd.read_csv(data / "test.tsv", sep="\t"))
    assert [run["rows"] for run in config["runs"]] == [{"test_rows": test_ids, "shared": test_ids, "unshared": 0}] * 2
    assert set(pd.read_csv(tmp_path / "cmp" / "compare.csv")["rows"]) == {test_ids}


def test_a_repeated_id_is_matched_occurrence_by_occurrence_in_the_references_order(tmp_path):
    def run(name, ids, labels):
        return RunPredictions(name=name, folder=tmp_path / name, command="train-head", class_names=("fake", "real"),
                              ids=np.array(ids, dtype=object), labels=np.array(labels), prob_real=np.full(len(ids), .5),
                              decision_threshold=0.5, tuned_threshold=0.5, seed=0, provenance={})

    reference = run("a", ["p", "q", "p", "r"], [1, 0, 1, 0])
    other = run("b", ["q", "p", "s", "p", "p"], [0, 1, 1, 1, 1])
    rows, counts = match_rows([reference, other], 0)
    assert list(rows["a"]) == [0, 1, 2]  # p, q, p: r is not in b
    assert list(rows["b"]) == [1, 0, 3]  # b's first p, its q, its second p; its third p and s are unshared
    assert counts == {"a": {"test_rows": 4, "shared": 3, "unshared": 1},
                      "b": {"test_rows": 5, "shared": 3, "unshared": 2}}
