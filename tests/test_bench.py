"""`make bench` end to end at toy sizes on the tiny models: every section runs and writes its figures."""

import json
import shutil

import pytest

from pipeline.__main__ import main

pytestmark = pytest.mark.slow


def test_bench_writes_every_figure(tiny_bert, tiny_clip, dataset, tmp_path):
    shutil.copytree(tiny_clip, dataset / "clip")
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), "--configs", "demo", "--demo-dir", str(dataset),
                 "--text-model", str(tiny_bert), "--rows-demo", "24", "--photos", "2", "--rss-rows", "10",
                 "--load-rows", "500", "--head-rows", "2000", "--batch-size", "8", "--doctor-rows", "2000,400",
                 "--previews", "3", "--main-loop-batches", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    demo = results["embed"]["demo"]
    assert demo["rows_per_s"] > 0 and demo["efficiency"] > 0 and demo["speedup_vs_naive"] > 0
    assert len(demo["efficiency_rounds"]) == 3  # the ratio is of medians over alternating rounds
    assert min(demo["efficiency_rounds"]) <= demo["efficiency"] * 1.001 and \
        demo["efficiency"] <= max(demo["efficiency_rounds"]) * 1.001
    assert results["predict"]["demo"]["rows_per_s"] > 0 and results["predict"]["demo"]["vs_embed"] > 0
    serve = results["serve"]
    assert serve["rows_per_s"] > 0 and serve["vs_predict"] > 0 and 0 < serve["p50_ms"] <= serve["p99_ms"]
    assert serve["matches_predict"] == 1.0  # every served answer is predict's, in every round
    assert serve["rounds"] == len(serve["vs_predict_rounds"]) == 3
    assert results["decode"]["cosine_min"] > 0.99
    assert results["decode"]["max_level_diff"] <= 2  # our worker against the frozen reference loader
    assert set(results["decode"]["vs_reference"]) == {"preview", "photo"}
    assert all(ratio > 0 for ratio in results["decode"]["vs_reference"].values())
    assert results["embed"]["main_loop_ms_per_batch"] > 0 and results["embed"]["main_loop_batch_size"] == 256
    assert len(results["memory"]["peak_rss_mb"]) == 2
    assert results["cache"]["bytes_per_row_float16"] < results["cache"]["bytes_per_row_float32"]
    assert results["head"]["seconds_100k"] > 0 and results["head"]["speedup_vs_e2e"] > 0
    assert results["head"]["busy_vs_quiet"] == pytest.approx(
        results["head"]["seconds_100k_busy"] / results["head"]["seconds_100k"], rel=0.05)
    assert results["doctor"]["seconds_100k_20k"] > 0 and results["doctor"]["found"] == results["doctor"]["planted"]
    markdown = (out / "results.md").read_text()
    assert "| `head.seconds_100k` |" in markdown
    assert "| `decode.vs_reference.preview` |" in markdown and "<= 0.65 |" in markdown
    assert "| `decode.ms_per_image.preview.ms_ours` |" in markdown  # a leaf named preview gets no target
    assert "| `decode.images.preview` | 3 |  |" in markdown
