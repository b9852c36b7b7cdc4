"""The binary path keeps every metric, key and number it had before N classes (issue 21): a head trained
on a fixed synthetic binary cache writes metrics.json and the predictions files recorded by the code of
that time (tests/fixtures/make_binary_pinned.py), to 1e-6. New keys may be added; none may change or go.

1e-6, not closer: the head trains in float32, and the CPU's matrix kernels differ by instruction set. The
files were written on one of the project's machines; on another (AVX-512 and AMX) the same code gave
probabilities within 1.9e-7 and metrics within 4.1e-8 of them, every class, count and key the same. A
change of the binary path moves these by orders of magnitude more."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.__main__ import main
from pipeline.bench.synthetic import write_cache
from tests.helpers import SMALL_FLAGS, small_splits

PINNED = Path(__file__).parent / "fixtures" / "binary_pinned"
TOLERANCE = 1e-6  # float32 kernels of another instruction set (above)
CASES = {"plain": [], "calibrated": ["--calibrate", "temperature", "--class-weights", "1.0,2.0"]}


def train(root, case):
    cache = root / "cache"
    write_cache(cache, small_splits("both", rows=1200, seed=5, real_share=0.35))
    out = root / "run"
    assert main(["train-head", "--cache-dir", str(cache), "--out", str(out), *SMALL_FLAGS, "--seed", "2",
                 "--bootstrap", "200", "--no-report", *CASES[case]]) == 0
    return out


def assert_contains(pinned, today, where="metrics.json"):
    """Every key of `pinned` is in `today` with the same value (floats to TOLERANCE)."""
    if isinstance(pinned, dict):
        assert isinstance(today, dict), where
        for key, value in pinned.items():
            assert key in today, f"{where}: {key} is gone"
            assert_contains(value, today[key], f"{where}.{key}")
    elif isinstance(pinned, list):
        assert isinstance(today, list) and len(today) == len(pinned), where
        for index, (a, b) in enumerate(zip(pinned, today)):
            assert_contains(a, b, f"{where}[{index}]")
    elif isinstance(pinned, float):
        assert today == pytest.approx(pinned, abs=TOLERANCE, rel=0), where
    else:
        assert today == pinned, where


@pytest.mark.parametrize("case", list(CASES))
def test_binary_metrics_and_predictions_are_unchanged(tmp_path, case):
    run = train(tmp_path, case)
    assert_contains(json.loads((PINNED / f"{case}.metrics.json").read_text()),
                    json.loads((run / "metrics.json").read_text()))
    for split in ("val", "test"):
        pinned = pd.read_csv(PINNED / f"{case}.predictions_{split}.csv")
        today = pd.read_csv(run / f"predictions_{split}.csv")
        assert list(today.columns[:len(pinned.columns)]) == list(pinned.columns)  # new columns only after
        for column in pinned.columns:
            if pinned[column].dtype.kind == "f":
                np.testing.assert_allclose(today[column], pinned[column], rtol=0, atol=TOLERANCE)
            else:
                assert today[column].tolist() == pinned[column].tolist(), column
