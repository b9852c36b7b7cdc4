"""Six classes after training: predict, Classifier, serve, compare and report on a 6-way run of tiny models."""

import base64
import json

import numpy as np
import pandas as pd
import pytest
from conftest import embed_flags, make_dataset

from pipeline import Classifier
from pipeline.__main__ import main
from pipeline.data.classes import FAKEDDIT_CLASS_NAMES
from pipeline.errors import UserError
from pipeline.predict.run import read_results
from tests.helpers import SMALL_FLAGS

SIX = FAKEDDIT_CLASS_NAMES["6_way_label"]
PROBS = [f"prob_{name}" for name in SIX]


def _with_six_way(folder):
    """Every split file gains a 6_way_label: i % 6, so every class is in every split."""
    for split in ("train", "val", "test"):
        path = folder / f"{split}.tsv"
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        frame["6_way_label"] = [str(i % 6) for i in range(len(frame))]
        frame.to_csv(path, sep="\t", index=False)


@pytest.fixture(scope="module")
def six(tmp_path_factory, tiny_bert, tiny_clip):
    root = tmp_path_factory.mktemp("six")
    data = make_dataset(root / "data", counts=(("train", 36), ("val", 12), ("test", 12)))
    _with_six_way(data)
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache") + ["--label-column", "6_way_label"]) == 0
    for name, modalities in (("fusion", "text,image"), ("text", "text")):
        assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / name), *SMALL_FLAGS,
                     "--max-epochs", "3", "--modalities", modalities, "--no-report"]) == 0
    return {"root": root, "data": data, "run": root / "fusion", "text_run": root / "text"}


def _predict(run, data, out, *extra):
    return main(["predict", "--run", str(run), "--input", str(data / "test.tsv"), "--out", str(out),
                 "--image-root", str(data), "--device", "cpu", "--num-workers", "0", *extra])


def test_predict_gives_every_class_probability_as_the_run_scored_it(six, tmp_path):
    out = tmp_path / "six.csv"
    assert _predict(six["run"], six["data"], out) == 0
    got = read_results(out)
    assert list(got.columns) == ["id", *PROBS, "pred", "pred_name", "status", "reason", "label", "correct"]
    np.testing.assert_allclose(got[PROBS].sum(axis=1), 1.0, atol=1e-9)
    saved = pd.read_csv(six["run"] / "predictions_test.csv", dtype={"id": str})
    assert list(got["id"]) == list(saved["id"])
    np.testing.assert_allclose(got[PROBS].to_numpy(), saved[PROBS].to_numpy(), atol=1e-5)
    assert list(got["pred"]) == list(got[PROBS].to_numpy().argmax(axis=1)) == list(saved["pred"])
    assert list(got["pred_name"]) == [SIX[p] for p in got["pred"]]
    # The labels come from the column the run learned (6_way_label), not 2_way_label.
    expected = pd.read_csv(six["data"] / "test.tsv", sep="\t", dtype=str).set_index("id")["6_way_label"]
    assert list(got["label"]) == [int(expected[key]) for key in got["id"]]
    metrics = json.loads((tmp_path / "six.csv.metrics.json").read_text())
    assert set(metrics["per_class"]) == set(SIX) and np.array(metrics["confusion"]).shape == (6, 6)
    assert np.array(metrics["confusion"]).sum() == len(got)
    assert metrics["accuracy"] == pytest.approx(float(got["correct"].mean()), abs=1e-12)


def test_a_threshold_is_refused_for_more_than_two_classes(six, tmp_path, capsys):
    assert _predict(six["run"], six["data"], tmp_path / "t.csv", "--threshold", "0.3") == 2
    assert "6 classes" in capsys.readouterr().err
    with pytest.raises(UserError, match="highest probability"):
        Classifier.from_run(six["run"], device="cpu", threshold="tuned")


def test_classifier_and_serve_agree_with_predict(six, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pipeline.serve.app import create_app
    from pipeline.serve.config import ServeConfig

    assert _predict(six["run"], six["data"], tmp_path / "cli.csv") == 0
    cli = read_results(tmp_path / "cli.csv").set_index("id")
    rows = pd.read_csv(six["data"] / "test.tsv", sep="\t", dtype=str)
    classifier = Classifier.from_run(six["run"], device="cpu", batch_size=5)
    api = classifier.predict(rows["clean_title"], [str(six["data"] / p) for p in rows["local_image_path"]],
                             ids=rows["id"], labels=rows["6_way_label"].astype(int))
    np.testing.assert_allclose(api[PROBS].to_numpy(), cli.loc[api["id"], PROBS].to_numpy(), atol=1e-5)
    posts = [{"id": r.id, "title": r.clean_title,
              "image": base64.b64encode((six["data"] / r.local_image_path).read_bytes()).decode()}
             for r in rows.itertuples()]
    config = ServeConfig(run=str(six["run"]), device="cpu", max_batch=8)
    with TestClient(create_app(classifier, config, None)) as client:
        body = client.post("/v1/predict", json={"posts": posts}).json()
        model = client.get("/v1/model").json()
    assert body["model"]["classes"] == list(SIX) and model["threshold"] is None
    for answer in body["predictions"]:
        want = cli.loc[answer["id"]]
        assert list(answer["probs"]) == list(SIX)
        assert sum(answer["probs"].values()) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose([answer["probs"][n] for n in SIX], want[PROBS].to_numpy(float), atol=1e-5)
        assert answer["pred"] == int(want["pred"]) and answer["pred_name"] == want["pred_name"]


def test_compare_and_report_read_six_class_runs(six, tmp_path):
    out = tmp_path / "compare"
    assert main(["compare", str(six["run"]), str(six["text_run"]), "--out", str(out)]) == 0
    table = pd.read_csv(out / "compare.csv")
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == list(SIX)
    page = (out / "compare.html").read_text()
    assert "f1_weighted" in page and "f1_fake" not in page
    assert set(table["metric"]) == {"accuracy", "f1_macro", "f1_weighted"} and (table["rows"] == 12).all()
    assert main(["compare", str(six["run"]), str(six["text_run"]), "--out", str(tmp_path / "tuned"),
                 "--threshold", "tuned"]) == 2  # K > 2 decides by the argmax: a threshold would be ignored
    assert main(["report", str(six["run"]), "--out", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    assert all(name in page for name in SIX)
