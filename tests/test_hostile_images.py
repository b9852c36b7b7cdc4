"""Hostile image files through a real stage-one run: each is embedded or skipped with its reason, never a crash.

Every file is named .jpg whatever it holds, as Fakeddit's downloads are.
"""

import io
import shutil
import struct
import zlib

import numpy as np
import pytest
from conftest import cache_dir_of, rgb_noise, with_flag, write_split
from PIL import Image, ImageFile
from transformers import CLIPImageProcessor

from pipeline.__main__ import main
from pipeline.data.images import DEFAULT_MAX_PIXELS, ImageSettings, load_image
from pipeline.embed import cache

SETTINGS = ImageSettings(size=32, draft=False)


def png_header_only(width, height):
    """A valid PNG start claiming width x height RGB pixels, with a few bytes of data: GBs if decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def save_bytes(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def animated_gif():
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg():
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return save_bytes(image, "JPEG", exif=exif, quality=95)


def transparent(mode):
    """Half opaque noise, half fully transparent pixels that store black."""
    rgba = np.asarray(rgb_noise((40, 30), seed=5).convert("RGBA")).copy()
    rgba[:, 20:] = (0, 0, 0, 0)
    image = Image.fromarray(rgba, "RGBA")
    if mode == "P":
        image = image.convert("RGB").quantize(16)
        image.info["transparency"] = image.getpixel((39, 0))  # the colour of the transparent half
        return save_bytes(image, "PNG", transparency=image.info["transparency"])
    return save_bytes(image.convert(mode), "PNG")


def embeddable_files():
    """File name -> bytes, for the files that must be embedded (modes and orientation: see test_images.py)."""
    noise = rgb_noise((48, 36), seed=3)
    sixteen = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    return {
        "plain.jpg": save_bytes(noise, "JPEG", quality=90),
        "png.jpg": save_bytes(noise, "PNG"),
        "gif.jpg": animated_gif(),
        "webp.jpg": save_bytes(noise, "WEBP", lossless=True),
        "bmp.jpg": save_bytes(noise, "BMP"),
        "tiff.jpg": save_bytes(noise, "TIFF"),
        "cmyk.jpg": save_bytes(noise.convert("CMYK"), "JPEG"),
        "sixteen_bit.jpg": save_bytes(Image.fromarray(sixteen), "PNG"),
        "palette_transparent.jpg": transparent("P"),
        "la.jpg": transparent("LA"),
        "rgba.jpg": transparent("RGBA"),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "one_pixel.jpg": save_bytes(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
        "strip.jpg": save_bytes(Image.new("RGB", (1, 100_000), (40, 50, 60)), "PNG"),  # aspect 1:100,000
    }


def refused_files(outside, images):
    """local_image_path -> the reason it is skipped with; makes the files it needs (`outside`: above the root)."""
    good = save_bytes(rgb_noise((64, 64)), "JPEG")
    (images / "truncated.jpg").write_bytes(good[: len(good) * 2 // 3])
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("404 Not Found\n")
    (images / "bomb_over_cap.jpg").write_bytes(png_header_only(12_000, 12_000))  # 144M px: over --max-pixels only
    (images / "bomb_huge.jpg").write_bytes(png_header_only(60_000, 60_000))  # 3.6G px: 10 GB decoded
    (images / "folder.jpg").mkdir()
    (outside / "outside.jpg").write_bytes(good)
    (images / "link.jpg").symlink_to(outside / "outside.jpg")
    (images / "loop_a.jpg").symlink_to(images / "loop_b.jpg")
    (images / "loop_b.jpg").symlink_to(images / "loop_a.jpg")
    return {
        "images/truncated.jpg": "truncated_or_corrupt",
        "images/zero.jpg": "not_an_image",
        "images/text.jpg": "not_an_image",
        "images/bomb_over_cap.jpg": "too_many_pixels",
        "images/bomb_huge.jpg": "too_many_pixels",
        "images/folder.jpg": "not_a_file",
        "images/missing.jpg": "missing_file",
        "../outside.jpg": "outside_image_root",
        str(outside / "outside.jpg"): "outside_image_root",
        "images/link.jpg": "outside_image_root",
        "images/loop_a.jpg": "bad_path",
        "images/" + "n" * 300 + ".jpg": "bad_path",
        "": "no_image_path",
    }


def test_every_hostile_image_is_embedded_or_skipped_with_its_reason(embed_args, dataset, tmp_path, monkeypatch):
    images = dataset / "images"
    for name, data in embeddable_files().items():
        (images / name).write_bytes(data)
    refused = refused_files(tmp_path, images)
    paths = [f"images/{name}" for name in embeddable_files()] + list(refused)
    write_split(dataset, "val", [
        {"id": f"row{i}", "clean_title": "a photo", "2_way_label": i % 2, "local_image_path": path}
        for i, path in enumerate(paths)
    ])
    decoded = []
    real_load = ImageFile.ImageFile.load

    def spy_load(image):
        # Images decode from the bytes read once for hashing (no file name in Pillow): record the size.
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)  # num_workers 0: decoding happens here
    args = with_flag(embed_args, "--splits", "val")
    assert main(args) == 0
    val = cache.read_manifest(cache_dir_of(args))["splits"]["val"]
    expected = {}
    for reason in refused.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert val["skipped_by_reason"] == expected
    assert val["rows_embedded"] == len(embeddable_files())
    skipped = (tmp_path / "cache" / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 1 + len(refused)
    assert f"val\trow{paths.index('images/bomb_over_cap.jpg')}\ttoo_many_pixels" in skipped
    assert all(width * height <= DEFAULT_MAX_PIXELS for width, height in decoded)  # bombs refused from the header
    assert len(decoded) >= len(embeddable_files())  # the spy did see decoding


@pytest.mark.parametrize("name", ["png.jpg", "webp.jpg", "bmp.jpg", "tiff.jpg"])
def test_lossless_formats_give_the_pixels_of_the_png(tmp_path, name):
    for file, data in embeddable_files().items():
        if file in (name, "png.jpg"):
            (tmp_path / file).write_bytes(data)
    assert np.array_equal(load_image(tmp_path, name, SETTINGS), load_image(tmp_path, "png.jpg", SETTINGS))


def test_animated_gif_gives_its_first_frame(tmp_path):
    (tmp_path / "gif.jpg").write_bytes(animated_gif())
    pixels = load_image(tmp_path, "gif.jpg", SETTINGS).reshape(-1, 3)
    assert (pixels[:, 0] > 200).all() and (pixels[:, 2] < 50).all()  # red, not the blue second frame


@pytest.mark.parametrize("name", ["palette_transparent.jpg", "la.jpg", "rgba.jpg"])
def test_transparency_is_white_as_in_clips_processor(tmp_path, name):
    (tmp_path / name).write_bytes(embeddable_files()[name])
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   do_normalize=False, do_rescale=False)
    with Image.open(tmp_path / name) as image:
        expected = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = load_image(tmp_path, name, SETTINGS).astype(float)
    assert ours[:, -4:].min() > 250  # the transparent half is white, not the black it stores
    assert np.abs(ours - expected).max() <= 2


def test_extreme_aspect_ratio_resizes_only_what_the_crop_keeps(tmp_path, monkeypatch):
    (tmp_path / "strip.jpg").write_bytes(embeddable_files()["strip.jpg"])
    sizes = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize",
                        lambda image, size, *a, **k: sizes.append(size) or real_resize(image, size, *a, **k))
    pixels = load_image(tmp_path, "strip.jpg", ImageSettings(size=224))
    assert pixels.shape == (224, 224, 3) and (pixels == (40, 50, 60)).all()
    assert max(w * h for w, h in sizes) <= 224 * 224  # not 224 x 22,400,000 (15 GB) before the crop


def write_placeholder_split(dataset, placeholder, shared_rows, big_rows, few_rows):
    """Rows whose images are copies of one small placeholder file, of one big file, or of a rarer small file."""
    images = dataset / "images"
    rows = []
    groups = [("ph", placeholder, shared_rows),
              ("big", save_bytes(rgb_noise((200, 200), seed=8), "PNG"), big_rows),
              ("few", save_bytes(Image.new("RGB", (9, 9), (1, 2, 3)), "PNG"), few_rows)]
    for prefix, data, count in groups:
        for i in range(count):
            (images / f"{prefix}{i}.jpg").write_bytes(data)  # one file per post, same bytes: as downloaded
            rows.append({"id": f"{prefix}{i}", "clean_title": "a photo", "2_way_label": i % 2,
                         "local_image_path": f"images/{prefix}{i}.jpg"})
    write_split(dataset, "val", rows + [{"id": "own", "clean_title": "the cat", "2_way_label": 1,
                                         "local_image_path": "images/va0000.jpg"}])


def test_placeholders_are_counted_and_skipped_on_request(embed_args, dataset, capsys):
    placeholder = save_bytes(Image.new("RGB", (161, 81), (230, 230, 230)), "PNG")  # imgur's is 161 x 81
    write_placeholder_split(dataset, placeholder, shared_rows=5, big_rows=4, few_rows=2)
    args = embed_args + ["--splits", "val", "--placeholder-min-rows", "4", "--placeholder-max-bytes", "2000"]
    assert main(args) == 0
    manifest = cache.read_manifest(cache_dir_of(args))
    assert manifest["splits"]["val"]["placeholder_rows"] == 5  # not the big shared file, not the rarer one
    assert manifest["splits"]["val"]["rows_embedded"] == 12  # counted, still embedded by default
    (listed,) = manifest["config"]["placeholder_files"]
    assert listed["rows"] == 5 and listed["bytes"] == len(placeholder) and listed["example"] == "images/ph0.jpg"
    assert "placeholder_rows=5" in capsys.readouterr().out
    assert main(args + ["--on-placeholder", "skip", "--on-stale", "rebuild"]) == 0  # other settings: rebuilt
    val = cache.read_manifest(cache_dir_of(args))["splits"]["val"]
    assert val["skipped_by_reason"] == {"placeholder_image": 5} and val["rows_embedded"] == 7
    assert "val\tph3\tplaceholder_image" in (dataset.parent / "cache" / "skipped.tsv").read_text()


def test_placeholder_search_never_reads_outside_the_image_root(embed_args, dataset, tmp_path):
    shutil.copy(dataset / "images" / "va0001.jpg", tmp_path / "secret.jpg")
    rows = [{"id": f"x{i}", "clean_title": "a cat", "2_way_label": 1, "local_image_path": "../secret.jpg"}
            for i in range(3)]
    write_split(dataset, "val", rows)
    args = embed_args + ["--splits", "val", "--placeholder-min-rows", "2"]
    assert main(args) == 0
    val = cache.read_manifest(cache_dir_of(args))["splits"]["val"]
    assert val["placeholder_rows"] == 0 and val["skipped_by_reason"] == {"outside_image_root": 3}
