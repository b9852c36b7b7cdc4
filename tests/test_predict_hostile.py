"""predict and Classifier: right or refused. Each hostile input is either answered correctly or refused
with an error naming the file, argument or row (exit 2 from the CLI), never a traceback."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import embed_flags
from PIL import Image

from pipeline import Classifier
from pipeline.__main__ import main
from pipeline.embed import cache
from pipeline.errors import UserError
from pipeline.predict.run import read_results
from tests.helpers import trained_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert, tiny_clip):
    return trained_run(tmp_path_factory.mktemp("hostile-predict"), tiny_bert, tiny_clip, "--max-epochs", "2",
                       "--no-report")


@pytest.fixture(scope="module")
def clf(run):
    return Classifier.from_run(run["run"], device="cpu", batch_size=4)


def flags(run_dir, input_path, out, *extra):
    return ["predict", "--run", str(run_dir), "--input", str(input_path), "--out", str(out), "--device", "cpu",
            "--num-workers", "0", "--batch-size", "4", "--part-rows", "5", *extra]


def refused(capsys, args, *needles):
    """The command exits 2 with one `error:` naming each needle, and no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    error = err.strip().splitlines()[-1]  # after any progress bar of the embedding
    assert error.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in error, err
    return error


def copy_run(run, tmp_path, **record_changes):
    """A copy of the run folder whose encoders.json has `record_changes` (dotted keys: image.size)."""
    copy = shutil.copytree(run["run"], tmp_path / "run")
    record = json.loads((copy / "encoders.json").read_text())
    for key, value in record_changes.items():
        *path, last = key.split("__")
        target = record
        for part in path:
            target = target[part]
        target[last] = value
    (copy / "encoders.json").write_text(json.dumps(record))
    return copy


# --- the command line -------------------------------------------------------------------------------------

def test_input_a_directory_is_refused(run, tmp_path, capsys):
    refused(capsys, flags(run["run"], run["data"], tmp_path / "p.csv"), f"--input {run['data']}: a folder")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("changes,needles", [
    ({"image__size": 64}, ["encoders.json (image.size)", "64x64", "32x32"]),
    ({"max_length": 512}, ["encoders.json: max_length 512", "at most 128 tokens"]),
])
def test_a_record_the_encoders_cannot_take_is_refused_up_front(run, tmp_path, capsys, changes, needles):
    copy = copy_run(run, tmp_path, **changes)
    refused(capsys, flags(copy, run["data"] / "val.tsv", tmp_path / "p.csv", "--image-root", str(run["data"])),
            *needles)


def test_embed_refuses_a_preprocessor_crop_the_clip_model_cannot_take(run, tiny_bert, tiny_clip, tmp_path, capsys):
    clip = shutil.copytree(tiny_clip, tmp_path / "clip")
    config = json.loads((clip / "preprocessor_config.json").read_text())
    config["crop_size"] = {"height": 48, "width": 48}
    config["size"] = {"shortest_edge": 48}  # a consistent processor: only the model's own size disagrees
    (clip / "preprocessor_config.json").write_text(json.dumps(config))
    refused(capsys, embed_flags(run["data"], tiny_bert, clip, tmp_path / "cache"),
            f"{clip / 'preprocessor_config.json'}: crops images to 48x48", "takes 32x32")
    assert not (tmp_path / "cache" / "manifest.json").exists()
    refused(capsys, ["finetune-e2e", "--data-dir", str(run["data"]), "--text-model", str(tiny_bert), "--clip-model",
                     str(clip), "--device", "cpu", "--num-workers", "0", "--out", str(tmp_path / "e2e")],
            "crops images to 48x48")


def test_finetune_e2e_refuses_a_max_length_the_text_model_cannot_take(run, tiny_bert, tiny_clip, tmp_path, capsys):
    refused(capsys, ["finetune-e2e", "--data-dir", str(run["data"]), "--text-model", str(tiny_bert), "--clip-model",
                     str(tiny_clip), "--device", "cpu", "--num-workers", "0", "--max-length", "512",
                     "--out", str(tmp_path / "e2e")], "--max-length 512", "at most 128 tokens")


def test_images_elsewhere_are_said_and_none_found_is_refused(run, tmp_path, capsys):
    """The README's Fakeddit layout: the TSV in one folder, the images under another, no --image-root."""
    posts = tmp_path / "posts.tsv"
    table = pd.read_csv(run["data"] / "val.tsv", sep="\t", dtype=str)
    (tmp_path / "images").mkdir()
    shutil.copy(run["data"] / table["local_image_path"][0], tmp_path / table["local_image_path"][0])  # 1 of 8
    table.to_csv(posts, sep="\t", index=False)
    out = tmp_path / "p.csv"
    assert main(flags(run["run"], posts, out)) == 0
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert len(meta["warnings"]) == 1 and f"7 of 8 rows have no image file under {tmp_path}" in meta["warnings"][0]
    assert "--image-root" in meta["warnings"][0] and "warning: 7 of 8 rows" in printed.splitlines()[0]
    got = read_results(out)
    assert list(got["status"]) == ["ok"] + ["ok_text_only"] * 7 and set(got["reason"][1:]) == {"missing_file"}

    (tmp_path / table["local_image_path"][0]).unlink()  # none left
    refused(capsys, flags(run["run"], posts, tmp_path / "q.csv"), f"{posts}: none of its 8 rows' images was found",
            "--image-root", "--text-only")
    assert not (tmp_path / "q.csv").exists()
    assert main(flags(run["run"], posts, tmp_path / "q.csv", "--text-only")) == 0
    got = read_results(tmp_path / "q.csv")
    assert set(got["status"]) == {"ok_text_only"} and set(got["reason"]) == {"text_only_requested"}
    assert got["prob_real"].notna().all()
    # the titles alone, asked for, give the probabilities of rows whose images are missing
    expected = read_results(out)
    np.testing.assert_allclose(got["prob_real"][1:], expected["prob_real"][1:], atol=1e-6)


def kept_parts_run(run, tmp_path, out="p.csv"):
    """predict on a copy of the val split and its images, parts kept in tmp_path/parts: (args, data copy)."""
    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(run["data"], data)
    return flags(run["run"], data / "val.tsv", tmp_path / out, "--image-root", str(data), "--cache-dir",
                 str(tmp_path / "parts")), data


def test_changed_images_are_embedded_again(run, tmp_path, capsys):
    args, data = kept_parts_run(run, tmp_path)
    assert main(args) == 0
    first = read_results(tmp_path / "p.csv")
    part0 = cache.part_path(tmp_path / "parts", "posts", 0)
    stamp = part0.stat().st_mtime_ns
    changed = data / pd.read_csv(data / "val.tsv", sep="\t", dtype=str)["local_image_path"][6]  # in part 1
    Image.new("RGB", (50, 50), (255, 255, 0)).save(changed)
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "the images of 1 part(s) changed on disk" in printed and "resuming; 1 part(s) already embedded" in printed
    assert part0.stat().st_mtime_ns == stamp  # the unchanged part is reused
    again = read_results(tmp_path / "p.csv")
    fresh_args = [a for a in args if a not in ("--cache-dir", str(tmp_path / "parts"))]
    fresh_args[fresh_args.index("--out") + 1] = str(tmp_path / "fresh.csv")
    assert main(fresh_args) == 0
    fresh = read_results(tmp_path / "fresh.csv")
    np.testing.assert_allclose(again["prob_real"], fresh["prob_real"], atol=1e-6)  # the new image's answer
    assert abs(again["prob_real"][6] - first["prob_real"][6]) > 1e-6  # not the old one


def rewrite_part(path, ids=None, poison=None):
    """Write a kept part again with other ids or a NaN/Inf in its text vectors, as a damaged file would be."""
    stored = cache.read_part_rows(path)
    text = stored.text_emb.copy()
    if poison is not None:
        text[0, 0] = poison
    cache.write_part(path, ids or stored.ids, None, text, stored.image_emb, stored.skipped,
                     has_text=stored.has_text, has_image=stored.has_image, partial=stored.partial)


@pytest.mark.parametrize("damage,needle", [
    ({"poison": float("nan")}, "text vectors hold NaN or Inf"),
    ({"poison": float("inf")}, "text vectors hold NaN or Inf"),
    ({"ids": ["x1", "x2", "x3", "x4", "x5"]}, "does not hold rows 1-5 of"),
])
def test_a_damaged_kept_part_is_an_error_naming_it(run, tmp_path, capsys, damage, needle):
    args, _ = kept_parts_run(run, tmp_path)
    assert main(args) == 0
    part0 = cache.part_path(tmp_path / "parts", "posts", 0)
    rewrite_part(part0, **damage)
    args[args.index("--out") + 1] = str(tmp_path / "q.csv")
    refused(capsys, args, f"{part0}: ", needle)
    assert not (tmp_path / "q.csv").exists()


# --- the Python API -----------------------------------------------------------------------------------------

def val_rows(run):
    rows = pd.read_csv(run["data"] / "val.tsv", sep="\t", dtype=str)
    return list(rows["clean_title"]), [str(run["data"] / p) for p in rows["local_image_path"]]


@pytest.mark.parametrize("call,message", [
    (lambda c, t, i: c.predict(t, i[:3]), "8 titles but 3 images"),
    (lambda c, t, i: c.predict(t, i, ids=["a"]), "8 titles but 1 ids"),
    (lambda c, t, i: c.predict(t, i, labels=[0, 1]), "8 titles but 2 labels"),
    (lambda c, t, i: c.predict([5] + t[1:], i), r"titles\[0\] is int 5"),
    (lambda c, t, i: c.predict([b"a title"] + t[1:], i), r"titles\[0\] is bytes .*decode bytes first"),
    (lambda c, t, i: c.predict("a title", "x.jpg"), "titles is a single str"),
    (lambda c, t, i: c.predict(t, [b"\xff\xd8"] + i[1:]), r"images\[0\] is raw bytes; pass PIL.Image.open"),
    (lambda c, t, i: c.predict(t, [np.zeros((4, 4), np.float32)] + i[1:]), r"images\[0\] is an array of shape"),
    (lambda c, t, i: c.predict(t, [3.5] + i[1:]), r"images\[0\] is a float"),
    (lambda c, t, i: c.predict(t, i, labels=[5] + [0] * 7), r"labels\[0\] is 5, not a class of this run"),
    (lambda c, t, i: c.predict(t, i, labels=[0.5] + [0] * 7), r"labels\[0\] is 0.5"),
    (lambda c, t, i: c.predict_tsv("/no/such/posts.tsv"), "/no/such/posts.tsv: no such file"),
    (lambda c, t, i: c.predict_tsv("/"), "/: a folder, not a file"),
])
def test_the_api_refuses_what_it_cannot_score(run, clf, call, message):
    titles, images = val_rows(run)
    with pytest.raises(UserError, match=message):
        call(clf, titles, images)


@pytest.mark.parametrize("options,message", [
    ({"threshold": "abc"}, "threshold 'abc': not a threshold"),
    ({"threshold": float("nan")}, "not a threshold"),
    ({"threshold": 1.5}, "not a threshold"),
    ({"batch_size": 0}, "batch_size 0: give a whole number"),
    ({"batch_size": 2.5}, "batch_size 2.5"),
    ({"max_pixels": -1}, "max_pixels -1"),
])
def test_from_run_refuses_bad_options(run, options, message):
    with pytest.raises(UserError, match=message):
        Classifier.from_run(run["run"], device="cpu", **options)


def test_the_api_takes_arrays_and_missing_titles_and_says_why_a_row_is_a_half(run, clf, tmp_path):
    titles, images = val_rows(run)
    pictures = [Image.open(path).convert("RGB") for path in images[:3]]
    as_pil = clf.predict(titles[:3], pictures)
    as_array = clf.predict(titles[:3], [np.asarray(p) for p in pictures])
    np.testing.assert_allclose(as_array["prob_real"], as_pil["prob_real"], atol=1e-6)
    assert list(as_array["status"]) == ["ok"] * 3 and list(as_array["reason"]) == [""] * 3

    link = tmp_path / "mine.jpg"
    link.symlink_to(images[0])  # a caller's own symlinked photo, no image root
    got = clf.predict([titles[0], float("nan"), None, titles[3]], [str(link), images[1], images[2], None],
                      labels=[1, 0, 1, 0])
    assert list(got["status"]) == ["ok_text_only", "ok_image_only", "ok_image_only", "ok_text_only"]
    assert list(got["reason"]) == ["outside_image_root", "empty_title", "empty_title", "no_image_path"]
    assert got["prob_real"].notna().all() and list(got["label"]) == [1, 0, 1, 0]
