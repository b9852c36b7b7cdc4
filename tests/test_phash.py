"""Perceptual hashes (issue 19, item 8): stage one stores one per image, the doctor finds resized and
re-encoded copies across splits whatever the encoder; caches without the column still load and train."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import embed_flags, make_dataset
from PIL import Image

from pipeline.__main__ import main
from pipeline.data.images import ImageSettings, image_pixels, load_image
from pipeline.data.phash import BITS, MAX_DISTANCE, NONE, distances, has_hash, perceptual_hash
from pipeline.embed import cache
from pipeline.files import file_sha256
from tests.helpers import SMALL_FLAGS


def _photo(seed, size=(64, 48)):
    """A smooth random picture (a coarse random grid, upscaled), unlike any other seed's."""
    grid = np.random.default_rng(seed).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def _jpeg(image, quality):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _hash(image, size=32):
    """Of the pixels stage one hashes: resized and centre-cropped as for a CLIP of `size`."""
    return perceptual_hash(image_pixels(image, ImageSettings(size=size)))


def test_copies_stay_within_the_distance_and_distinct_pictures_do_not():
    originals = [_photo(seed) for seed in range(40)]
    hashes = np.array([_hash(image) for image in originals], dtype=np.uint64)  # (40, 3)
    for image, value in zip(originals, hashes):
        for copy in (_jpeg(image, 40), image.resize((192, 144), Image.Resampling.BICUBIC),
                     _jpeg(image.resize((32, 24), Image.Resampling.LANCZOS), 70)):
            assert distances([_hash(copy)], [value])[0, 0] <= MAX_DISTANCE
    others = ~np.eye(len(hashes), dtype=bool)
    assert distances(hashes, hashes)[others].min() > MAX_DISTANCE
    bits = np.bitwise_count(hashes[:, None, :2] ^ hashes[None, :, :2]).sum(axis=2)[others]  # colour aside
    assert 0.3 * BITS < np.median(bits) < 0.7 * BITS  # unrelated pictures: about half the bits


def test_flat_tiny_and_grey_images_hash_without_error():
    assert perceptual_hash(np.full((32, 32, 3), 128, np.uint8)) == NONE  # flat: it would match every flat image
    assert perceptual_hash(np.full((1, 1, 3), 200, np.uint8)) == NONE
    assert not has_hash([NONE]).any()
    grey = np.asarray(_photo(3).convert("L"))
    assert perceptual_hash(grey) == perceptual_hash(np.repeat(grey[..., None], 3, axis=2)) != NONE
    ramp = np.tile(np.arange(9, dtype=np.uint8)[::-1] * 20, (9, 1))  # every cell brighter than its right one
    wide, tall, colour = perceptual_hash(ramp)
    assert wide == (1 << 64) - 1 and tall == 0 and colour == 0x505050  # mean grey 80 in every channel


def test_the_same_shapes_in_other_colours_do_not_match():
    """A grey-level hash alone cannot tell two left-to-right gradients apart (the demo's pictures); the colour
    can."""
    ramp = np.linspace(0, 1, 64)[None, :, None] * np.ones((48, 1, 1))  # (48, 64, 1)
    warm = (ramp * [200, 80, 40] + 20).astype(np.uint8)
    cool = (ramp * [40, 90, 210] + 20).astype(np.uint8)
    assert distances([perceptual_hash(warm)], [perceptual_hash(cool)])[0, 0] > MAX_DISTANCE
    assert distances([perceptual_hash(warm)], [perceptual_hash(warm[::2, ::2])])[0, 0] <= MAX_DISTANCE


def _photo_dataset(folder, copies):
    """make_dataset's splits with a distinct smooth picture per row; test rows te0000.. show `copies` of train
    images: re-encoded, resized (up and down) and both. Returns {test id: train id}."""
    data = make_dataset(folder, counts=(("train", 24), ("val", 6), ("test", 16)))
    for seed, path in enumerate(sorted((data / "images").glob("*.jpg"))):
        _photo(seed + 100, size=(64 + seed % 3 * 16, 48)).save(path, quality=92)
    planted = {}
    for i in range(copies):
        source = Image.open(data / "images" / f"tr{i:04d}.jpg")
        width, height = source.size
        variant = [_jpeg(source, 35), source.resize((width * 3, height * 3), Image.Resampling.BICUBIC),
                   _jpeg(source.resize((width // 2, height // 2), Image.Resampling.LANCZOS), 60)][i % 3]
        variant.convert("RGB").save(data / "images" / f"te{i:04d}.jpg", quality=80 if i % 3 else 35)
        planted[f"te{i:04d}"] = f"tr{i:04d}"
    return data, planted


@pytest.fixture(scope="module")
def planted_cache(tmp_path_factory, tiny_bert, tiny_clip):
    root = tmp_path_factory.mktemp("phash")
    data, planted = _photo_dataset(root / "data", copies=10)
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache")) == 0
    return {"root": root, "data": data, "cache": root / "cache", "planted": planted}


def test_stage_one_stores_the_hash_of_the_pixels_it_embedded(planted_cache):
    data, folder = planted_cache["data"], planted_cache["cache"]
    assert cache.read_manifest(folder)["format_version"] == cache.FORMAT_VERSION == 4
    split = cache.load_split(folder, "train")
    settings = ImageSettings.from_model_folder(json.loads((folder / "manifest.json").read_text())["config"]["embed"]
                                               ["clip_model"])
    expected = [perceptual_hash(load_image(data, f"images/{key}.jpg", settings)) for key in split.ids]
    assert split.image_phash.dtype == np.uint64 and split.image_phash.shape == (len(split), 3)
    assert [tuple(int(word) for word in row) for row in split.image_phash] == expected and NONE not in expected


def test_doctor_finds_the_ten_planted_copies_and_nothing_else(planted_cache, capsys):
    out = planted_cache["root"] / "doctor"
    assert main(["doctor", "--cache-dir", str(planted_cache["cache"]), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "doctor.json").read_text())
    pairs = pd.read_csv(out / "doctor_pairs.csv", dtype={"id": str, "other_id": str})
    perceptual = pairs[pairs["kind"] == "perceptual_image"]
    assert set(zip(perceptual["id"], perceptual["other_id"])) == set(planted_cache["planted"].items())
    assert report["checked"]["perceptual_image"] and report["pairs"]["perceptual_image"] == 10
    assert (perceptual["similarity"] >= 1 - MAX_DISTANCE / BITS).all()
    assert not (pairs["kind"] == "exact_image").any()  # other bytes: the file hashes do not see them
    assert "perceptual image (checked): 10 cross-split pair(s)" in printed


def _as_format_3(folder):
    """Rewrite a cache as today's code before this change wrote it: no image_phash column, format 3."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for split, info in manifest["splits"].items():
        for part in info["parts"]:
            path = folder / split / part["file"]
            table = pq.read_table(path)
            pq.write_table(table.drop(["image_phash"]).replace_schema_metadata(table.schema.metadata), path)
            part["sha256"] = file_sha256(path)
    manifest["format_version"] = 3
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_an_old_cache_without_hashes_still_trains_and_the_doctor_asks_for_a_re_embed(planted_cache, tmp_path,
                                                                                       tiny_bert, tiny_clip, capsys):
    old = tmp_path / "old-cache"
    shutil.copytree(planted_cache["cache"], old)
    _as_format_3(old)
    assert cache.load_split(old, "test").image_phash is None
    # Same inputs: the format 3 cache keeps its fingerprint and is up to date, never refused or rebuilt.
    before = (old / "manifest.json").read_bytes()
    assert main(embed_flags(planted_cache["data"], tiny_bert, tiny_clip, old)) == 0
    assert "is up to date" in capsys.readouterr().out and (old / "manifest.json").read_bytes() == before
    assert main(["train-head", "--cache-dir", str(old), "--out", str(tmp_path / "run"), "--max-epochs", "2",
                 "--bootstrap", "0", "--no-report", *SMALL_FLAGS]) == 0
    assert main(["doctor", "--cache-dir", str(old), "--out", str(tmp_path / "doctor"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "perceptual image (NOT checked)" in printed
    assert "resized or re-encoded image copies cannot be checked: the cache is format 3" in printed
    assert "re-embed it for this check" in printed


def test_distances_are_the_same_without_numpy_2s_bitwise_count(monkeypatch):
    hashes = np.array([_hash(_photo(seed)) for seed in range(6)], dtype=np.uint64)
    expected = distances(hashes, hashes)
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # NumPy 1, which pandas and torch still allow
    assert np.array_equal(distances(hashes, hashes), expected) and expected[0, 0] == 0


def _float32_route_hash(pixels):
    """The hash as every cache before the integer sums stored it (float32 cell sums, a float64 mean colour):
    a frozen copy, so a faster `perceptual_hash` can be checked to give the same three words."""
    pixels = np.asarray(pixels)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    height, width = pixels.shape[:2]
    if height < 9 or width < 9:
        pixels = np.repeat(np.repeat(pixels, -(-9 // height), axis=0), -(-9 // width), axis=1)
        height, width = pixels.shape[:2]

    def means(rows, columns):
        top, left = np.linspace(0, height, rows + 1).astype(int), np.linspace(0, width, columns + 1).astype(int)
        sums = np.add.reduceat(np.add.reduceat(pixels.astype(np.float32), top[:-1], axis=0), left[:-1], axis=1)
        cells = sums / np.outer(np.diff(top), np.diff(left))[..., None]
        return cells[..., :3] @ np.array([0.299, 0.587, 0.114]) if cells.shape[2] >= 3 else cells[..., 0]

    wide, tall = means(8, 9), means(9, 8)
    if wide.std() < 2.0:
        return NONE
    channels = np.clip(np.rint(pixels.reshape(-1, pixels.shape[2]).mean(axis=0)), 0, 255).astype(int).tolist()
    red, green, blue = channels * 3 if len(channels) == 1 else channels[:3]
    pack = lambda bits: int(np.packbits(bits.ravel()).view(">u8")[0])  # noqa: E731
    return pack(wide[:, :-1] > wide[:, 1:]), pack(tall[:-1, :] > tall[1:, :]), (red << 16) | (green << 8) | blue


@pytest.mark.parametrize("shape", [(224, 224, 3), (224, 224), (256, 256, 3), (9, 9, 3), (1, 1, 3), (3, 500, 3),
                                   (500, 3, 3), (17, 1000, 3), (301, 300, 1), (225, 224, 4), (4000, 4100, 3)])
def test_the_hash_is_the_float32_routes_bit_for_bit(shape):
    """Integer sums replaced float32 ones for speed; every stored hash must stay what it was, on noise (every
    bit counts), on smooth pictures and gradients, and past 2^24 per cell (4000 x 4100: the float32 route)."""
    rng = np.random.default_rng(sum(shape))
    smooth = np.asarray(_photo(len(shape), size=(shape[1], shape[0])))
    smooth = smooth[..., 0] if len(shape) == 2 else np.dstack([smooth] * 2)[..., :shape[2]]
    ramp = np.broadcast_to(np.linspace(0, 255, shape[1]).astype(np.uint8)[:, None], shape[1::-1]).T
    ramp = ramp if len(shape) == 2 else np.repeat(ramp[..., None], shape[2], axis=2)
    for pixels in (rng.integers(0, 256, shape, dtype=np.uint8), smooth, ramp, np.full(shape, 255, np.uint8)):
        assert perceptual_hash(pixels) == _float32_route_hash(pixels)
    assert perceptual_hash(smooth) != NONE or min(shape[:2]) < 9
