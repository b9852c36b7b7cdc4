"""In-process runs of `python -m pipeline train-head` and `ablate` on a tiny cache."""

import json
import re

import pandas as pd
import pytest
import torch

from pipeline.__main__ import main
from pipeline.model.head import load_head
from pipeline.train.fit import load_cached_splits, predict, to_features
from pipeline.train.metrics import compute_metrics
from pipeline.train.run_folder import FILES
from tests.helpers import SMALL_FLAGS

REQUIRED = ("accuracy", "f1_macro", "f1_fake", "f1_real", "precision", "recall", "roc_auc", "loss", "threshold")


def test_train_head_writes_the_run_folder_and_the_best_head(xor_cache, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train-head", "--cache-dir", str(xor_cache), "--out", str(out), "--max-epochs", "12",
                 "--patience", "3", *SMALL_FLAGS])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Validation metrics: {" in printed and "Test metrics: {" in printed and str(out) in printed
    for name in FILES:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(REQUIRED) <= set(metrics[split]) and set(REQUIRED) <= set(metrics[split]["tuned"])
        assert metrics[split]["threshold"] == 0.5
    assert json.loads((out / "config.json").read_text())["cache"]["fingerprint"] == "in-memory"
    predictions = pd.read_csv(out / "predictions_test.csv")
    assert list(predictions.columns)[:4] == ["id", "label", "prob_real", "pred"]
    # The saved head is the best epoch's: its validation score is the best one logged.
    epochs = pd.read_csv(out / "epochs.csv")
    manifest, splits = load_cached_splits(xor_cache)
    head = load_head(out / "head", dims=manifest["dims"])
    prob, _ = predict(head, to_features(splits["val"], "cpu"), torch.from_numpy(splits["val"].labels), None)
    f1 = compute_metrics(splits["val"].labels, prob)["f1_macro"]
    assert f1 == pytest.approx(epochs["val_f1_macro"].max()) == pytest.approx(metrics["val"]["f1_macro"])


@pytest.mark.parametrize("flag, value, message", [
    ("--fusion", "sum", "concat, max, mean, gated"),
    ("--modalities", "text,audio", "text, image"),
    ("--class-weights", "heavy", "balanced, none"),
    ("--metric", "auc", "f1_macro"),
    ("--device", "tpu", "--device 'tpu': not a device; use one of: auto, cpu, cuda (or cuda:N)"),
    ("--threads", "-1", "--threads -1: needs to be a whole number of at least 0"),
    ("--lr", "none", "--lr None: needs to be a finite number above 0"),
])
def test_bad_flag_value_exits_2_with_the_valid_choices(xor_cache, tmp_path, capsys, flag, value, message):
    code = main(["train-head", "--cache-dir", str(xor_cache), "--out", str(tmp_path), flag, value])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error:") and message in error


def test_every_bad_flag_is_reported_at_once(xor_cache, tmp_path, capsys):
    code = main(["train-head", "--cache-dir", str(xor_cache), "--out", str(tmp_path),
                 "--fusion", "sum", "--proj-dim", "0", "--lr", "-1", "--metric", "auc"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines[0] == "error: "
    # One line per problem, each "--flag value: what is wrong; what to do".
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["--fusion 'sum'", "--proj-dim 0", "--lr -1.0",
                                                                  "--metric 'auc'"]
    assert all("; " in line for line in lines[1:])


def test_not_a_cache_exits_2(tmp_path, capsys):
    assert main(["train-head", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "no manifest" in capsys.readouterr().err



# --- smaller frictions (issue 19) -----------------------------------------------------------------

def test_ablate_takes_seeds_and_fusions_comma_separated_as_other_list_flags_do(xor_cache, tmp_path):
    out = tmp_path / "ablation"
    assert main(["ablate", "--cache-dir", str(xor_cache), "--out", str(out), "--modalities", "text", "text,image",
                 "--fusions", "concat,gated", "--seeds", "0,1", "--max-epochs", "1", "--no-report",
                 "--reference", "text,image/gated", *SMALL_FLAGS]) == 0
    runs = pd.read_csv(out / "ablation.csv")
    assert sorted(set(runs["seed"])) == [0, 1] and set(runs["fusion"]) == {"-", "concat", "gated"}
    assert json.loads((out / "config.json").read_text())["grid"]["reference"] == "text+image/gated"


@pytest.mark.parametrize("spelling", ["text,image/gated", "image,text/gated", "text+image/gated"])
def test_reference_is_spelled_as_modalities_are_and_the_old_spelling_still_works(spelling):
    from pipeline.train.ablate import find_reference, variants

    grid = variants(["text", "text,image"], ["concat", "gated"])
    assert find_reference(grid, spelling) == (("text", "image"), "gated")


def test_a_bad_seed_list_exits_2_naming_both_spellings(xor_cache, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["ablate", "--cache-dir", str(xor_cache), "--out", str(tmp_path / "a"), "--seeds", "0,x"])
    assert stopped.value.code == 2 and "give seeds as 0 1 2 or 0,1,2" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-head", "ablate"])
def test_training_without_cache_dir_is_refused_instead_of_reading_runs_cache(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([command])
    assert stopped.value.code == 2 and "required: --cache-dir" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["embed", "predict", "finetune-e2e", "train-head", "doctor"])
def test_help_never_states_a_default_twice_or_none_for_a_required_flag(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert not re.search(r"\(default:[^()]*\) \(default:", text), text  # once, never "(default: x) (default: None)"
    if command == "embed":  # a required flag has no default to show
        assert "where the Parquet cache goes (default" not in text and "(default: --data-dir)" in text
    assert text.count("(default:") >= 3  # the defaults are still shown where help does not say them


def test_loading_a_model_prints_no_transformers_load_report(tmp_path, capfd):
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from pipeline.model.text_encoder import load_text_model

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")  # classifier.* keys: UNEXPECTED
    capfd.readouterr()
    hf_logging.set_verbosity_warning()  # as a Python caller of Classifier has it
    load_text_model(tmp_path / "bert", "cls")
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert hf_logging.get_verbosity() == hf_logging.WARNING  # the caller's setting is given back
