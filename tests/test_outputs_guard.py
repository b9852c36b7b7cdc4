"""Outputs never over inputs, runs never replaced without a word: each case of issue 19 and 20 a row.

Every refusal exits 2 before any work, names the path and the way on, and leaves the file it protects
byte for byte as it was; `--overwrite` (or `--resume`) is the way on, and a command's own earlier output
is rewritten without it.
"""

import base64
import json
import shutil

import pytest
from conftest import embed_flags, make_dataset

from pipeline.__main__ import main
from pipeline.errors import UserError
from pipeline.outputs import claim_run_folder, folder_kind
from tests.helpers import SMALL_FLAGS


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert, tiny_clip):
    """A stage-one cache, a train-head run on it, and predict's parts kept in a --cache-dir."""
    root = tmp_path_factory.mktemp("guard")
    data = make_dataset(root / "data", counts=(("train", 16), ("val", 8), ("test", 8)))
    assert main(embed_flags(data, tiny_bert, tiny_clip, root / "cache")) == 0
    assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / "run"), *SMALL_FLAGS,
                 "--max-epochs", "2", "--no-report"]) == 0
    assert main(predict(root, data / "test.tsv", root / "kept.csv", "--cache-dir", str(root / "predict-cache"))) == 0
    return {"root": root, "data": data, "cache": root / "cache", "run": root / "run",
            "predict_cache": root / "predict-cache", "bert": tiny_bert, "clip": tiny_clip}


def predict(root, input_path, out, *extra):
    return ["predict", "--run", str(root / "run"), "--input", str(input_path), "--out", str(out), "--image-root",
            str(root / "data"), "--device", "cpu", "--num-workers", "0", "--batch-size", "4", *extra]


def tree(path):
    """Every file under `path` (or the file itself) with its bytes: what must not change."""
    if path.is_file():
        return {path: path.read_bytes()}
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


def user_file(b):
    path = b["root"] / "mine.csv"
    path.write_text("years of work\n")
    return path


def input_link(b):
    link = b["root"] / "link.csv"
    link.unlink(missing_ok=True)
    link.symlink_to(b["data"] / "test.tsv")
    return link


# case: (argv from the fixture, the path it must leave as it was, words the error must hold)
REFUSED = {
    "predict --out naming the input TSV": (
        lambda b: predict(b["root"], b["data"] / "test.tsv", b["data"] / "test.tsv"),
        lambda b: b["data"] / "test.tsv", "an input of this command"),
    "predict --out a symlink to the input TSV": (
        lambda b: predict(b["root"], b["data"] / "test.tsv", input_link(b)),
        lambda b: b["data"] / "test.tsv", "a link to an input of this command"),
    "predict --out naming a user's file": (
        lambda b: predict(b["root"], b["data"] / "test.tsv", user_file(b)),
        lambda b: b["root"] / "mine.csv", "this command did not write it"),
    "predict --out naming a file of the run": (
        lambda b: predict(b["root"], b["data"] / "test.tsv", b["run"] / "predictions_test.csv"),
        lambda b: b["run"], "a file of the train-head run folder"),
    "predict --cache-dir naming an embed cache": (
        lambda b: predict(b["root"], b["data"] / "test.tsv", b["root"] / "p.csv", "--cache-dir", str(b["cache"])),
        lambda b: b["cache"], "holds a stage-one cache"),
    "embed --cache-dir naming a predict cache": (
        lambda b: embed_flags(b["data"], b["bert"], b["clip"], b["predict_cache"]),
        lambda b: b["predict_cache"], "holds a predict cache"),
    "doctor --write-clean-ids naming a split file": (
        lambda b: ["doctor", "--cache-dir", str(b["cache"]), "--write-clean-ids", str(b["data"] / "val.tsv"),
                   "--device", "cpu"],
        lambda b: b["data"] / "val.tsv", "an input of this command"),
    "doctor --write-clean-ids naming a user's file": (
        lambda b: ["doctor", "--cache-dir", str(b["cache"]), "--write-clean-ids", str(user_file(b)), "--device", "cpu"],
        lambda b: b["root"] / "mine.csv", "this command did not write it"),
    "report --out naming the run's metrics.json": (
        lambda b: ["report", str(b["run"]), "--out", str(b["run"] / "metrics.json")],
        lambda b: b["run"], "a file of the train-head run folder"),
    "report --out naming a user's file": (
        lambda b: ["report", str(b["run"]), "--out", str(user_file(b))],
        lambda b: b["root"] / "mine.csv", "this command did not write it"),
    "train-head --out naming an earlier run": (
        lambda b: ["train-head", "--cache-dir", str(b["cache"]), "--out", str(b["run"]), *SMALL_FLAGS],
        lambda b: b["run"], "holds a train-head run folder"),
    "ablate --out naming a train-head run": (
        lambda b: ["ablate", "--cache-dir", str(b["cache"]), "--out", str(b["run"]), "--device", "cpu"],
        lambda b: b["run"], "holds a train-head run folder"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_output_over_an_input_a_run_or_a_file_we_did_not_write_is_refused(built, case, capsys):
    argv, protected, words = REFUSED[case]
    argv = argv(built)
    before = tree(protected(built))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err, err
    assert "--overwrite" in err or "another --cache-dir" in err, err  # the way on is named
    assert tree(protected(built)) == before


def test_a_commands_own_earlier_output_is_rewritten_and_overwrite_replaces_a_users_file(built, capsys):
    root = built["root"]
    page = root / "page.html"
    for _ in range(2):
        assert main(["report", str(built["run"]), "--out", str(page)]) == 0
    for _ in range(2):
        assert main(predict(root, built["data"] / "test.tsv", root / "again.csv")) == 0
    clean = root / "clean.tsv"
    for _ in range(2):
        assert main(["doctor", "--cache-dir", str(built["cache"]), "--write-clean-ids", str(clean),
                     "--device", "cpu", "--out", str(root / "doctor")]) == 0
    assert clean.read_text().startswith("split\tid\n")
    mine = user_file(built)
    assert main(["report", str(built["run"]), "--out", str(mine), "--overwrite"]) == 0
    assert mine.read_text().startswith("<!DOCTYPE html>")


def test_a_rerun_into_a_run_folder_is_refused_unchanged_and_overwrite_replaces_it(built, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-head", "--cache-dir", str(built["cache"]), "--out", str(out), *SMALL_FLAGS, "--max-epochs", "1"]
    assert main(args) == 0
    before = tree(out)
    assert main(args + ["--seed", "5"]) == 2
    assert f"--out {out}: holds a train-head run folder" in capsys.readouterr().err
    assert tree(out) == before
    assert main(args + ["--seed", "5", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 5


def test_an_ablation_folder_is_not_replaced_without_overwrite(built, tmp_path, capsys):
    out = tmp_path / "ablation"
    args = ["ablate", "--cache-dir", str(built["cache"]), "--out", str(out), "--modalities", "text", "--fusions",
            "concat", "--seeds", "0", "--max-epochs", "1", "--device", "cpu", "--no-report"]
    assert main(args) == 0
    before = tree(out)
    assert main(args) == 2
    assert "holds an ablate run folder" in capsys.readouterr().err
    assert tree(out) == before
    assert main(args + ["--overwrite"]) == 0


def finished_e2e_folder(folder):
    """A finished finetune-e2e run folder as today's code writes it: config.json has no pipeline_version."""
    (folder / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"command": "finetune-e2e", "data": {}, "finetune": {}}))
    (folder / "metrics.json").write_text("{}")
    return folder


def test_a_finished_finetune_e2e_folder_is_ours_to_resume_but_not_to_replace(tmp_path):
    out = finished_e2e_folder(tmp_path / "e2e")
    assert folder_kind(out) == "finetune-e2e run folder"
    assert claim_run_folder(out, "finetune-e2e", resume=True) == out
    assert claim_run_folder(out, "finetune-e2e", overwrite=True) == out
    with pytest.raises(UserError, match="holds a finetune-e2e run folder.*--overwrite.*--resume"):
        claim_run_folder(out, "finetune-e2e")
    with pytest.raises(UserError, match="holds a finetune-e2e run folder"):  # --resume continues e2e runs only
        claim_run_folder(out, "train-head", resume=True)


def test_a_killed_finetune_e2e_folder_resumes_and_a_foreign_one_never_does(tmp_path):
    killed = tmp_path / "killed"
    (killed / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    assert claim_run_folder(killed, "finetune-e2e", resume=True) == killed
    with pytest.raises(UserError, match="--resume to continue"):
        claim_run_folder(killed, "finetune-e2e")
    (killed / "thesis.tex").write_text("mine")
    with pytest.raises(UserError, match="not empty and not a finetune-e2e run folder"):
        claim_run_folder(killed, "finetune-e2e", resume=True)


def test_a_planted_symlink_plot_is_not_embedded_in_the_page(built, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(built["run"], run)
    secret = tmp_path / "secret.png"
    secret.write_bytes((run / "roc.png").read_bytes() + b"SECRET-BYTES-OF-ANOTHER-FILE")
    (run / "roc.png").unlink()
    (run / "roc.png").symlink_to(secret)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert base64.b64encode((run / "pr.png").read_bytes()).decode() in page  # the run's own plots are there


def test_a_planted_symlink_plot_is_not_embedded_in_the_ablation_page(built, tmp_path):
    out = tmp_path / "ablation"
    assert main(["ablate", "--cache-dir", str(built["cache"]), "--out", str(out), "--modalities", "text",
                 "--fusions", "concat", "--seeds", "0", "--max-epochs", "1", "--device", "cpu", "--no-report"]) == 0
    secret = tmp_path / "secret.png"
    secret.write_bytes((out / "ablation_f1.png").read_bytes() + b"SECRET")
    (out / "ablation_f1.png").unlink()
    (out / "ablation_f1.png").symlink_to(secret)
    assert main(["report", str(out)]) == 0
    assert base64.b64encode(secret.read_bytes()).decode() not in (out / "report.html").read_text()
