"""The worst errors of a run: test rows predicted wrong with the highest confidence, with title and thumbnail.

Titles and image paths come from the split file the run was built from (found
through the run's config); thumbnails are read through stage one's image loader,
so a path that leaves the image root, a decompression bomb or a broken file
gives no thumbnail, never a read outside the root.
"""

import io
from dataclasses import replace
from pathlib import Path

from PIL import Image

from pipeline.data.images import BadImage, ImageSettings, load_image
from pipeline.data.splits import CLASS_NAMES, read_split
from pipeline.errors import UserError
from pipeline.report.markup import Raw, escape, png_data_uri

THUMBNAIL = 96  # pixels: a square, centre-cropped as the model sees it


def worst_errors(predictions, threshold=0.5, count=24):
    """The `count` wrong rows at `threshold` (the run's decision threshold: real when prob_real > it, as its
    predictions files decide) whose predicted class was most probable."""
    predictions = predictions.assign(pred=(predictions["prob_real"] > threshold).astype(int))
    wrong = predictions[predictions["pred"] != predictions["label"]].copy()
    wrong["confidence"] = (wrong["prob_real"] - 0.5).abs() + 0.5
    return wrong.sort_values("confidence", ascending=False, kind="stable").head(count)


def test_rows(data):
    """(SplitRows of the test split, image root) from stage one's data settings, or (None, why not)."""
    try:
        rows = read_split(data["data_dir"], "test", data.get("image_pattern") or "{id}.jpg")
    except (UserError, KeyError, TypeError, OSError) as error:
        return None, f"the test split file could not be read ({error})"
    return rows, data.get("image_root") or data["data_dir"]


def thumbnail(image_root, relative):
    """A PNG data URI of the image as a small square, or None when stage one's loader refuses it."""
    settings = replace(ImageSettings(), size=THUMBNAIL)
    try:
        pixels = load_image(image_root, relative, settings)
    except BadImage:
        return None
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue())


def error_cards(predictions, data, threshold=0.5, count=24):
    """The worst errors as HTML cards (title, thumbnail, true and predicted class, probability)."""
    worst = worst_errors(predictions, threshold, count)
    if worst.empty:
        return Raw("<p>No test row is predicted wrong.</p>")
    rows, image_root = test_rows(data) if data else (None, "the run does not record its data folder")
    where = {key: index for index, key in enumerate(rows.ids)} if rows is not None else {}
    cards = []
    for _, row in worst.iterrows():
        index = where.get(str(row["id"]))
        title = rows.texts[index] if index is not None else "(title not found)"
        picture = thumbnail(image_root, rows.image_paths[index]) if index is not None else None
        image = f'<img src="{picture}" alt="image of {escape(row["id"])}">' if picture else "<p>(no image)</p>"
        cards.append(
            f'<div class="error">{image}<b>{escape(title)}</b><br>id {escape(row["id"])}<br>'
            f'true {escape(CLASS_NAMES[int(row["label"])])}, predicted {escape(CLASS_NAMES[int(row["pred"])])} '
            f'(prob_real {row["prob_real"]:.3f})</div>'
        )
    note = "" if rows is not None else f'<p class="note">Titles and images are missing: {escape(image_root)}.</p>'
    return Raw(f'{note}<div class="errors">{"".join(cards)}</div>')


def data_settings(record, config):
    """Stage one's data flags for a run: the run's own (finetune-e2e reads its split files itself) or those
    of the cache it was trained on (train-head), as its record says."""
    if record.kind == "finetune-e2e":
        return record.data or config.get("data")
    from pipeline.embed.cache import read_manifest

    cache_dir = (config.get("cache") or {}).get("dir")
    try:
        return read_manifest(cache_dir)["config"]["embed"] if cache_dir and Path(cache_dir).is_dir() else None
    except (UserError, KeyError, TypeError):
        return None
