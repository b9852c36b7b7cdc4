"""The HTML report: one self-contained, valid, escaped page per run and ablation, checked in a real browser."""

import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from conftest import embed_flags, make_dataset
from PIL import Image

from pipeline.__main__ import main
from pipeline.report.examples import thumbnail
from pipeline.report.markup import fmt
from tests.browser import REQUIRE, chromium_command

VOID = {"meta", "img", "br", "hr", "link", "input"}
HOSTILE = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_clip, tmp_path_factory):
    """A train-head run and an ablation on a tiny cache, each with the report the command writes at the end."""
    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", counts=(("train", 24), ("val", 16), ("test", 16)))
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache")) == 0
    assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / "run"), "--device", "cpu",
                 "--max-epochs", "3"]) == 0
    assert main(["ablate", "--cache-dir", str(root / "cache"), "--out", str(root / "ablation"), "--device", "cpu",
                 "--modalities", "text", "text,image", "--fusions", "concat", "gated", "--seeds", "0", "1",
                 "--max-epochs", "2"]) == 0
    return {"root": root, "data": data, "run": root / "run", "ablation": root / "ablation"}


class TagChecker(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element; collects src/href values."""

    def __init__(self):
        super().__init__()
        self.open, self.references, self.problems = [], [], []

    def handle_starttag(self, tag, attrs):
        self.references += [value for name, value in attrs if name in ("src", "href")]
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.problems.append(tag)


def parse(text):
    checker = TagChecker()
    checker.feed(text)
    checker.close()
    assert not checker.problems and not checker.open, (checker.problems, checker.open)
    return checker


@pytest.mark.parametrize("kind", ["run", "ablation"])
def test_page_is_valid_html_with_no_external_reference(runs, kind):
    text = (runs[kind] / "report.html").read_text()
    references = parse(text).references
    assert any(ref.startswith("data:image/png;base64,") for ref in references)  # plots are inline
    for ref in references:
        assert ref.startswith("data:image/png;base64,") or re.fullmatch(r"[\w.-]+", ref), ref  # no URL, no path
    assert "http://" not in text and "https://" not in text


def test_run_page_holds_every_metric_of_metrics_json(runs):
    text = (runs["run"] / "report.html").read_text()
    metrics = json.loads((runs["run"] / "metrics.json").read_text())
    for split in ("val", "test"):
        groups = metrics[split].get("by_presence", {})
        assert list(groups) == ["both"]  # whole posts only: their metrics are the split's, shown once
        for values in (metrics[split], metrics[split]["tuned"], *groups.values()):
            for name, value in values.items():
                if not isinstance(value, (dict, list)):
                    assert f">{name}<" in text and f">{fmt(value)}<" in text, (split, name, value)


def test_run_page_shows_worst_errors_with_thumbnails_and_the_config(runs):
    text = (runs["run"] / "report.html").read_text()
    predictions = pd.read_csv(runs["run"] / "predictions_test.csv", dtype={"id": str})
    wrong = predictions[predictions["pred"] != predictions["label"]]
    assert text.count('<div class="error">') == min(len(wrong), 24)
    assert text.count('alt="image of ') == min(len(wrong), 24)  # every error row's image loaded safely
    assert "&quot;command&quot;: &quot;train-head&quot;" in text  # the full config, escaped


def test_hostile_title_shows_as_text(runs, tmp_path):
    predictions = pd.read_csv(runs["run"] / "predictions_test.csv", dtype={"id": str})
    worst = predictions.iloc[int(np.argmax(np.abs(predictions["prob_real"] - 0.5)))]
    if worst["pred"] == worst["label"]:  # make the most confident row an error, so it is shown
        predictions.loc[predictions["id"] == worst["id"], "label"] = 1 - worst["label"]
        predictions.to_csv(runs["run"] / "predictions_test.csv", index=False)
    test_file = runs["data"] / "test.tsv"
    original = test_file.read_text()
    lines = original.splitlines()
    lines = [line if not line.startswith(worst["id"] + "\t") else line.replace(
        line.split("\t")[1], HOSTILE) for line in lines]
    test_file.write_text("\n".join(lines) + "\n")
    try:
        assert main(["report", str(runs["run"]), "--out", str(tmp_path / "page.html")]) == 0
    finally:
        test_file.write_text(original)
    text = (tmp_path / "page.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(2)&gt;" in text
    assert "<script" not in text and "onerror=alert" not in text.replace("&lt;img src=x onerror=alert", "")
    parse(text)


def test_thumbnail_never_reads_outside_the_image_root(tmp_path):
    (tmp_path / "root").mkdir()
    Image.new("RGB", (40, 40), (250, 0, 0)).save(tmp_path / "secret.png")
    Image.new("RGB", (40, 40), (0, 250, 0)).save(tmp_path / "root" / "inside.png")
    assert thumbnail(tmp_path / "root", "../secret.png") is None
    assert thumbnail(tmp_path / "root", "inside.png").startswith("data:image/png;base64,")


def test_ablation_page_has_the_table_the_plot_and_every_variant(runs):
    text = (runs["ablation"] / "report.html").read_text()
    assert 'id="metrics-table"' in text and 'alt="test macro-F1 per variant and seed"' in text
    for variant in ("text</td>", "concat</td>", "gated</td>"):
        assert variant in text
    assert (runs["ablation"] / "ablation_f1.png").is_file()  # plots stay PNG files too


def test_ablation_page_shows_the_paired_columns_of_ablation_md_and_links_comparisons(runs, tmp_path):
    text = (runs["ablation"] / "report.html").read_text()
    assert 'href="comparisons.csv"' in text and ">Δ test f1_macro vs text [95% CI]<" in text
    rows = [line.strip("|").split(" | ") for line in (runs["ablation"] / "ablation.md").read_text().splitlines()[2:]]
    assert len(rows) == 3  # text, text+image/concat, text+image/gated
    for cells in rows:
        for cell in (c.strip() for c in cells[-2:]):
            assert f">{cell}<" in text, cell
    assert sum(cell.strip() == "reference" for cells in rows for cell in cells) == 2  # the text row, both columns
    folder = tmp_path / "old_ablation"  # a folder written before comparisons.csv: the page still builds
    shutil.copytree(runs["ablation"], folder)
    (folder / "comparisons.csv").unlink()
    assert main(["report", str(folder)]) == 0
    assert "Δ test" not in (folder / "report.html").read_text()


def test_no_report_flag_and_a_folder_that_is_not_a_run(runs, tmp_path, capsys):
    assert main(["train-head", "--cache-dir", str(runs["root"] / "cache"), "--out", str(tmp_path / "quiet"),
                 "--device", "cpu", "--max-epochs", "1", "--no-report"]) == 0
    assert (tmp_path / "quiet" / "metrics.json").is_file() and not (tmp_path / "quiet" / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err


# --- in a real browser ---------------------------------------------------------------------------

CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: images.length,
    loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    metric_rows: document.querySelectorAll("#metrics-table tbody tr").length});
  document.body.appendChild(out);
});
</script>"""


def chromium():
    return chromium_command()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["run", "ablation"])
def test_page_renders_in_chromium_with_every_image_loaded(runs, kind, tmp_path):
    page = runs[kind] / "report.html"
    checked = tmp_path / "checked.html"  # a copy with a probe; the report itself runs no script
    checked.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = subprocess.run([*chromium(), "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    check = json.loads(unescape(found.group(1)))
    assert check["images"] > 0 and check["loaded"] == check["images"] and check["metric_rows"] > 0, check
    shot = tmp_path / "shot.png"
    subprocess.run([*chromium(), "--virtual-time-budget=10000", f"--screenshot={shot}", "--window-size=1200,1600",
                    page.as_uri()],
                   capture_output=True, timeout=180, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank


def test_half_posts_get_a_table_per_presence_group():
    from pipeline.report.run_page import presence_tables

    groups = {"both": {"accuracy": 0.9, "rows": 70}, "text_only": {"accuracy": 0.75, "rows": 30}}
    text = presence_tables({"test": {"by_presence": groups}})
    parse(text)
    assert "test by presence" in text and ">text_only<" in text and ">0.7500<" in text and ">30<" in text
    assert presence_tables({"test": {"by_presence": {"both": groups["both"]}}}) == ""


def test_doctor_findings_appear_when_the_cache_has_them(runs, tmp_path):
    doctor = runs["root"] / "cache" / "doctor"
    assert main(["doctor", "--cache-dir", str(runs["root"] / "cache"), "--data-dir", str(runs["data"]),
                 "--device", "cpu"]) == 0
    assert main(["report", str(runs["run"]), "--out", str(tmp_path / "page.html")]) == 0
    text = (tmp_path / "page.html").read_text()
    parse(text)
    assert 'id="doctor"' in text and "cross-split pair(s)" in text and str(doctor / "doctor.md") in text


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_browser_skips_with_the_install_command_or_fails_where_required(monkeypatch, required):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv(REQUIRE, "1" if required else "0")
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception) as caught:
        chromium_command()
    assert "apt-get install -y chromium chromium-driver" in str(caught.value)
