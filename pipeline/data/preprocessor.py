"""What an image model's preprocessor_config.json says about its pixels, read as its image processor reads it.

CLIPImageProcessor and BitImageProcessor (DINOv2) resize the shortest side
(`size: {shortest_edge}`) and centre-crop (`crop_size`); SiglipImageProcessor and
ViTImageProcessor resize to a square (`size: {height, width}`) and crop nothing;
ConvNeXt's resizes to `shortest_edge / crop_pct` and crops `shortest_edge`.
`resample` (3 bicubic, 2 bilinear), `image_mean`, `image_std`, `do_normalize`
and the rescale by 1/255 are read too; what this pipeline cannot do as the
processor does is refused, never approximated silently. No torch here.
"""

import json
import math

from pipeline.errors import UserError

MAX_IMAGE_SIZE = 4096  # no image model we know of takes more than 1024; caps the pixels a config can ask for
RESIZE_MODES = ("shortest_edge", "square")  # shortest side to resize_to keeping the aspect; or a resize_to square
RESAMPLES = {3: "bicubic", 2: "bilinear"}  # preprocessor_config.json's PIL resample codes we resize with


def read_preprocessor(path):
    """The ImageSettings fields a preprocessor_config.json gives; a UserError naming the file for a bad one."""
    def bad(what):
        raise UserError(f"{path}: {what}; fix preprocessor_config.json (CLIP's is crop_size 224, image_mean "
                        "[0.4815, 0.4578, 0.4082], image_std [0.2686, 0.2613, 0.2758])")

    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        bad(f"not valid JSON ({error})")
    if not isinstance(config, dict):
        bad(f"expected a JSON object, found {type(config).__name__}")
    values = _read_geometry(config, bad)
    for key, name, minimum in (("image_mean", "mean", None), ("image_std", "std", 0)):
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        if not (isinstance(value, list) and len(value) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        and (minimum is None or v > minimum) for v in value)):
            bad(f"{key} {value!r} is not three finite numbers" + (" above 0" if minimum is not None else ""))
        values[name] = tuple(float(v) for v in value)
    if config.get("do_normalize") is False:  # pixels in [0, 1], as the processor would give them
        values.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    rescale = config.get("rescale_factor", 1 / 255)
    if config.get("do_rescale") is False or not (isinstance(rescale, (int, float)) and abs(rescale - 1 / 255) < 1e-9):
        bad("it does not rescale pixels by 1/255 (do_rescale, rescale_factor); this pipeline always does")
    return values


def _pixels(value):
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_SIZE


def _square(value, key, bad):
    """A {height, width} or plain int size as one side; a non-square one is refused."""
    if isinstance(value, dict) and "height" in value:
        if value.get("height") != value.get("width", value.get("height")):
            bad(f"{key} {value!r} is not square; this pipeline makes square images")
        value = value["height"]
    if not _pixels(value):
        bad(f"{key} {value!r} is not a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
    return value


def _read_geometry(config, bad):
    """size / crop_size / do_center_crop / resample / crop_pct -> the ImageSettings fields, as the image processors
    read them: {shortest_edge} keeps the aspect, {height, width} (or an int without a crop) resizes to a square,
    and the centre crop (crop_size, when do_center_crop is not false) gives the final size."""
    if config.get("do_resize") is False:
        bad("do_resize is false; this pipeline batches images of one size, so it needs a resize")
    values = {}
    resample = config.get("resample", 3)
    if not isinstance(resample, int) or isinstance(resample, bool) or resample not in RESAMPLES:
        bad(f"resample {resample!r} is not one this pipeline resizes with; use 3 (bicubic) or 2 (bilinear)")
    values["resample"] = RESAMPLES[resample]
    crop, size = config.get("crop_size"), config.get("size")
    crops = config.get("do_center_crop", crop is not None) and crop is not None
    if size is not None:
        if isinstance(size, dict) and "shortest_edge" in size:
            values["resize"], values["resize_to"] = "shortest_edge", size["shortest_edge"]
            if not _pixels(values["resize_to"]):
                bad(f"size {size!r}: shortest_edge is not a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
        else:
            values["resize"] = "shortest_edge" if crops and isinstance(size, int) else "square"
            values["resize_to"] = _square(size, "size", bad)
    if crops:
        values["size"] = _square(crop, "crop_size", bad)
    elif "resize_to" in values:
        values["size"] = values["resize_to"]
    _apply_crop_pct(config.get("crop_pct"), values, bad)
    if values.get("resize_to") is not None and values["resize_to"] < values.get("size", 224):
        bad(f"size {size!r} is smaller than the crop {crop!r}; the crop would need padding")
    if values.get("resize_to") == values.get("size"):
        values["resize_to"] = None  # resize to the crop size itself: CLIP's usual case, recorded as before
    return values


def _apply_crop_pct(crop_pct, values, bad):
    """ConvNeXt's processor: below 384 pixels, shortest side to size / crop_pct, then a crop of size."""
    if crop_pct is None:
        return
    if not (isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and 0 < crop_pct <= 1):
        bad(f"crop_pct {crop_pct!r} is not a fraction in (0, 1]")
    side = values.get("resize_to", 224)
    if side < 384:
        values.update(resize="shortest_edge", resize_to=int(side / crop_pct), size=side)
    else:
        values.update(resize="square", resize_to=side, size=side)
