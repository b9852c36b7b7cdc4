"""Image loading: any mode to RGB, EXIF orientation, root containment, pixel cap, CLIP-equal preprocessing."""

import numpy as np
import pytest
import torch
from conftest import rgb_noise
from PIL import Image
from transformers import CLIPImageProcessor

from pipeline.data.images import BadImage, ImageSettings, load_image
from pipeline.model.batch import pixel_values

SETTINGS = ImageSettings(size=32, draft=False)


def save(image, root, name, **kwargs):
    image.save(root / name, **kwargs)
    return name


@pytest.mark.parametrize("mode,fmt", [
    ("P", "GIF"), ("RGBA", "PNG"), ("LA", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("1", "PNG"),
])
def test_any_mode_becomes_rgb(tmp_path, mode, fmt):
    name = save(rgb_noise((40, 30)).convert(mode), tmp_path, "x.jpg", format=fmt)  # every file named .jpg
    pixels = load_image(tmp_path, name, SETTINGS)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    pixels = load_image(tmp_path, "deep.png", SETTINGS)
    assert 100 < pixels.mean() < 160  # scaled, not clipped to white (255) by convert("L")


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 30, 30))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = load_image(tmp_path, "rotated.jpg", ImageSettings(size=30, draft=False))
    top, bottom = pixels[2, 15], pixels[27, 15]
    assert top[2] > 200 and bottom[0] > 200  # blue is now on top


def test_matches_clip_image_processor(tmp_path):
    image = rgb_noise((90, 50), seed=4)
    image.save(tmp_path / "a.png")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = processor(images=image, return_tensors="pt")["pixel_values"]
    ours = pixel_values(torch.from_numpy(load_image(tmp_path, "a.png", SETTINGS))[None], SETTINGS)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() < 0.02  # rounding to uint8 before normalising


@pytest.mark.parametrize("relative", ["../outside.jpg", "/etc/hostname", "link.jpg"])
def test_paths_outside_the_root_are_refused(tmp_path, relative):
    root = tmp_path / "root"
    root.mkdir()
    rgb_noise((8, 8)).save(tmp_path / "outside.jpg")
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(BadImage) as caught:
        load_image(root, relative, SETTINGS)
    assert caught.value.reason == "outside_image_root"


def test_bad_files_give_reasons(tmp_path):
    rgb_noise((64, 64)).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[:200])
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    expected = {"truncated.jpg": "truncated_or_corrupt", "text.jpg": "not_an_image", "empty.jpg": "not_an_image",
                "folder.jpg": "not_a_file", "absent.jpg": "missing_file", "": "no_image_path"}
    for name, reason in expected.items():
        with pytest.raises(BadImage) as caught:
            load_image(tmp_path, name, SETTINGS)
        assert caught.value.reason == reason, name


def test_pixel_cap_refuses_before_decoding(tmp_path):
    rgb_noise((100, 100)).save(tmp_path / "big.png")
    with pytest.raises(BadImage) as caught:
        load_image(tmp_path, "big.png", ImageSettings(size=32, max_pixels=5_000))
    assert caught.value.reason == "too_many_pixels"


def test_draft_decoding_stays_close(tmp_path):
    rgb_noise((640, 480), seed=2).resize((64, 48)).resize((640, 480)).save(tmp_path / "photo.jpg", quality=92)
    exact = load_image(tmp_path, "photo.jpg", ImageSettings(size=32, draft=False)).astype(float)
    fast = load_image(tmp_path, "photo.jpg", ImageSettings(size=32, draft=True)).astype(float)
    assert np.abs(exact - fast).mean() < 6


def test_fast_path_embeddings_match_the_clip_processor(tiny_clip, tmp_path):
    """Draft JPEG decoding + uint8 resize + batched normalisation against CLIPImageProcessor on the
    same files: the image embeddings agree to cosine >= 0.999."""
    from pipeline.model.image_encoder import load_image_encoder

    names = []
    for i, size in enumerate([(1600, 1200), (320, 240), (90, 200)]):
        image = rgb_noise((size[0] // 40, size[1] // 40), seed=i).resize(size, Image.Resampling.BICUBIC)
        image.save(tmp_path / f"{i}.jpg", quality=90)
        names.append(f"{i}.jpg")
    settings = ImageSettings.from_model_folder(tiny_clip)  # draft decoding on, as embed runs
    processor = CLIPImageProcessor.from_pretrained(tiny_clip)
    encoder = load_image_encoder(tiny_clip).eval()
    fast = pixel_values(torch.from_numpy(np.stack([load_image(tmp_path, n, settings) for n in names])), settings)
    plain = processor(images=[Image.open(tmp_path / n).convert("RGB") for n in names],
                      return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(encoder(fast), encoder(plain))
    assert (cosine >= 0.999).all(), cosine


def test_a_fifo_is_not_a_file_and_never_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block until a writer came
    with pytest.raises(BadImage) as caught:
        load_image(tmp_path, "pipe.jpg", SETTINGS)
    assert caught.value.reason == "not_a_file"
