"""Issue 11: never destroy what we did not write, never cache garbage quietly, one `error:` line per bad file.

Every case runs the real command on real files in a temporary folder; an error is exit status 2 with
one `error:` line and no traceback (main() lets anything but UserError escape, which fails the test).
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_same_cache, cache_dir_of, load_all, with_flag, write_split
from safetensors.torch import load_file, save_file

from pipeline.__main__ import main
from pipeline.bench.synthetic import write_cache
from pipeline.data import splits as splits_module
from pipeline.embed import cache, main_loop
from pipeline.embed.cache import CachedSplit
from pipeline.errors import UserError
from pipeline.model.config import HeadConfig
from pipeline.model.head import FusionHead, load_head, save_head


def error_of(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def built(embed_args):
    assert main(embed_args) == 0
    return embed_args, load_all(cache_dir_of(embed_args))


# --- ownership ---------------------------------------------------------------------------------------

def test_user_files_in_the_cache_folder_survive_a_stale_rebuild(built, capsys, tmp_path):
    args, _ = built
    folder = tmp_path / "cache"
    (folder / "train" / "img001.jpg").write_bytes(b"\xff\xd8user image")  # images kept per split folder
    (folder / "train" / ".notes.tmp").write_text("mine")
    (folder / "notes.tmp").write_text("mine")
    mine = {name: data for name, data in tree(folder).items() if "img001" in name or "notes" in name}
    assert main(with_flag(args, "--max-length", "64") + ["--on-stale", "rebuild"]) == 0
    assert all(tree(folder)[name] == data for name, data in mine.items())
    assert cache.read_manifest(folder)["inputs"]["text"]["max_length"] == 64
    assert not (folder / ".rebuild").exists()
    load_all(folder)


def test_a_foreign_non_empty_folder_is_refused_and_left_as_it_was(embed_args, capsys, tmp_path):
    folder = tmp_path / "cache"
    (folder / "spark").mkdir(parents=True)
    (folder / "spark" / "part-00000.parquet").write_bytes(b"PAR1 someone else's")
    (folder / ".x.tmp").write_text("theirs")
    (folder / "manifest.json").write_text('{"theirs": true}')
    (folder / "skipped.tsv").write_text("theirs\n")
    before = tree(folder)
    assert main(embed_args) == 2
    assert "not empty and not a cache this tool wrote" in error_of(capsys)
    assert tree(folder) == before and not (folder / ".lock").exists()


def test_a_rebuild_whose_clip_fails_to_load_leaves_the_old_cache(built, tiny_clip, capsys, tmp_path):
    args, values = built
    broken = tmp_path / "clip-broken"
    shutil.copytree(tiny_clip, broken)
    state = load_file(broken / "model.safetensors")
    del state[next(k for k in state if "vision_model.encoder.layers.1" in k)]  # a missing layer weight
    save_file(state, broken / "model.safetensors")
    assert main(with_flag(args, "--clip-model", str(broken)) + ["--on-stale", "rebuild"]) == 2
    assert "missing" in error_of(capsys)
    assert_same_cache(load_all(cache_dir_of(args)), values, exact=True)


def test_a_rebuild_that_crashes_midway_leaves_the_old_cache_and_resumes(built, capsys, monkeypatch):
    args, values = built
    original, calls = main_loop._check_finite, []

    def crash_on_third(*a):
        calls.append(1)
        if len(calls) == 3:
            raise UserError("simulated crash")
        original(*a)

    monkeypatch.setattr(main_loop, "_check_finite", crash_on_third)
    stale = with_flag(args, "--max-length", "64") + ["--on-stale", "rebuild"]
    assert main(stale) == 2
    folder = cache_dir_of(args)
    assert_same_cache(load_all(folder), values, exact=True)  # still the old, complete cache
    monkeypatch.setattr(main_loop, "_check_finite", original)
    assert main(stale) == 0
    assert "resuming the rebuild" in capsys.readouterr().out
    assert cache.read_manifest(folder)["inputs"]["text"]["max_length"] == 64
    load_all(folder)


def test_a_lock_symlink_is_not_followed(embed_args, capsys, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    assert main(embed_args) == 2
    assert ".lock: cannot open the lock file" in error_of(capsys)
    assert target.read_text() == "precious"


def test_a_symlink_at_a_part_name_is_replaced_not_written_through(built, capsys, tmp_path):
    args, _ = built
    folder = tmp_path / "cache"
    target = tmp_path / "precious.bin"
    target.write_bytes(b"precious")
    part = folder / "train" / "part-00000.parquet"
    (folder / cache.MANIFEST_NAME).unlink()
    part.unlink()
    part.symlink_to(target)  # not a finished part: resume embeds it again and replaces the link
    assert main(args) == 0
    assert target.read_bytes() == b"precious"
    assert not part.is_symlink()
    load_all(folder)


# --- models load whole or not at all ----------------------------------------------------------------

def test_a_text_model_without_tokenizer_is_refused(embed_args, tiny_bert, capsys, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert main(with_flag(embed_args, "--text-model", str(folder))) == 2
    assert "tokenizer" in error_of(capsys)


def test_a_text_model_missing_a_layer_is_refused(embed_args, tiny_bert, capsys, tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    state = load_file(folder / "model.safetensors")
    removed = next(k for k in state if "encoder.layer.1.attention" in k)
    del state[removed]
    save_file(state, folder / "model.safetensors")
    assert main(with_flag(embed_args, "--text-model", str(folder))) == 2
    err = error_of(capsys)
    assert "1 missing" in err and "layer.1.attention" in err


def lora_file(path, value=0.01, alpha="8"):
    state = {"vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.full((4, 32), value),
             "vision_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.full((32, 4), 0.01)}
    save_file(state, path, metadata={"lora_alpha": alpha})
    return str(path)


@pytest.mark.parametrize("value, alpha", [(float("nan"), "8"), (0.01, "nan"), (float("inf"), "8")])
def test_a_nan_lora_weight_or_alpha_is_refused(embed_args, capsys, tmp_path, value, alpha):
    args = embed_args + ["--clip-lora", lora_file(tmp_path / "lora.safetensors", value, alpha)]
    assert main(args) == 2
    err = error_of(capsys)
    assert "NaN" in err or "not a positive finite number" in err


def test_max_length_without_room_for_a_token_is_refused(embed_args, capsys):
    assert main(with_flag(embed_args, "--max-length", "2")) == 2
    assert "--max-length 2: too short" in error_of(capsys)


def test_nan_vectors_stop_the_run_before_anything_is_written(embed_args, capsys, monkeypatch):
    encode = main_loop.pixel_values
    monkeypatch.setattr(main_loop, "pixel_values",
                        lambda pixels, settings, **options: encode(pixels, settings, **options) * float("nan"))
    assert main(embed_args) == 2
    assert "image vector is NaN or Inf; likely cause" in error_of(capsys)
    assert not list((__import__("pathlib").Path(cache_dir_of(embed_args))).rglob("part-*.parquet"))


# --- every file we read -----------------------------------------------------------------------------

PREPROCESSOR = {
    "std_zero": {"image_std": [0, 0, 0]},
    "std_nan": {"image_std": [float("nan")] * 3},
    "mean_text": {"image_mean": "grey"},
    "crop_not_square": {"crop_size": {"height": 32, "width": 16}},
    "crop_text": {"crop_size": "big"},
    "crop_zero": {"crop_size": 0},
    "crop_huge": {"crop_size": 10 ** 9},
    "crop_float": {"crop_size": 32.5},
}


@pytest.mark.parametrize("case", sorted(PREPROCESSOR) + ["not_json", "a_list"])
def test_a_bad_preprocessor_config_is_one_error_line(embed_args, tiny_clip, capsys, tmp_path, case):
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip, folder)
    path = folder / "preprocessor_config.json"
    if case == "not_json":
        path.write_text("{")
    elif case == "a_list":
        path.write_text("[]")
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **PREPROCESSOR[case]}))
    assert main(with_flag(embed_args, "--clip-model", str(folder))) == 2
    assert error_of(capsys).startswith(f"error: {path}: ")


@pytest.mark.parametrize("text", ["{", "[]", '{"lora_alpha": "x"}', '{"r": 2.5}'])
def test_a_bad_adapter_config_is_one_error_line(embed_args, capsys, tmp_path, text):
    folder = tmp_path / "adapter"
    folder.mkdir()
    lora_file(folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(text)
    assert main(embed_args + ["--clip-lora", str(folder)]) == 2
    assert "adapter_config.json" in error_of(capsys)


MANIFESTS = {
    "list": [],
    "dims_huge": {"dims": {"text": 10 ** 12, "image": 8}},
    "splits_list": {"splits": []},
    "part_path_escapes": {"splits": {"train": {"rows_embedded": 1, "parts": [
        {"file": "../../etc/passwd", "rows": 1, "sha256": "0"}]}}},
    "rows_do_not_add_up": {"splits": {"train": {"rows_embedded": 10 ** 12, "parts": []}}},
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_one_error_line(xor_cache, capsys, tmp_path, case):
    folder = tmp_path / "cache"
    shutil.copytree(xor_cache, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit = MANIFESTS[case]
    (folder / "manifest.json").write_text(json.dumps({**manifest, **edit} if isinstance(edit, dict) else edit))
    assert main(["train-head", "--cache-dir", str(folder), "--out", str(tmp_path / "run")]) == 2
    assert error_of(capsys).startswith(f"error: {folder / 'manifest.json'}: ")


def test_a_bad_fingerprint_file_is_refused(embed_args, capsys, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "fingerprint.json").write_text('["not ours"]')
    assert main(embed_args) == 2
    assert "not a fingerprint this tool wrote" in error_of(capsys)
    assert (folder / "fingerprint.json").read_text() == '["not ours"]'


@pytest.fixture
def head_folder(tmp_path):
    torch.manual_seed(0)
    save_head(tmp_path / "head", FusionHead(HeadConfig(text_dim=8, image_dim=8, proj_dim=4, hidden_dim=4)))
    return tmp_path / "head"


def test_head_files_are_checked_before_allocating(head_folder):
    weights, config = head_folder / "model.safetensors", head_folder / "head_config.json"
    good_weights, good_config = weights.read_bytes(), config.read_text()
    load_head(head_folder)
    cases = {
        "huge header": lambda: weights.write_bytes((10 ** 15).to_bytes(8, "little") + good_weights[8:]),
        "corrupt header": lambda: weights.write_bytes(good_weights[:8] + b"x" * 20 + good_weights[28:]),
        "cut file": lambda: weights.write_bytes(good_weights[:40]),
        "absurd proj_dim": lambda: config.write_text(good_config.replace('"proj_dim": 4', '"proj_dim": 400000000')),
        "wrong proj_dim": lambda: config.write_text(good_config.replace('"proj_dim": 4', '"proj_dim": 5')),
        "config a list": lambda: config.write_text("[]"),
        "unknown key": lambda: config.write_text(good_config.replace('"dropout"', '"dropouts"')),
    }
    for name, damage in cases.items():
        damage()
        with pytest.raises(UserError, match="re-save the head"):
            load_head(head_folder)
        weights.write_bytes(good_weights)
        config.write_text(good_config)
    state = load_file(weights)
    state[next(iter(state))][0] = float("nan")
    save_file(state, weights)
    with pytest.raises(UserError, match="NaN or Inf"):
        load_head(head_folder)


# --- stage two --------------------------------------------------------------------------------------

def head_args(cache_dir, out, *extra):
    return ["train-head", "--cache-dir", str(cache_dir), "--out", str(out), "--max-epochs", "1", "--device", "cpu",
            *extra]


@pytest.mark.parametrize("flags", [["--lr", "1e30"], ["--lr", "nan"], ["--weight-decay", "1e9"]])
def test_absurd_training_numbers_are_refused(xor_cache, capsys, tmp_path, flags):
    assert main(head_args(xor_cache, tmp_path / "run", *flags)) == 2
    assert error_of(capsys).startswith(f"error: {flags[0]} ")


def test_an_out_that_is_a_file_is_refused(xor_cache, capsys, tmp_path):
    (tmp_path / "run").write_text("a file")
    assert main(head_args(xor_cache, tmp_path / "run")) == 2
    assert "is a file, not a folder" in error_of(capsys)
    assert main(["ablate", "--cache-dir", str(xor_cache), "--out", str(tmp_path / "run")]) == 2
    assert "is a file, not a folder" in error_of(capsys)


def test_a_foreign_out_needs_overwrite_and_keeps_other_files(xor_cache, capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "config.json").write_text('{"mine": 1}')
    assert main(head_args(xor_cache, out)) == 2
    assert "not a train-head run folder" in error_of(capsys)
    assert (out / "config.json").read_text() == '{"mine": 1}'
    assert main(head_args(xor_cache, out, "--overwrite")) == 0
    assert (out / "thesis.tex").read_text() == "years of work"
    assert main(head_args(xor_cache, out)) == 2  # now one of our run folders: still never replaced silently
    assert "holds a train-head run folder" in error_of(capsys)


def test_non_finite_features_stop_training(capsys, tmp_path):
    rng = np.random.default_rng(0)

    def split(n):
        text = rng.normal(size=(n, 4)).astype(np.float32)
        return CachedSplit(np.array([f"r{i}" for i in range(n)], dtype=object), np.arange(n) % 2, text,
                           rng.normal(size=(n, 4)).astype(np.float32))

    splits = {"train": split(20), "val": split(10), "test": split(10)}
    splits["val"].image_emb[3, 1] = np.inf
    write_cache(tmp_path / "cache", splits)
    assert main(head_args(tmp_path / "cache", tmp_path / "run")) == 2
    assert "image_emb hold NaN or Inf" in error_of(capsys)


def test_a_non_finite_loss_stops_training(xor_cache, capsys, tmp_path):
    assert main(head_args(xor_cache, tmp_path / "run", "--class-weights", "1e308,1e308")) == 2
    assert "not finite" in error_of(capsys) or "NaN" in error_of(capsys)


# --- tables -----------------------------------------------------------------------------------------

def test_a_very_long_title_is_embedded_and_counted(embed_args, dataset, capsys):
    rows = [{"id": f"t{i}", "clean_title": ("news " * 60_000 if i == 0 else "the cat"), "2_way_label": i % 2,
             "local_image_path": f"images/tr{i:04d}.jpg"} for i in range(8)]
    write_split(dataset, "train", rows)
    assert main(embed_args + ["--splits", "train"]) == 0
    assert cache.read_manifest(cache_dir_of(embed_args))["splits"]["train"]["truncated_titles"] == 1


def test_a_split_file_too_big_for_memory_is_refused(embed_args, capsys, monkeypatch):
    monkeypatch.setattr(splits_module, "machine_memory_bytes", lambda: 100)
    assert main(embed_args) == 2
    assert "would not fit in this machine's" in error_of(capsys)
    assert not os.path.exists(cache_dir_of(embed_args))
