"""A cache is never reused for other inputs, and a damaged or incomplete cache is never read as whole.

test_embed.py covers a changed text model, LoRA file, --max-length and split file
(refused, then rebuilt); here: the CLIP model and the image settings, and parts
damaged or deleted after the cache was complete.
"""

import json
import re
import shutil

import pytest
from conftest import assert_same_cache, embed_flags, load_all, make_dataset, with_flag

from pipeline.__main__ import main
from pipeline.embed import cache
from pipeline.errors import UserError


@pytest.fixture(scope="module")
def built(tiny_bert, tiny_clip, tmp_path_factory):
    """A complete cache (never modified by the tests that use it) and the flags that built it."""
    root = tmp_path_factory.mktemp("stale")
    data = make_dataset(root / "data", counts=(("train", 16), ("val", 8)))
    args = embed_flags(data, tiny_bert, tiny_clip, root / "cache") + ["--splits", "train,val"]
    assert main(args) == 0
    return {"root": root, "data": data, "args": args, "cache": root / "cache",
            "values": load_all(root / "cache", ("train", "val"))}


def edited_clip_copy(tiny_clip, folder, file, edit):
    shutil.copytree(tiny_clip, folder)
    path = folder / file
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return str(folder)


def clip_weights(config):
    config["vision_config"]["layer_norm_eps"] = 1e-3
    return config


def clip_preprocessing(config):
    config["image_mean"] = [0.5, 0.5, 0.5]
    return config


CHANGES = {  # name -> (flags given the module's folders, the components the refusal must name)
    "clip_model": (lambda b, clip: with_flag(b["args"], "--clip-model", edited_clip_copy(
        clip, b["root"] / "clip_weights", "config.json", clip_weights)), "clip_model"),
    "clip_preprocessing": (lambda b, clip: with_flag(b["args"], "--clip-model", edited_clip_copy(
        clip, b["root"] / "clip_mean", "preprocessor_config.json", clip_preprocessing)), "clip_model, image"),
    "no_draft": (lambda b, clip: b["args"] + ["--no-draft"], "image"),
    "max_pixels": (lambda b, clip: b["args"] + ["--max-pixels", "1000000"], "image"),
    "clip_embedding": (lambda b, clip: b["args"] + ["--clip-embedding", "pooled"], "image"),
    "image_root": (lambda b, clip: b["args"] + ["--image-root", str(shutil.copytree(b["data"], b["root"] / "copy"))],
                   "image_root"),
    "placeholders_skipped": (lambda b, clip: b["args"] + ["--on-placeholder", "skip"], "placeholders"),
    "cache_dtype": (lambda b, clip: b["args"] + ["--cache-dtype", "float16"], "cache_dtype"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_changed_clip_or_image_settings_are_detected(built, tiny_clip, change, capsys):
    make_args, changed = CHANGES[change]
    args = make_args(built, tiny_clip)
    capsys.readouterr()
    assert main(args + ["--on-stale", "refuse"]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"cache was built from other inputs \(changed: {changed}\); use another --cache-dir", err), err
    assert (built["cache"] / cache.MANIFEST_NAME).is_file()  # the refusal touched nothing


def copy_of(built, tmp_path):
    shutil.copytree(built["cache"], tmp_path / "cache")
    return tmp_path / "cache", with_flag(built["args"], "--cache-dir", str(tmp_path / "cache"))


def test_flipped_bytes_in_a_part_are_detected_on_read(built, tmp_path):
    cache_dir, _ = copy_of(built, tmp_path)
    part = cache_dir / "train" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the embedding values
    part.write_bytes(bytes(data))
    with pytest.raises(UserError, match=re.escape(f"{part}: checksum differs from the manifest")):
        cache.load_split(cache_dir, "train")
    assert len(cache.load_split(cache_dir, "val")) == 8  # the other split still reads


def test_a_part_deleted_after_completion_is_detected_and_embedded_again(built, tmp_path, capsys):
    cache_dir, args = copy_of(built, tmp_path)
    part = cache_dir / "val" / "part-00000.parquet"
    part.unlink()
    with pytest.raises(UserError, match=re.escape(f"{part}: part listed in the manifest is missing")):
        cache.load_split(cache_dir, "val")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 part(s) in the manifest are gone" in capsys.readouterr().out
    assert_same_cache(load_all(cache_dir, ("train", "val")), built["values"], exact=True)


def test_an_unreadable_part_of_an_unfinished_cache_is_an_error_naming_it(built, tmp_path, capsys):
    cache_dir, args = copy_of(built, tmp_path)
    (cache_dir / cache.MANIFEST_NAME).unlink()  # as if the run was killed before the end
    part = cache_dir / "train" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-30])  # the footer is cut
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: {part}: unreadable cache part") and "delete that file and rerun" in err
    part.unlink()
    assert main(args) == 0
    assert_same_cache(load_all(cache_dir, ("train", "val")), built["values"], exact=True)
