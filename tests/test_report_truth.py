"""A report tells the truth about its own run (issue 20, item 2): the run's encoders and fingerprint, a banner
when its cache was rebuilt or is gone, doctor findings only when made on the run's own cache."""

import json
import shutil
from html import unescape

import pytest
import torch
from conftest import embed_flags, make_dataset
from transformers import BertModel

from pipeline.__main__ import main
from tests.helpers import SMALL_FLAGS


def _other_text_model(source, folder):
    """Model B: the tiny BERT with other weights (so another content fingerprint)."""
    shutil.copytree(source, folder)
    model = BertModel.from_pretrained(folder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(-1)
    model.save_pretrained(folder)
    return folder


def _train(cache, out):
    assert main(["train-head", "--cache-dir", str(cache), "--out", str(out), "--max-epochs", "2", "--bootstrap", "0",
                 "--no-report", *SMALL_FLAGS]) == 0


def _page(run, tmp_path, name):
    out = tmp_path / f"{name}.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    return unescape(out.read_text())  # the page escapes quotes; the checks read it as shown


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, tiny_bert, tiny_clip):
    """Run A trained on a cache of model A, doctor run on it; then the cache rebuilt with model B, run B on it."""
    root = tmp_path_factory.mktemp("truth")
    data = make_dataset(root / "data")
    bert_b = _other_text_model(tiny_bert, root / "bert-b")
    cache = root / "cache"
    assert main(embed_flags(data, tiny_bert, tiny_clip, cache)) == 0
    fingerprint_a = json.loads((cache / "manifest.json").read_text())["fingerprint"]
    _train(cache, root / "run-a")
    assert main(["doctor", "--cache-dir", str(cache), "--device", "cpu"]) == 0
    assert json.loads((cache / "doctor" / "doctor.json").read_text())["fingerprint"] == fingerprint_a
    before = {path: path.read_bytes() for path in cache.rglob("*") if path.is_file()}
    assert main(embed_flags(data, bert_b, tiny_clip, cache)) == 2  # another model: refused by default ...
    assert {path: path.read_bytes() for path in cache.rglob("*") if path.is_file()} == before  # ... nothing changed
    assert main([*embed_flags(data, bert_b, tiny_clip, cache), "--on-stale", "rebuild"]) == 0
    fingerprint_b = json.loads((cache / "manifest.json").read_text())["fingerprint"]
    assert fingerprint_b != fingerprint_a
    _train(cache, root / "run-b")
    return {"root": root, "data": data, "cache": cache, "bert_a": tiny_bert, "bert_b": bert_b, "a": fingerprint_a,
            "b": fingerprint_b}


def test_run_a_still_predicts_with_its_own_encoders_after_the_rebuild(rebuilt, tmp_path):
    import pandas as pd

    run, out = rebuilt["root"] / "run-a", tmp_path / "a.csv"
    assert main(["predict", "--run", str(run), "--input", str(rebuilt["data"] / "test.tsv"), "--out", str(out),
                 "--image-root", str(rebuilt["data"]), "--device", "cpu", "--num-workers", "0"]) == 0
    predicted = pd.read_csv(out, dtype={"id": str}).set_index("id")
    saved = pd.read_csv(run / "predictions_test.csv", dtype={"id": str}).set_index("id")
    assert (predicted.loc[saved.index, "prob_real"] - saved["prob_real"]).abs().max() < 1e-5
    used = json.dumps(json.loads(out.with_name("a.csv.meta.json").read_text())["encoders"])
    assert str(rebuilt["bert_a"]) in used and str(rebuilt["bert_b"]) not in used  # model A's own encoders


def test_the_report_of_run_a_names_model_a_and_shows_the_banner(rebuilt, tmp_path):
    text = _page(rebuilt["root"] / "run-a", tmp_path, "a")
    assert 'id="cache-banner"' in text and "has been rebuilt since" in text
    assert f"now has fingerprint {rebuilt['b'][:12]}, this run was trained on {rebuilt['a'][:12]}" in text
    assert "Encoders of this run" in text and str(rebuilt["bert_a"]) in text
    assert str(rebuilt["bert_b"]) not in text  # nothing of the cache's current encoders
    assert rebuilt["b"][:12] in text.split('id="cache-banner"')[1].split("</p>")[0]  # only the banner names B
    assert text.count(rebuilt["b"][:12]) == 1
    assert 'id="doctor"' in text and "cross-split pair(s)" in text  # made on run A's own cache: still its data


def test_the_report_of_run_b_has_no_banner_and_hides_the_older_doctor_output(rebuilt, tmp_path):
    text = _page(rebuilt["root"] / "run-b", tmp_path, "b")
    assert 'id="cache-banner"' not in text and str(rebuilt["bert_b"]) in text and str(rebuilt["bert_a"]) not in text
    assert f"was made on cache fingerprint {rebuilt['a'][:12]}, not this run's {rebuilt['b'][:12]}" in text
    assert "cross-split pair(s)" not in text


def test_a_doctor_json_without_a_fingerprint_is_never_taken_for_the_runs(rebuilt, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rebuilt["root"] / "run-b", root / "run-b")
    cache = rebuilt["cache"]
    doctor = json.loads((cache / "doctor" / "doctor.json").read_text())
    backup = (cache / "doctor" / "doctor.json").read_text()
    try:
        del doctor["fingerprint"]  # as doctor.json was written before it recorded one
        (cache / "doctor" / "doctor.json").write_text(json.dumps(doctor))
        text = _page(root / "run-b", tmp_path, "old-doctor")
    finally:
        (cache / "doctor" / "doctor.json").write_text(backup)
    assert "records no cache fingerprint" in text and "cross-split pair(s)" not in text


def test_a_run_whose_cache_is_gone_says_so(rebuilt, tmp_path):
    run = tmp_path / "run-a"
    shutil.copytree(rebuilt["root"] / "run-a", run)
    config = json.loads((run / "config.json").read_text())
    config["cache"]["dir"] = str(tmp_path / "no-such-cache")
    (run / "config.json").write_text(json.dumps(config))
    text = _page(run, tmp_path, "gone")
    assert 'id="cache-banner"' in text and "is gone or unreadable from here" in text
    assert str(rebuilt["bert_a"]) in text and str(rebuilt["bert_b"]) not in text
