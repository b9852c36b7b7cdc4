"""The run record and the validated readers: every file of a run folder or cache that we read back is
checked field by field (a clear error naming the file and the field, never a traceback), a folder of
today's format (tests/fixtures/legacy_run, no run.json) still reports and predicts, and one threshold
rule decides in predictions files, report, predict and `Classifier`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import embed_flags, make_dataset

from pipeline import Classifier
from pipeline.__main__ import main
from pipeline.embed import cache
from pipeline.errors import UserError
from pipeline.predict.run import read_results
from pipeline.runs import threshold as rule
from pipeline.runs.record import read_run
from tests.helpers import SMALL_FLAGS

LEGACY = Path(__file__).parent / "fixtures" / "legacy_run"


@pytest.fixture
def legacy(tmp_path):
    """A writable copy of the fixture of today's format."""
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy"))


def edit_json(path, change):
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def put(key_path, value):
    """A change that sets payload[a][b]... = value for key_path 'a.b...'."""
    def change(payload):
        *parents, last = key_path.split(".")
        for key in parents:
            payload = payload[key]
        payload[last] = value
    return change


def drop(key):
    return lambda payload: payload.pop(key)


def replace_text(old, new):
    return lambda path: path.write_text(path.read_text().replace(old, new, 1))


def as_json(change):
    return lambda path: edit_json(path, change)


def text(content):
    return lambda path: path.write_text(content)


# (file in the run folder, how it is damaged, what the error must say besides the file's name)
PREDICT_CASES = {
    "encoders: a field missing": ("encoders.json", as_json(drop("pooling")), "'pooling' is missing"),
    "encoders: wrong type": ("encoders.json", as_json(put("max_length", "128")), "'max_length' is '128'"),
    "encoders: image.size 0": ("encoders.json", as_json(put("image.size", 0)), "'image.size' is 0"),
    "encoders: image.size huge": ("encoders.json", as_json(put("image.size", 10 ** 9)), "'image.size' is 1000000000"),
    "encoders: image.mean of length 2": ("encoders.json", as_json(put("image.mean", [0.5, 0.5])), "'image.mean'"),
    "encoders: pooling not a choice": ("encoders.json", as_json(put("pooling", "avg")), "not one of: cls, mean"),
    "encoders: embedding not a choice": ("encoders.json", as_json(put("clip_embedding", "middle")),
                                         "'clip_embedding' is 'middle', not one of: projected, pooled, cls"),
    "encoders: threshold NaN": ("encoders.json", as_json(put("threshold", float("nan"))),
                                "'threshold' is nan, expected a number"),
    "encoders: threshold 7": ("encoders.json", as_json(put("threshold", 7)), "'threshold' is 7, outside [0, 1]"),
    "encoders: a model entry not an object": ("encoders.json", as_json(put("text_model", "bert")),
                                              "'text_model' is 'bert', expected an object"),
    "encoders: not JSON": ("encoders.json", text("{"), "not valid JSON"),
    "head_config: temperature true": ("head/head_config.json", as_json(
        put("extra.calibration", {"method": "temperature", "temperature": True})),
        "'extra.calibration.temperature' is true, expected a number"),
    "head_config: temperature 0": ("head/head_config.json", as_json(put("extra.calibration", {"temperature": 0})),
                                   "'extra.calibration.temperature' is 0, expected a positive number"),
    "head_config: extra not an object": ("head/head_config.json", as_json(put("extra", [1])),
                                         "'extra' is [1], expected an object"),
    "head_config: calibration not an object": ("head/head_config.json", as_json(put("extra.calibration", "T=2")),
                                               "'extra.calibration' is 'T=2', expected an object"),
    "run.json: threshold 7": ("run.json", as_json(put("threshold.threshold", 7)),
                              "'threshold.threshold' is 7, outside [0, 1]"),
    "run.json: kind unknown": ("run.json", as_json(put("kind", "mystery")), "'kind' is 'mystery', not one of"),
    "run.json: a newer format": ("run.json", as_json(put("format_version", 99)), "format_version 99"),
    "metrics (legacy): not JSON": ("metrics.json", text("nan nan"), "not valid JSON"),
}

REPORT_CASES = {
    "metrics: not JSON": ("metrics.json", text("{'val': 1}"), "not valid JSON"),
    "metrics: a list": ("metrics.json", text("[1, 2]"), "expected a JSON object, found list"),
    "metrics: val a list": ("metrics.json", as_json(put("val", [])), "'val' is [], expected an object"),
    "metrics: threshold text": ("metrics.json", as_json(put("test.tuned.threshold", "0.3")),
                                "'test.tuned.threshold' is '0.3', expected a number"),
    "metrics: confusion matrix wrong": ("metrics.json", as_json(put("val.confusion_matrix", [[1, 2]])),
                                        "'val.confusion_matrix' is not a 2 x 2 table"),
    "config: not JSON": ("config.json", text("command = train-head"), "not valid JSON"),
    "config: cache a string": ("config.json", as_json(put("cache", "/tmp/cache")),
                               "'cache' is '/tmp/cache', expected an object"),
    "config: command unknown": ("config.json", as_json(put("command", "train")), "'command' is 'train'"),
    "predictions: a missing column": ("predictions_test.csv", replace_text("prob_real", "probability"),
                                      "no column prob_real"),
    "predictions: label 7": ("predictions_test.csv", replace_text("te0000,0,", "te0000,7,"),
                             "line 2, column label: '7' is not 0 or 1"),
    "predictions: text probabilities": ("predictions_test.csv", replace_text(",0.4622199833393097,", ",high,"),
                                        "column prob_real: 'high' is not a probability"),
    "skipped.tsv without its columns": ("skipped.tsv", text("row\twhy\n1\tbroken\n"), "no column split, id, reason"),
}


@pytest.mark.parametrize("case", PREDICT_CASES)
def test_predict_refuses_a_damaged_run_file_naming_the_file_and_the_field(case, legacy, tiny_bert, tiny_clip, tmp_path,
                                                                         capsys):
    name, damage, message = PREDICT_CASES[case]
    if name == "run.json":
        legacy = _with_run_json(legacy)
    damage(legacy / name)
    # The encoders the fixture was made with (its encoders.json names their paths on the machine that made it),
    # so that what is refused is the damaged file, whatever comes after the encoder check.
    code = main(["predict", "--run", str(legacy), "--input", str(legacy / "epochs.csv"), "--out",
                 str(tmp_path / "out.csv"), "--device", "cpu", "--text-model", str(tiny_bert),
                 "--clip-model", str(tiny_clip)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"error: {legacy / name}: " in err and message in err, err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report_refuses_a_damaged_run_file_naming_the_file_and_the_field(case, legacy, capsys):
    name, damage, message = REPORT_CASES[case]
    if not (legacy / name).exists():
        (legacy / name).write_text("split\tid\treason\n")
    damage(legacy / name)
    code = main(["report", str(legacy)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"error: {legacy / name}: " in err and message in err, err
    assert not (legacy / "report.html").exists()


def _with_run_json(folder):
    """The legacy copy given the run.json that today's train-head writes."""
    from pipeline.runs.record import write_run_record

    record = read_run(folder)
    write_run_record(folder, "train-head", cache=record.cache, encoders=record.encoders,
                     decision=rule.Decision.from_dict(record.threshold), command_line=["test"])
    return folder


@pytest.mark.parametrize("damage,message", [
    (lambda: None, None),
    (lambda csv: csv.write_text("modalities,fusion\ntext,-\n"), "no column seed, best_epoch"),
    (lambda csv: csv.write_text(csv.read_text().replace("\ntext,-,0,", "\ntext,-,zero,", 1)),
     "column seed: 'zero' is not a whole number"),
])
def test_ablation_csv_without_its_columns_is_refused(damage, message, tmp_path, capsys):
    folder = tmp_path / "ablation"
    folder.mkdir()
    rows = [{"modalities": "text", "fusion": "-", "seed": 0, "best_epoch": 3, "val_f1_macro": 0.7,
             "test_f1_macro": 0.6, "val_accuracy": 0.7, "test_accuracy": 0.6}]
    pd.DataFrame(rows).to_csv(folder / "ablation.csv", index=False)
    if message is None:  # the well-formed table reports
        assert main(["report", str(folder)]) == 0 and (folder / "report.html").is_file()
        return
    damage(folder / "ablation.csv")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"error: {folder / 'ablation.csv'}: " in err and message in err and "Traceback" not in err


def test_comparisons_csv_without_its_columns_is_refused(tmp_path, capsys):
    """The ablation page's paired columns come from comparisons.csv, read back through its checked reader."""
    folder = tmp_path / "ablation"
    folder.mkdir()
    rows = [{"modalities": "text", "fusion": "-", "seed": 0, "best_epoch": 3, "val_f1_macro": 0.7,
             "test_f1_macro": 0.6, "val_accuracy": 0.7, "test_accuracy": 0.6}]
    pd.DataFrame(rows).to_csv(folder / "ablation.csv", index=False)
    (folder / "comparisons.csv").write_text("modalities,fusion,reference,test_f1_macro_diff\ntext,-,text,2.5\n")
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"error: {folder / 'comparisons.csv'}: no column test_f1_macro_diff_low" in err and "Traceback" not in err


def test_manifest_splits_as_a_list_is_refused(tmp_path):
    path = tmp_path / cache.MANIFEST_NAME
    path.write_text(json.dumps({"format_version": cache.FORMAT_VERSION, "dims": {"text": 4, "image": 4},
                                "splits": ["train", "val"]}))
    with pytest.raises(UserError, match=r"manifest\.json: splits is list, expected an object"):
        cache.read_manifest(tmp_path)


# The one threshold rule.

@pytest.mark.parametrize("rows_per_class,source", [
    ((rule.MIN_ROWS_PER_CLASS, rule.MIN_ROWS_PER_CLASS), "tuned"),
    ((rule.MIN_ROWS_PER_CLASS - 1, 500), "default"),
    ((500, rule.MIN_ROWS_PER_CLASS - 1), "default"),
    ((0, 500), "default"),
])
def test_the_decision_threshold_is_the_tuned_one_only_on_enough_rows_of_each_class(rows_per_class, source):
    decision = rule.decide(0.29, rows_per_class)
    assert decision.source == source and decision.tuned == 0.29
    assert decision.threshold == (0.29 if source == "tuned" else 0.5)
    assert rule.Decision.from_dict(decision.as_dict()) == decision


@pytest.fixture(scope="module")
def big_val_run(tmp_path_factory, tiny_bert, tiny_clip):
    """A train-head run whose val split is large enough for the tuned threshold to be used."""
    root = tmp_path_factory.mktemp("records")
    data = make_dataset(root / "data", counts=(("train", 24), ("val", 2 * rule.MIN_ROWS_PER_CLASS), ("test", 16)))
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache")) == 0
    assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / "run"), *SMALL_FLAGS,
                 "--max-epochs", "3", "--no-report"]) == 0
    return {"root": root, "data": data, "run": root / "run"}


def test_train_head_writes_its_run_record(big_val_run):
    run = big_val_run["run"]
    record = read_run(run)
    manifest = cache.read_manifest(big_val_run["root"] / "cache")
    encoders = json.loads((run / "encoders.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert record.kind == "train-head" and record.format_version == 1 and not record.legacy
    assert record.cache == {"dir": str(big_val_run["root"] / "cache"), "fingerprint": manifest["fingerprint"]}
    assert record.encoders == {k: v for k, v in encoders.items() if k not in ("class_names", "threshold")}
    assert record.label_column == "2_way_label" and record.class_names == ("fake", "real")
    assert record.command_line[:4] == ["python", "-m", "pipeline", "train-head"]
    assert record.threshold["rows_per_class"] == [rule.MIN_ROWS_PER_CLASS] * 2
    assert record.threshold["source"] == "tuned" and record.threshold["tuned_on"] == "val"
    assert record.threshold["tuned"] == metrics["test"]["tuned"]["threshold"] == encoders["threshold"]
    assert metrics["test"]["decision"] == record.threshold  # metrics.json says which threshold decides
    assert {"accuracy", "f1_macro", "threshold", "tuned"} <= set(metrics["test"])  # today's keys stay


@pytest.mark.parametrize("which", ["big_val_run", "small_val_run"])
def test_predict_and_predictions_test_csv_agree_on_every_row(which, request, tmp_path):
    run = request.getfixturevalue("big_val_run" if which == "big_val_run" else "small_val_run")
    record = read_run(run["run"])
    assert record.threshold["source"] == ("tuned" if which == "big_val_run" else "default")
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run["run"]), "--input", str(run["data"] / "test.tsv"), "--out", str(out),
                 "--image-root", str(run["data"]), "--device", "cpu", "--num-workers", "0"]) == 0
    got, saved = read_results(out), pd.read_csv(run["run"] / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(saved["id"])
    assert list(got["pred"]) == list(saved["pred"])  # the same post gets the same class everywhere
    assert list(saved["pred"]) == list((saved["prob_real"] > record.decision_threshold).astype(int))
    assert list(saved["pred_tuned"]) == list((saved["prob_real"] > record.tuned_threshold).astype(int))
    assert list(saved["pred_at_0.5"]) == list((saved["prob_real"] > 0.5).astype(int))
    clf = Classifier.from_run(run["run"], device="cpu")
    assert clf.threshold == record.decision_threshold
    assert Classifier.from_run(run["run"], device="cpu", threshold="tuned").threshold == record.tuned_threshold


@pytest.fixture(scope="module")
def small_val_run(tmp_path_factory, tiny_bert, tiny_clip):
    root = tmp_path_factory.mktemp("records-small")
    data = make_dataset(root / "data")  # 8 val rows: too few to trust a tuned threshold
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache")) == 0
    assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / "run"), *SMALL_FLAGS,
                 "--max-epochs", "3", "--no-report"]) == 0
    return {"root": root, "data": data, "run": root / "run"}


# A run folder of today's format (no run.json).

def test_a_legacy_folder_gets_its_record_inferred_once():
    record = read_run(LEGACY)
    config = json.loads((LEGACY / "config.json").read_text())
    assert record.legacy and record.kind == "train-head" and record.pipeline_version == "0.1.0"
    assert record.cache == {"dir": config["cache"]["dir"], "fingerprint": config["cache"]["fingerprint"]}
    assert record.threshold["rows_per_class"] == [4, 4] and record.threshold["source"] == "default"
    assert record.decision_threshold == 0.5
    assert record.encoders["pooling"] == "cls"


def test_a_legacy_folder_still_reports(legacy):
    assert main(["report", str(legacy)]) == 0
    page = (legacy / "report.html").read_text()
    assert "train-head: legacy" in page and "metrics-table" in page
    assert not (legacy / "run.json").exists()  # reading a folder never rewrites it


def test_a_legacy_folder_still_predicts_its_own_probabilities(legacy, tiny_bert, tiny_clip, tmp_path):
    """The fixture's encoders were conftest's tiny models (same seeds, same bytes) and its test split
    conftest's default data set, so predict gives back the probabilities the old run saved."""
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(legacy), "--input", str(data / "test.tsv"), "--out", str(out),
                 "--image-root", str(data), "--text-model", str(tiny_bert), "--clip-model", str(tiny_clip),
                 "--device", "cpu", "--num-workers", "0"]) == 0
    got, saved = read_results(out), pd.read_csv(LEGACY / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(saved["id"])
    np.testing.assert_allclose(got["prob_real"], saved["prob_real"], atol=1e-5)
    assert list(got["pred"]) == list(saved["pred"])  # today's files decided at 0.5; so does the rule here
    assert json.loads(Path(f"{out}.meta.json").read_text())["warnings"] == []  # the same encoders by content


def test_a_legacy_folder_still_compares(legacy, tmp_path, capsys):
    """compare reads a folder of today's format through the inferred record: against a copy of itself every
    difference is 0 on all its test rows."""
    twin = Path(shutil.copytree(legacy, tmp_path / "twin"))
    assert main(["compare", str(legacy), str(twin), "--out", str(tmp_path / "cmp"), "--bootstrap", "50"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    rows = len(pd.read_csv(LEGACY / "predictions_test.csv"))
    assert (table["difference"] == 0).all() and (table["rows"] == rows).all()
    assert not (legacy / "run.json").exists() and "0 unshared" in capsys.readouterr().out


def test_a_legacy_finetune_e2e_folder_is_known_by_its_command(legacy):
    """finetune-e2e folders of today's format have no run.json either: their config's command says the kind,
    and its data flags say which split files the report's worst errors come from."""
    edit_json(legacy / "config.json", put("command", "finetune-e2e"))
    edit_json(legacy / "config.json", put("data", {"data_dir": "/data", "image_root": None, "image_pattern": "x"}))
    record = read_run(legacy)
    assert record.kind == "finetune-e2e" and record.legacy
    assert record.data == {"data_dir": "/data", "image_root": None, "image_pattern": "x"}


def test_a_compare_record_round_trips_through_the_public_api(tmp_path):
    """What another command (compare) writes and reads: a record without cache, encoders or threshold."""
    from pipeline.runs.record import write_run_record

    written = write_run_record(tmp_path, "compare", command_line=["python", "-m", "pipeline", "compare", "a", "b"])
    read = read_run(tmp_path)
    assert read == written and read.kind == "compare" and read.threshold is None
    assert read.decision_threshold == 0.5 and read.command_line[3] == "compare"
    with pytest.raises(ValueError):
        write_run_record(tmp_path, "train")  # our own bug, not a user's: the kinds are fixed


def test_a_kept_predict_part_with_other_ids_is_an_error_not_a_traceback(small_val_run, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run, data = small_val_run["run"], small_val_run["data"]
    flags = ["predict", "--run", str(run), "--input", str(data / "test.tsv"), "--out", str(tmp_path / "p.csv"),
             "--image-root", str(data), "--device", "cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "parts")]
    assert main(flags) == 0
    part = next((tmp_path / "parts").rglob("part-00000.parquet"))
    table = pq.read_table(part)
    ids = table.column("id").to_pylist()
    table = table.set_column(table.schema.get_field_index("id"), table.schema.field("id"),
                             pa.array(ids[::-1], table.schema.field("id").type))
    pq.write_table(table, part)  # its metadata kept: only the ids are another order
    capsys.readouterr()
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert f"error: {part}: does not hold rows 1-" in err and "(the ids differ)" in err and "Traceback" not in err
