"""`python -m pipeline.bench.serve`: the serve figure alone, repeated on one embedded set of rows."""

import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from pipeline.bench.serve import serve_alone  # noqa: E402

pytestmark = pytest.mark.slow


def test_serve_alone_repeats_the_figure_on_the_same_rows(tiny_bert, tiny_clip, dataset):
    shutil.copytree(tiny_clip, dataset / "clip")
    shown = []
    results = serve_alone(repeats=2, rows=24, demo_dir=dataset, text_model=str(tiny_bert), log=shown.append)
    assert len(results) == 2 and shown == results
    for result in results:
        assert result["rows"] == 48  # every row twice
        assert result["rows_per_s"] > 0 and result["predict_rows_per_s_models_loaded"] > 0
        assert result["matches_predict"] == 1.0
