import json

import pandas as pd

from pipeline.__main__ import main
from pipeline.runs.record import read_run
from pipeline.train.ablate import NO_FUSION, markdown_table, summarize, variants
from tests.helpers import SMALL_FLAGS


def test_single_modalities_are_not_repeated_per_fusion_kind():
    grid = variants(["text", "image", "image,text"], ["concat", "max", "mean", "gated"])
    assert grid == [(("text",), NO_FUSION), (("image",), NO_FUSION), (("text", "image"), "concat"),
                    (("text", "image"), "max"), (("text", "image"), "mean"), (("text", "image"), "gated")]


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = pd.DataFrame({"modalities": ["text"] * 3, "fusion": [NO_FUSION] * 3, "val_f1_macro": [0.5, 0.6, 0.7],
                         "test_f1_macro": [0.4] * 3, "val_accuracy": [0.5] * 3, "test_accuracy": [0.5] * 3})
    table = markdown_table(summarize(runs))
    assert "| text | - | 3 | 0.6000 ± 0.1000 | 0.4000 ± 0.0000 |" in table


def test_ablate_writes_one_row_per_run_and_a_summary(xor_cache, tmp_path, capsys):
    out = tmp_path / "ablation"
    code = main(["ablate", "--cache-dir", str(xor_cache), "--out", str(out), "--fusions", "concat", "max",
                 "--seeds", "0", "1", "--max-epochs", "3", "--patience", "1", *SMALL_FLAGS])
    assert code == 0
    runs = pd.read_csv(out / "ablation.csv")
    assert len(runs) == (2 + 2) * 2  # text, image, text+image x {concat, max}; x 2 seeds
    assert {"val_f1_macro", "test_accuracy", "test_tuned_f1_macro", "test_roc_auc"} <= set(runs.columns)
    table = (out / "ablation.md").read_text()
    assert len(table.strip().splitlines()) == 2 + 4 and "±" in table
    assert table in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["grid"]["seeds"] == [0, 1]
    record = read_run(out)  # one record for the whole grid: no single decision threshold
    assert record.kind == "ablate" and record.threshold is None and record.cache["dir"] == str(xor_cache)
    assert {"test_decision_threshold", "val_decision_threshold"} <= set(runs.columns)  # each run's own
