"""The frozen reference: stage one's image loader as it was before issue 24 (2026-12), kept unchanged.

Do not edit or "improve" this file. It is what `decode.vs_reference.*` times our worker against and what
`decode.max_level_diff` and tests/test_golden_pixels.py compare our pixels to: the new worker may be
faster, but its uint8 pixels must stay within 2 levels of these on every branch (draft JPEG, PNG named
.jpg, EXIF orientations, transparency, CMYK, grayscale, 16-bit, palette, extreme aspect ratios).

`reference_load(root, relative, settings)` -> ((S, S, 3) uint8, SHA-256 hex), the work one DataLoader
worker did per row: two resolves, exists, is_file, stat, one read, hash, Pillow decode, `exif_transpose`
always, Pillow bicubic resize, crop, asarray. Errors are not part of the reference (they raise whatever
Pillow raises); the new worker's error reasons are tested in test_images.py and test_hostile_images.py.
"""

import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_MAX_ASPECT = 64


def reference_load(root, relative, settings):
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.exists() or not path.is_file():
        raise FileNotFoundError(f"{relative}: not a file inside {root}")
    path.stat()
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            pixels = reference_pixels(image, settings)
    return pixels, hashlib.sha256(data).hexdigest()


def reference_pixels(image, settings):
    """An opened Pillow image -> (S, S, 3) uint8, as the pre-issue-24 `image_pixels` did."""
    if settings.draft and image.format == "JPEG":
        width, height = image.size
        scale = settings.size / min(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    image.seek(0)
    image.load()
    return reference_resize_and_crop(_to_rgb(ImageOps.exif_transpose(image)), settings.size)


def _to_rgb(image):
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = image.convert("L")
    if "A" in image.getbands() or "transparency" in image.info:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def reference_resize_and_crop(image, size):
    """Shortest side to `size` with Pillow's bicubic, then the central square."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    if new_long > _MAX_ASPECT * size:
        sx, sy = width / new_size[0], height / new_size[1]
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
