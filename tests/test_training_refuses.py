"""Stage two refuses labels it cannot learn or tune on, degenerate temperatures and endless bootstraps."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.bench.synthetic import write_cache
from pipeline.train.bootstrap import MAX_RESAMPLES
from pipeline.train.calibration import TEMPERATURE_RANGE, fit_usable_temperature
from pipeline.train.class_checks import MIN_CALIBRATION_ROWS_PER_CLASS
from tests.helpers import SMALL_FLAGS, small_splits


def _cache(folder, labels=None, rows=None):
    """A synthetic cache; `labels[split]` replaces a split's labels, `rows[split]` keeps its first rows only."""
    splits = small_splits("text", rows=1500)
    for name, value in (labels or {}).items():
        splits[name].labels[:] = value
    for name, count in (rows or {}).items():
        splits[name] = splits[name].subset(slice(0, count))
    write_cache(folder, splits)
    return folder


def _train(cache, out, *flags):
    return main(["train-head", "--cache-dir", str(cache), "--out", str(out), "--max-epochs", "3",
                 "--bootstrap", "0", "--no-report", *SMALL_FLAGS, *flags])


@pytest.mark.parametrize("split", ["val", "train"])
def test_a_train_or_val_split_of_one_class_is_refused_before_training(split, tmp_path, capsys):
    cache = _cache(tmp_path / "cache", labels={split: 0})
    assert _train(cache, tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert f"the {split} split has one class only" in error and "0 real" in error
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_test_split_of_one_class_trains_with_a_warning_printed_and_recorded(tmp_path, capsys):
    cache = _cache(tmp_path / "cache", rows={"test": 1})
    assert _train(cache, tmp_path / "run") == 0
    assert "warning: the test split has one class only" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any("test split has one class only" in line for line in metrics["test"]["warnings"])


def test_calibrating_on_too_few_val_rows_is_refused(tmp_path, capsys):
    rows = 2 * MIN_CALIBRATION_ROWS_PER_CLASS - 2  # too few of at least one class
    cache = _cache(tmp_path / "cache", rows={"val": rows})
    assert _train(cache, tmp_path / "run", "--calibrate", "temperature") == 2
    error = capsys.readouterr().err
    assert "--calibrate temperature" in error and f"at least {MIN_CALIBRATION_ROWS_PER_CLASS} of each class" in error
    assert _train(cache, tmp_path / "run") == 0  # without calibration the same cache trains


def test_a_separable_or_signal_free_val_gives_no_degenerate_temperature():
    labels = np.repeat([0, 1], 50)
    separable = np.where(labels == 1, 3.0, -3.0) + np.linspace(0, 1, 100)
    used, fitted, warning = fit_usable_temperature(separable, labels)  # LBFGS stops wherever the slope fades
    assert fitted < 1 and used == 1.0 and "goes to 0" in warning
    noise = np.random.default_rng(0).normal(0, 1, 100)  # centred within each class: no signal at all
    noise[labels == 1] -= noise[labels == 1].mean()
    noise[labels == 0] -= noise[labels == 0].mean()
    used, fitted, warning = fit_usable_temperature(noise, labels)
    assert fitted > TEMPERATURE_RANGE[1] and used == 1.0 and "towards 0.5" in warning
    honest = np.random.default_rng(1).normal(0, 2, 2000)
    truth = (np.random.default_rng(2).random(2000) < 1 / (1 + np.exp(-honest / 2))).astype(int)
    used, fitted, warning = fit_usable_temperature(honest, truth)  # over-confident by a factor 2
    assert used == fitted == pytest.approx(2, rel=0.15) and warning is None


def test_a_degenerate_temperature_is_not_stored_with_the_head(tmp_path, capsys):
    """A val split the head separates perfectly: the fit runs to T near 0; the run keeps T = 1, says so on the
    terminal and in metrics.json, and the stored probabilities are the raw ones."""
    splits = small_splits("text", rows=1500)
    for split in splits.values():  # separable: the text score alone decides, with a wide margin
        split.text_emb[:, 0] = np.where(split.labels == 1, 20.0, -20.0)
    write_cache(tmp_path / "cache", splits)
    assert _train(tmp_path / "cache", tmp_path / "cal", "--calibrate", "temperature") == 0
    printed = capsys.readouterr().out
    assert "warning: --calibrate temperature: the fit gave T = " in printed
    calibration = json.loads((tmp_path / "cal" / "metrics.json").read_text())["val"]["calibration"]
    assert calibration["temperature"] == 1.0 and calibration["fitted_temperature"] < 1
    assert "already on its right side of 0.5" in calibration["warning"]
    stored = json.loads((tmp_path / "cal" / "head" / "head_config.json").read_text())["extra"]["calibration"]
    assert stored["temperature"] == 1.0
    assert main(["report", str(tmp_path / "cal")]) == 0
    assert "the fit gave T = " in (tmp_path / "cal" / "report.html").read_text()  # the page says it too
    assert _train(tmp_path / "cache", tmp_path / "raw") == 0
    calibrated = pd.read_csv(tmp_path / "cal" / "predictions_test.csv")["prob_real"]
    raw = pd.read_csv(tmp_path / "raw" / "predictions_test.csv")["prob_real"]
    np.testing.assert_allclose(calibrated, raw, atol=1e-6)  # float64 sigmoid vs float32 softmax


def test_bootstrap_beyond_the_cap_is_refused_naming_it(tmp_path, capsys):
    assert main(["train-head", "--cache-dir", str(tmp_path), "--bootstrap", "1000000000"]) == 2
    error = capsys.readouterr().err
    assert "--bootstrap 1000000000" in error and f"at most {MAX_RESAMPLES}" in error
