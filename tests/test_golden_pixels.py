"""Golden pixels: stage one's worker against the frozen pre-issue-24 loader (pipeline/bench/reference_loader.py).

Every branch of decoding and resizing gets a seeded Pillow-made file; the worker's uint8 pixels must stay
within 2 levels of the reference's and its SHA-256 must be the same, so no speed change moves what the
encoders see. Images are textured like photos (smooth colour plus noise), as in the bench.
"""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.bench.reference_loader import reference_load
from pipeline.data import images
from pipeline.data.images import ImageSettings, load_image_and_sha256

MAX_LEVEL_DIFF = 2


def textured(size, seed):
    """Smooth gradients plus +-12 noise, (width, height)."""
    width, height = size
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + rng.integers(-12, 12, (height, width, 3)), 0, 255).astype(np.uint8))


def encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def oriented(orientation, seed):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(textured((300, 200), seed), "JPEG", quality=90, exif=exif)


def with_alpha(mode, seed):
    image = textured((260, 240), seed).convert(mode)
    alpha = np.full((240, 260), 255, np.uint8)
    alpha[:, 130:] = 0  # the right half transparent
    alpha[100:140] = 128  # a half-transparent band
    image.putalpha(Image.fromarray(alpha))
    return encoded(image, "PNG")


def palette_transparent(seed):
    image = textured((250, 230), seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encoded(image, "PNG", transparency=0)


def sixteen_bit(seed):
    ramp = np.random.default_rng(seed).integers(0, 65535, (20, 20)).astype(np.float64)
    values = np.asarray(Image.fromarray(ramp).resize((280, 250), Image.Resampling.BICUBIC), dtype=np.float64)
    return encoded(Image.fromarray(np.clip(values, 0, 65535).astype(np.uint16)), "PNG")


def golden_files():
    """file name (all .jpg, as Fakeddit saves them) -> bytes: one per branch of the loader."""
    return {
        "draft_jpeg.jpg": encoded(textured((1600, 1200), 1), "JPEG", quality=88),  # libjpeg decodes at 1/4
        "draft_jpeg_tall.jpg": encoded(textured((900, 2000), 2), "JPEG", quality=88),  # at 1/2 or 1/4
        "preview.jpg": encoded(textured((320, 240), 3), "JPEG", quality=88),  # too small for draft
        "png_named_jpg.jpg": encoded(textured((320, 427), 4), "PNG"),
        "orientation_3.jpg": oriented(3, 5),
        "orientation_6.jpg": oriented(6, 6),
        "orientation_8.jpg": oriented(8, 7),
        "rgba.jpg": with_alpha("RGB", 8),
        "la.jpg": with_alpha("L", 9),
        "palette_transparent.jpg": palette_transparent(10),
        "palette.jpg": encoded(textured((300, 260), 11).convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "cmyk.jpg": encoded(textured((400, 300), 12).convert("CMYK"), "JPEG", quality=90),
        "grayscale.jpg": encoded(textured((350, 300), 13).convert("L"), "JPEG", quality=90),
        "sixteen_bit.jpg": sixteen_bit(14),
        "very_wide.jpg": encoded(textured((4000, 120), 15), "JPEG", quality=90),  # 33:1, resized whole
        "very_tall.jpg": encoded(textured((110, 3600), 16), "PNG"),
        "strip_beyond_64.jpg": encoded(textured((20000, 60), 17), "PNG"),  # only the cropped box resampled
        "odd_crop.jpg": encoded(textured((301, 257), 18), "PNG"),  # odd margins: which pixel is the centre
        "just_over.jpg": encoded(textured((227, 700), 19), "PNG"),
        "exact_size.jpg": encoded(textured((224, 224), 20), "PNG"),  # no resize at all
        "upscaled.jpg": encoded(textured((37, 19), 21), "PNG"),
        "one_pixel.jpg": encoded(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"),
    }


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    for name, data in golden_files().items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("settings", [ImageSettings(), ImageSettings(size=32, draft=False)],
                         ids=["224-draft", "32-no-draft"])
@pytest.mark.parametrize("name", list(golden_files()))
def test_worker_pixels_stay_within_two_levels_of_the_reference(golden_root, name, settings):
    expected, expected_sha = reference_load(golden_root, name, settings)
    pixels, sha = load_image_and_sha256(golden_root, name, settings)
    assert pixels.shape == expected.shape == (settings.size, settings.size, 3) and pixels.dtype == np.uint8
    assert sha == expected_sha
    assert np.abs(pixels.astype(int) - expected).max() <= MAX_LEVEL_DIFF


def test_the_fixtures_reach_the_branches_they_are_named_for(golden_root):
    """A fixture that stopped exercising its branch (say, Pillow saving CMYK as RGB) would guard nothing."""
    modes = {}
    for name in golden_files():
        with Image.open(golden_root / name) as image:
            modes[name] = (image.format, image.mode, image.getexif().get(0x0112, 1), image.size)
    assert modes["png_named_jpg.jpg"][0] == "PNG"
    assert [modes[f"orientation_{k}.jpg"][2] for k in (3, 6, 8)] == [3, 6, 8]
    assert modes["cmyk.jpg"][:2] == ("JPEG", "CMYK") and modes["grayscale.jpg"][:2] == ("JPEG", "L")
    assert modes["sixteen_bit.jpg"][1].startswith("I") and modes["palette.jpg"][1] == "P"
    assert modes["rgba.jpg"][1] == "RGBA" and modes["la.jpg"][1] == "LA"
    with Image.open(golden_root / "palette_transparent.jpg") as image:
        assert image.mode == "P" and "transparency" in image.info
    with Image.open(golden_root / "draft_jpeg.jpg") as image:
        image.draft("RGB", (299, 224))
        assert image.size == (400, 300)  # libjpeg's 1/4 scale is what the 224 settings ask for
    width, height = modes["strip_beyond_64.jpg"][3]
    assert int(224 * width / height) > 64 * 224  # beyond the aspect where only the crop box is resampled


@pytest.mark.parametrize("orientation,turns", [(1, False), (3, True), (6, True), (8, True)])
def test_exif_transpose_runs_only_when_the_tag_asks(monkeypatch, orientation, turns):
    calls = []
    real = ImageOps.exif_transpose
    monkeypatch.setattr(images.ImageOps, "exif_transpose", lambda image: calls.append(1) or real(image))
    with Image.open(io.BytesIO(oriented(orientation, 0))) as image:
        image.load()
        shown = images.upright(image)
        assert shown.size == ((200, 300) if orientation in (6, 8) else (300, 200))
    assert bool(calls) == turns


@pytest.fixture(params=["simplejpeg", "pillow"])
def jpeg_path(request, monkeypatch):
    """Both decoders of plain JPEGs: simplejpeg (when installed) and Pillow alone."""
    from pipeline.data import fast_jpeg

    if request.param == "simplejpeg":
        pytest.importorskip("simplejpeg")
    else:
        monkeypatch.setattr(fast_jpeg, "simplejpeg", None)
    return request.param


@pytest.mark.parametrize("name", [n for n in golden_files() if "jpeg" in n or "orientation" in n
                                  or n in ("preview.jpg", "cmyk.jpg", "grayscale.jpg", "very_wide.jpg")])
def test_both_jpeg_decoders_stay_within_two_levels(golden_root, jpeg_path, name):
    settings = ImageSettings()
    expected, _ = reference_load(golden_root, name, settings)
    pixels, _ = load_image_and_sha256(golden_root, name, settings)
    assert np.abs(pixels.astype(int) - expected).max() <= MAX_LEVEL_DIFF


def test_simplejpeg_takes_only_the_plain_colour_jpegs(golden_root):
    pytest.importorskip("simplejpeg")
    from pipeline.data import fast_jpeg

    taken = {name for name in golden_files()
             if fast_jpeg.decode((golden_root / name).read_bytes(), ImageSettings()) is not None}
    assert taken == {"draft_jpeg.jpg", "draft_jpeg_tall.jpg", "preview.jpg", "very_wide.jpg"}


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_exif_orientation_is_read_without_pillow(orientation):
    from pipeline.data import fast_jpeg

    assert fast_jpeg._oriented(oriented(orientation, 0)) == (orientation != 1)
    assert not fast_jpeg._oriented(encoded(textured((40, 30), 0), "JPEG"))  # no EXIF at all


@pytest.mark.parametrize("size", [(1600, 1200), (900, 2000), (320, 240), (100, 50), (5000, 300)])
def test_draft_scale_is_the_one_pillow_picks(size):
    from pipeline.data import fast_jpeg

    with Image.open(io.BytesIO(encoded(textured(size, 0), "JPEG"))) as image:
        scale = 224 / min(size)
        image.draft("RGB", (math.ceil(size[0] * scale), math.ceil(size[1] * scale)))  # as images.py asks
        decoded = image.size
    s = fast_jpeg._draft_scale(*size, 224)
    assert decoded == (-(-size[0] // s), -(-size[1] // s))
