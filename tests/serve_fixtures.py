"""A served run for the serve tests: a head trained on tiny models, posts (good, half and hostile) as the
API sends them, and what offline `predict` gives for the same posts, to compare every answer with."""

import base64
import io
import struct
import zlib
from pathlib import Path

import pandas as pd
from conftest import embed_flags, make_dataset, write_split
from PIL import Image

from pipeline.__main__ import main
from pipeline.predict.run import read_results
from tests.helpers import SMALL_FLAGS

TOKEN = "s3cret-token-for-tests"


def png_claiming(width, height):
    """A tiny PNG whose header claims width x height pixels: a decompression bomb that costs nothing to send."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    body = struct.pack(">II", width, height) + bytes(data[start + 12:start + 17])
    data[start + 4:start + 17] = body
    data[start + 17:start + 21] = struct.pack(">I", zlib.crc32(b"IHDR" + body))
    return bytes(data)


def hostile_images(folder):
    """name -> bytes of images that must fail alone: bombs, truncation, not an image."""
    good = (Path(folder) / "images" / "te0000.jpg").read_bytes()
    return {"bomb_huge.png": png_claiming(100_000, 100_000),  # refused by Pillow at open
            "bomb_cap.png": png_claiming(12_000, 10_000),  # above our 100 M pixel cap, below Pillow's
            "truncated.jpg": good[:len(good) // 2],
            "notes.jpg": b"not an image at all"}


def build_served_run(root, tiny_bert, tiny_clip):
    """{"run", "data", "posts" (API posts, base64 images), "expected" (offline predict, indexed by id)}."""
    root = Path(root)
    data = make_dataset(root / "data")
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache")) == 0
    assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / "run"), *SMALL_FLAGS,
                 "--max-epochs", "3", "--no-report"]) == 0
    for name, content in hostile_images(data).items():
        (data / name).write_bytes(content)
    tests = pd.read_csv(data / "test.tsv", sep="\t", dtype=str)
    rows = [{"id": r.id, "clean_title": r.clean_title, "local_image_path": r.local_image_path}
            for r in tests.itertuples()]
    rows += [{"id": "no-image", "clean_title": "a photo of a cat", "local_image_path": ""},
             {"id": "no-title", "clean_title": " ", "local_image_path": "images/te0001.jpg"},
             {"id": "nothing", "clean_title": " ", "local_image_path": ""}]
    rows += [{"id": f"title+{name}", "clean_title": "shocking news", "local_image_path": name}
             for name in hostile_images(data)]
    rows += [{"id": f"only+{name}", "clean_title": " ", "local_image_path": name} for name in hostile_images(data)]
    write_split(root, "posts", rows)
    assert main(["predict", "--run", str(root / "run"), "--input", str(root / "posts.tsv"), "--out",
                 str(root / "posts.csv"), "--image-root", str(data), "--device", "cpu", "--num-workers", "0"]) == 0
    expected = read_results(root / "posts.csv").set_index("id")
    posts = [{"id": r["id"], "title": r["clean_title"].strip() or None,
              "image": base64.b64encode((data / r["local_image_path"]).read_bytes()).decode()
              if r["local_image_path"] else None} for r in rows]
    return {"run": root / "run", "data": data, "posts": posts, "expected": expected}


def assert_matches_offline(predictions, expected, atol=1e-5):
    """Every answer has the status and probability offline `predict` gave for that post."""
    for got in predictions:
        want = expected.loc[got["id"]]
        assert got["status"] == want["status"], got["id"]
        if pd.isna(want["prob_real"]):
            assert got["probs"] is None and got["pred"] is None, got["id"]
        else:
            assert abs(got["probs"]["real"] - want["prob_real"]) <= atol, got["id"]
            assert abs(got["probs"]["fake"] - (1 - want["prob_real"])) <= atol, got["id"]
            assert got["pred"] == int(want["pred"]) and got["pred_name"] == want["pred_name"], got["id"]
