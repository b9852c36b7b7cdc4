"""A request's posts as `Classifier.predict` takes them, and its answer row as the API returns it.

Images arrive only as bytes (base64 in JSON, a file in a form); no path or URL
from a request is ever opened. `decode_image` turns bytes into the model's
pixels with stage one's own decoder (`decode_image_bytes`: simplejpeg or JPEG
draft mode, the pixel cap, EXIF orientation, resize and crop), exactly as
`predict` decodes the same file, and hands them on as an S x S image, which
the Classifier's own `image_pixels` passes through unchanged. Decoding here
rather than inside `Classifier.predict` lets a batch's images decode on one
thread a core (app.py). Bytes that fail become a stand-in image that raises
stage one's reason, so the Classifier gives such a post the status `predict`
gives the same file (and still scores its title when it can)."""

import base64
import binascii
import math

from PIL import Image

from pipeline.data.images import BadImage, decode_image_bytes
from pipeline.data.splits import MAX_TITLE_CHARS


class UnreadableImage(Image.Image):
    """Bytes that are no image: asking for the size raises the reason, as `load_image` would for that file."""

    def __init__(self, reason, detail=""):
        super().__init__()
        self.error = BadImage(reason, detail)

    @property
    def size(self):
        raise self.error


def decode_image(source, settings):
    """A post's image (base64 text, form bytes or None) -> what `Classifier.predict` takes: None (the post has
    no image: `no_image_path`, as an empty path in a TSV), the decoded S x S pixels as a Pillow image, or an
    `UnreadableImage` with the reason. Text that is not base64 is that post's `bad_base64`."""
    if source is None:
        return None
    if not isinstance(source, bytes):
        try:
            source = base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError):
            return UnreadableImage("bad_base64")
    try:
        return Image.fromarray(decode_image_bytes(source, settings))
    except BadImage as error:
        return UnreadableImage(error.reason, str(error))


def clean_title(title):
    """Stage one's title handling: surrounding white space stripped, capped at its length limit."""
    return (title or "").strip()[:MAX_TITLE_CHARS]


def class_probabilities(row, class_names):
    """{class name: p} for one result row (the Classifier's prob_<name> columns), or None when the post was
    not scored."""
    values = [row.get(f"prob_{name}") for name in class_names]
    return None if any(_missing(v) for v in values) else {n: float(v) for n, v in zip(class_names, values)}


def answer(row, class_names):
    """One prediction as the API returns it: id, probs, pred, pred_name, status."""
    probs = class_probabilities(row, class_names)
    pred = None if probs is None else int(row["pred"])
    return {"id": str(row["id"]), "probs": probs, "pred": pred,
            "pred_name": None if pred is None else row["pred_name"], "status": row["status"]}


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))
