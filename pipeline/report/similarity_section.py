"""The run page's section on the text-image similarity, when the head read it (`train-head --features
similarity`): its distribution per class, as quantiles per split and a histogram of the test rows, from the
run's own similarity.json (written by train-head), so the page needs no cache."""

from pathlib import Path

from pipeline.model.similarity import SUMMARY_NAME
from pipeline.outputs import read_small_json
from pipeline.report.markup import Raw, fmt, paragraph, table

BAR = 30  # characters of the longest histogram bar


def similarity_section(folder):
    """The section's body, or None for a run without similarity.json (one that did not read the feature)."""
    summary = read_small_json(Path(folder) / SUMMARY_NAME)
    if not isinstance(summary, dict) or not isinstance(summary.get("splits"), dict):
        return None
    quantiles = summary.get("quantiles") or []
    header = ["split", "class", "rows", "without similarity", "mean",
              *(("median" if q == 0.5 else f"q{round(q * 100):02d}") for q in quantiles)]
    rows = []
    order = ("train", "val", "test")  # similarity.json's keys are sorted
    for split in sorted(summary["splits"], key=lambda name: (order.index(name) if name in order else 3, name)):
        for name, values in summary["splits"][split].items():
            shown = values.get("quantiles") or [None] * len(quantiles)
            rows.append([split, name, values.get("rows"), values.get("missing"), values.get("mean"), *shown])
    intro = paragraph("The cosine of the projected text and image vectors of the one CLIP/SigLIP model that was "
                      "both towers (what its get_text_features and get_image_features give), which this head "
                      "read beside the embeddings (--features similarity). Rows without a title or an image have "
                      "none (the head then reads 0, the training mean).", note=True)
    return Raw(intro + table(header, rows, text_columns=2) + _histogram(summary))


def _histogram(summary):
    """The test split's counts per bin and class, with a bar per class scaled to the largest count."""
    classes = (summary["splits"].get("test") or {})
    edges = summary.get("bin_edges") or []
    if not classes or len(edges) < 2:
        return ""
    counts = {name: values.get("histogram") or [0] * (len(edges) - 1) for name, values in classes.items()}
    largest = max([max(c) for c in counts.values()] + [1])
    rows = []
    for index in range(len(edges) - 1):
        cells = []
        for name in classes:
            count = counts[name][index]
            cells += [count, "█" * round(BAR * count / largest)]
        rows.append([f"[{fmt(edges[index], 3)}, {fmt(edges[index + 1], 3)}{']' if index == len(edges) - 2 else ')'}",
                     *cells])
    header = ["similarity", *(item for name in classes for item in (f"{name} rows", name))]
    return Raw("<h3>test rows per similarity bin</h3>" + table(header, rows))
