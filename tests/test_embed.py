"""Stage one end to end on tiny models: alignment, resume, staleness, and every bad input reported."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_cache, cache_dir_of, load_all, with_flag, write_split

from pipeline.__main__ import main
from pipeline.data.images import ImageSettings, load_image
from pipeline.data.splits import read_split
from pipeline.embed import cache
from pipeline.model.batch import pixel_values
from pipeline.model.classifier import build_encoders
from pipeline.model.text_encoder import load_tokenizer


def test_each_row_equals_that_row_embedded_alone(embed_args, tiny_bert, tiny_clip, dataset):
    assert main(embed_args + ["--num-workers", "2", "--pooling", "mean"]) == 0
    cached = cache.load_split(cache_dir_of(embed_args), "train")
    rows = read_split(dataset, "train")
    model, _ = build_encoders(tiny_bert, tiny_clip, pooling="mean")
    model.eval()
    tokenizer = load_tokenizer(tiny_bert)
    settings = ImageSettings.from_model_folder(tiny_clip)
    assert list(cached.ids) == rows.ids  # file order kept although batches are sorted by length
    for i in [0, 5, 13, len(rows) - 1]:
        pixels = torch.from_numpy(load_image(dataset, rows.image_paths[i], settings))[None]
        batch = dict(tokenizer([rows.texts[i]], return_tensors="pt"))
        batch["pixel_values"] = pixel_values(pixels, settings)
        with torch.no_grad():
            alone = model.encode(batch)
        assert np.allclose(cached.text_emb[i], alone["text_emb"][0].numpy(), atol=1e-5)
        assert np.allclose(cached.image_emb[i], alone["image_emb"][0].numpy(), atol=1e-5)
        assert cached.labels[i] == rows.labels[i]


def test_interrupted_run_resumes_to_the_same_cache(embed_args, tmp_path, monkeypatch, capsys):
    reference_args = with_flag(embed_args, "--cache-dir", str(tmp_path / "reference"))
    assert main(reference_args) == 0
    real_write = cache.write_part
    calls = []

    def crash_on_third_part(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return real_write(*args, **kwargs)

    monkeypatch.setattr(cache, "write_part", crash_on_third_part)
    assert main(embed_args) == 130
    assert not (tmp_path / "cache" / cache.MANIFEST_NAME).exists()
    written_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "train").glob("part-*")}
    assert len(written_before) == 2
    monkeypatch.setattr(cache, "write_part", real_write)
    capsys.readouterr()
    assert main(embed_args) == 0
    # The rerun says what it continues: which cache, which fingerprint, how far each split had got.
    said = re.search(r"cache (\S+): resuming the run with fingerprint (\w{12}); parts already embedded: "
                     r"train 2 of 3, val 0 of 1, test 0 of 1", capsys.readouterr().out)
    assert said and said.group(1) == str(tmp_path / "cache")
    assert cache.read_manifest(tmp_path / "cache")["fingerprint"].startswith(said.group(2))
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "train").glob("part-*")}
    assert all(after[name] == mtime for name, mtime in written_before.items())  # kept, not redone
    assert_same_cache(load_all(cache_dir_of(embed_args)), load_all(tmp_path / "reference"))


@pytest.mark.parametrize("change", ["text_model", "clip_lora", "setting", "split_file"])
def test_changed_inputs_are_detected(embed_args, tiny_bert, dataset, tmp_path, change, capsys):
    lora = tmp_path / "lora.pt"
    torch.save({"vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 32) * 0.1,
                "vision_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, 2) * 0.1,
                "lora_alpha": 4}, lora)
    args = embed_args + ["--clip-lora", str(lora)]
    assert main(args) == 0
    before = load_all(cache_dir_of(args))
    if change == "text_model":
        other = tmp_path / "bert2"
        shutil.copytree(tiny_bert, other)
        (other / "config.json").write_text(
            (other / "config.json").read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
        args = with_flag(args, "--text-model", str(other))
    elif change == "clip_lora":
        state = torch.load(lora, weights_only=True)
        state["lora_alpha"] = 8
        torch.save(state, lora)
    elif change == "setting":
        args = with_flag(args, "--max-length", "5")
    else:
        (dataset / "val.tsv").write_text((dataset / "val.tsv").read_text().replace("\t1\t", "\t0\t", 1))
    capsys.readouterr()
    def files():
        return {path: path.read_bytes() for path in sorted(Path(cache_dir_of(args)).rglob("*")) if path.is_file()}

    untouched = files()
    assert main(args) == 2  # refused by default: another model never destroys a cache
    err = capsys.readouterr().err
    assert "built from other inputs" in err and "--on-stale rebuild" in err and "another --cache-dir" in err
    assert files() == untouched
    assert main(with_flag(args, "--on-stale", "refuse")) == 2
    assert main(args + ["--on-stale", "rebuild"]) == 0
    assert "rebuilding" in capsys.readouterr().out
    after = load_all(cache_dir_of(args))
    changed = {"text_model": "text_emb", "clip_lora": "image_emb", "setting": "text_emb"}.get(change)
    if changed:
        assert not np.allclose(getattr(before["train"], changed), getattr(after["train"], changed))
    else:
        assert not np.array_equal(before["val"].labels, after["val"].labels)


def test_bad_rows_are_skipped_and_reported(embed_args, dataset, capsys):
    rows = [
        {"id": "ok1", "clean_title": "a photo", "2_way_label": 1, "local_image_path": "images/tr0000.jpg"},
        {"id": "gone", "clean_title": "a cat", "2_way_label": 0, "local_image_path": "images/nothing.jpg"},
        {"id": "text", "clean_title": "a dog", "2_way_label": 1, "local_image_path": "notes.jpg"},
        {"id": "escape", "clean_title": "a car", "2_way_label": 0, "local_image_path": "../secret.jpg"},
        {"id": "blank", "clean_title": "  ", "2_way_label": 1, "local_image_path": "images/tr0001.jpg"},
        {"id": "ok2", "clean_title": "the man", "2_way_label": 0, "local_image_path": "images/tr0002.jpg"},
    ]
    (dataset / "notes.jpg").write_text("hello")
    write_split(dataset, "val", rows)
    assert main(embed_args) == 0
    out = capsys.readouterr().out
    manifest = cache.read_manifest(cache_dir_of(embed_args))
    val = manifest["splits"]["val"]
    assert (val["rows_read"], val["rows_embedded"], val["rows_skipped"]) == (6, 2, 4)
    assert val["skipped_by_reason"] == {"missing_file": 1, "not_an_image": 1, "outside_image_root": 1, "empty_title": 1}
    skipped = (manifest and open(f"{cache_dir_of(embed_args)}/skipped.tsv").read().splitlines())
    assert skipped[0] == "split\tid\treason" and "val\tgone\tmissing_file" in skipped
    assert "empty_title=1" in out
    assert list(cache.load_split(cache_dir_of(embed_args), "val").ids) == ["ok1", "ok2"]


def test_fail_policy_stops_at_the_first_bad_image(embed_args, dataset, capsys):
    (dataset / "images" / "va0003.jpg").unlink()
    assert main(embed_args + ["--on-bad-image", "fail"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "val.tsv: line 5" in last and "missing file" in last
    assert "Traceback" not in err


@pytest.mark.parametrize("edit,message", [
    (lambda text: text.replace("clean_title", "headline"), "missing column.*clean_title or title.*found: id"),
    (lambda text: text.replace("\t1\t", "\t\t", 1), "1 row\\(s\\) are not, e.g. line 3: ''"),  # an empty label
    (lambda text: text.replace("\t1\t", "\t2\t", 1), "line 3: '2'"),
    (lambda text: text.replace("\t0\t", "\ttrue\t", 1), "must be 0 \\(fake\\) or 1 \\(real\\)"),
    (lambda text: text.replace("te0001", "te0000"), "id 'te0000' appears on line 2 with label 0 and on line 3"),
    (lambda text: text.splitlines()[0] + "\n", "no rows"),
])
def test_bad_tables_are_clear_errors(embed_args, dataset, capsys, edit, message):
    import re

    path = dataset / "test.tsv"
    path.write_text(edit(path.read_text()))
    assert main(embed_args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "test.tsv" in err and re.search(message, err), err


def test_image_pattern_when_there_is_no_path_column(embed_args, dataset, tmp_path):
    for split in ("train", "val", "test"):
        path = dataset / f"{split}.tsv"
        lines = [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()]
        (dataset / f"{split}_filtered.tsv").write_text("\n".join(lines) + "\n")
        path.unlink()
    args = embed_args + ["--image-root", str(dataset / "images"), "--image-pattern", "{id}.jpg"]
    assert main(args) == 0
    assert cache.read_manifest(cache_dir_of(args))["splits"]["train"]["rows_embedded"] == 24


def test_flag_errors_exit_2_without_traceback(embed_args, capsys):
    assert main(embed_args + ["--pooling", "sum"]) == 2
    err = capsys.readouterr().err
    assert "--pooling 'sum': not a valid choice; use one of: auto, cls, mean, max, pooler" in err
    assert main(with_flag(embed_args, "--text-model", "/no/such/folder")) == 2
    assert "--text-model /no/such/folder: no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(embed_args + ["--batch-size", "many"])
    assert exited.value.code == 2


def test_float16_storage_halves_the_vectors(embed_args, tmp_path):
    args = with_flag(embed_args, "--cache-dtype", "float16")
    assert main(args) == 0
    loaded = cache.load_split(cache_dir_of(args), "train")
    assert loaded.text_emb.dtype == np.float32  # computation stays float32
