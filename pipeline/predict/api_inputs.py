"""What `Classifier.predict` accepts, checked before any row is scored: a clear error naming the argument
and the position, never a traceback from deep inside the tokenizer or Pillow.

Accepted: titles as str (None, NaN or pd.NA: no title); images as a path (str or os.PathLike), a Pillow
image, a NumPy (H, W, 3) uint8 array (RGB) or None (no image); ids of any kind (written as str); labels
as whole numbers naming one of the run's classes. Raw bytes are refused with how to open them: decoding is
left to Pillow's lazy `Image.open`, so the pixel cap still applies before the pixels are decoded.
"""

import math
import numbers
import os

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.errors import UserError


def as_list(values, name):
    """A sequence of per-row values as a list; a single str or bytes (which would split into characters)
    is refused."""
    if isinstance(values, (str, bytes)):
        raise UserError(f"predict: {name} is a single {type(values).__name__}; give a list with one entry per post")
    try:
        return list(values)
    except TypeError:
        raise UserError(f"predict: {name} is a {type(values).__name__}, not a list; give a list with one "
                        "entry per post") from None


def _is_missing(value):
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def checked_titles(titles):
    """Titles -> list of str ("" for a post without a title)."""
    checked = []
    for row, title in enumerate(as_list(titles, "titles")):
        if _is_missing(title):
            checked.append("")
        elif isinstance(title, str):
            checked.append(title.strip())
        else:
            raise UserError(f"predict: titles[{row}] is {type(title).__name__} {repr(title)[:40]}, not text; give "
                            "each title as a str (None or '' for a post without one)"
                            + ("; decode bytes first (b.decode('utf-8'))" if isinstance(title, bytes) else ""))
    return checked


def checked_image(image, row):
    """One image as given, or a Pillow image made from a NumPy array; refuses anything else."""
    if image is None or isinstance(image, (str, os.PathLike, Image.Image)):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) > 0:
            return Image.fromarray(image, "RGB")
        raise UserError(f"predict: images[{row}] is an array of shape {image.shape} and type {image.dtype}; an "
                        "array image must be (height, width, 3) uint8 RGB")
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise UserError(f"predict: images[{row}] is raw bytes; pass PIL.Image.open(io.BytesIO(data)) (or a path)")
    raise UserError(f"predict: images[{row}] is a {type(image).__name__}; give a path, a PIL image, an (H, W, 3) "
                    "uint8 array or None")


def checked_images(images):
    return [checked_image(image, row) for row, image in enumerate(as_list(images, "images"))]


def same_length(count, **columns):
    """Refuse a per-row argument of another length than the titles."""
    for name, values in columns.items():
        if values is not None and len(values) != count:
            raise UserError(f"predict: {count} titles but {len(values)} {name}; give one per title")


def checked_labels(labels, class_names):
    """Labels -> list of int, each the index of one of `class_names`."""
    if labels is None:
        return None
    checked = []
    for row, label in enumerate(as_list(labels, "labels")):
        whole = isinstance(label, numbers.Number) and not isinstance(label, bool) and not _is_missing(label) \
            and float(label).is_integer()
        if not whole or not 0 <= int(label) < len(class_names):
            choices = ", ".join(f"{index} ({name})" for index, name in enumerate(class_names))
            raise UserError(f"predict: labels[{row}] is {label!r}, not a class of this run; give one of {choices} "
                            "(or no labels)")
        checked.append(int(label))
    return checked
