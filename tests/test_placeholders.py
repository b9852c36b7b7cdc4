"""Known dead-link placeholders are recognised by content in a set of any size (issue 19, item 6).

The fixtures in tests/fixtures/placeholders/ are imgur's "image no longer available" PNGs as they appear
in Fakeddit (see its README.md); pipeline/data/known_placeholders.py holds their hashes.
"""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import cache_dir_of
from PIL import Image

from pipeline.__main__ import main
from pipeline.data.known_placeholders import KNOWN_PLACEHOLDERS
from pipeline.data.phash import perceptual_hash
from pipeline.data.placeholders import known_placeholder
from pipeline.embed import cache

FIXTURES = Path(__file__).parent / "fixtures" / "placeholders"
FILES = {"imgur_removed_161x81.png": (161, 81), "imgur_removed_108x54.png": (108, 54)}


def _reencoded(data, scale=2, kind="JPEG"):
    image = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC).save(buffer, kind, quality=75)
    return buffer.getvalue()


def _known(data):
    return known_placeholder(data, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("name", FILES)
def test_the_package_holds_the_fixtures_hashes(name):
    """Computed here from the committed files, not copied from the module under test."""
    data = (FIXTURES / name).read_bytes()
    (entry,) = [known for known in KNOWN_PLACEHOLDERS if known.sha256 == hashlib.sha256(data).hexdigest()]
    assert entry.bytes == len(data) and entry.size == FILES[name] == Image.open(FIXTURES / name).size
    assert entry.phash == perceptual_hash(np.asarray(Image.open(FIXTURES / name).convert("RGB")))


@pytest.mark.parametrize("name", FILES)
def test_a_placeholder_is_known_exactly_and_re_encoded(name):
    data = (FIXTURES / name).read_bytes()
    assert _known(data) is not None and "re-encoded" not in _known(data)
    for copy in (_reencoded(data, 2, "JPEG"), _reencoded(data, 1, "WEBP")):
        assert hashlib.sha256(copy).hexdigest() != hashlib.sha256(data).hexdigest()
        assert _known(copy).endswith("re-encoded")


def test_other_small_pictures_of_the_same_shape_are_not_placeholders():
    rng = np.random.default_rng(0)
    for seed in range(20):
        grid = np.random.default_rng(seed).integers(0, 256, (4, 8, 3), dtype=np.uint8)  # smooth, varied
        image = Image.fromarray(grid).resize((161, 81), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        assert _known(buffer.getvalue()) is None, seed
    flat = io.BytesIO()
    Image.new("RGB", (161, 81), tuple(int(v) for v in rng.integers(0, 256, 3))).save(flat, "PNG")
    assert _known(flat.getvalue()) is None  # a flat picture has no perceptual hash to match


def test_two_placeholders_in_a_small_set_are_found_by_default(embed_args, dataset, capsys):
    """The issue's case: a 100-post set with one row per placeholder (the shared-bytes rule needs 20)."""
    images = dataset / "images"
    (images / "va0001.jpg").write_bytes((FIXTURES / "imgur_removed_161x81.png").read_bytes())
    (images / "te0002.jpg").write_bytes(_reencoded((FIXTURES / "imgur_removed_108x54.png").read_bytes()))
    assert main(embed_args) == 0
    manifest = cache.read_manifest(cache_dir_of(embed_args))
    assert {name: info["placeholder_rows"] for name, info in manifest["splits"].items()} == \
        {"train": 0, "val": 1, "test": 1}
    listed = {entry["example"]: entry for entry in manifest["config"]["placeholder_files"]}
    assert set(listed) == {"images/va0001.jpg", "images/te0002.jpg"} and all(e["rows"] == 1 for e in listed.values())
    assert "161x81" in listed["images/va0001.jpg"]["known"] and listed["images/te0002.jpg"]["known"].endswith(
        "re-encoded")
    assert "placeholder_rows=1" in capsys.readouterr().out
    assert main(embed_args + ["--on-placeholder", "skip", "--on-stale", "rebuild"]) == 0
    manifest = cache.read_manifest(cache_dir_of(embed_args))
    assert manifest["splits"]["val"]["skipped_by_reason"] == {"placeholder_image": 1}
    assert manifest["splits"]["test"]["skipped_by_reason"] == {"placeholder_image": 1}
    skipped = (Path(cache_dir_of(embed_args)) / "skipped.tsv").read_text()
    assert "val\tva0001\tplaceholder_image" in skipped and "test\tte0002\tplaceholder_image" in skipped
