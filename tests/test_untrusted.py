"""Files from other people: nothing in a checkpoint or model folder runs, and we write no pickles ourselves.

Each hostile file carries a payload that would create a marker file if it ran;
the tests check the clear refusal, that the marker is absent, and that an existing
cache survived the refused run.
"""

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import embed_flags, make_dataset, with_flag

from pipeline.__main__ import main
from pipeline.embed import cache

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# The rooms that stage one runs: it writes Parquet and JSON only.
STAGE_ONE_ROOMS = ("data", "model", "embed")


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): a file appears if the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(path, marker, nest):
    payload = {"vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 32),
               "hook": CreatesMarker(marker)}
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": payload} if nest else payload, handle, protocol=2)
    return path


@pytest.fixture(scope="module")
def complete_cache(tiny_bert, tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    args = embed_flags(make_dataset(root / "data", counts=(("train", 8),)), tiny_bert, tiny_clip, root / "cache")
    args += ["--splits", "train"]
    assert main(args) == 0
    return args, root / "cache"


@pytest.fixture
def embed_args(complete_cache, tmp_path):
    """The flags of a complete cache (a copy per test) that a refused run must leave as it was."""
    args, cache_dir = complete_cache
    shutil.copytree(cache_dir, tmp_path / "cache")
    return with_flag(args, "--cache-dir", str(tmp_path / "cache"))


def assert_refused(args, marker, capsys, *messages):
    manifest = Path(args[args.index("--cache-dir") + 1]) / cache.MANIFEST_NAME
    before = manifest.read_bytes()
    capsys.readouterr()
    assert main(args + ["--on-stale", "rebuild"]) == 2  # so that the new files are loaded: the refusal is theirs
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(message in err for message in messages), err
    assert not Path(marker).exists()  # the payload never ran
    assert manifest.read_bytes() == before  # and the old cache is untouched


@pytest.mark.parametrize("layout", ["lora.pt", "nested.pth", "weights.bin", "peft_adapter"])
def test_a_clip_checkpoint_whose_pickle_would_run_code_is_refused(embed_args, tmp_path, capsys, layout):
    marker = tmp_path / "ran"
    if layout == "peft_adapter":
        (tmp_path / layout).mkdir()
        (tmp_path / layout / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
        path = evil_pickle(tmp_path / layout / "adapter_model.bin", marker, nest=False)
    else:
        path = evil_pickle(tmp_path / layout, marker, nest=layout.startswith("nested"))
    args = embed_args + ["--clip-lora", str(tmp_path / layout)]
    assert_refused(args, marker, capsys, f"{path}: refused", "weights_only=True", "safetensors")


@pytest.mark.parametrize("flag", ["--text-model", "--clip-model"])
def test_a_model_folder_whose_weights_pickle_would_run_code_is_refused(
        embed_args, tiny_bert, tiny_clip, tmp_path, capsys, flag):
    folder = shutil.copytree(tiny_bert if flag == "--text-model" else tiny_clip, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    evil_pickle(folder / "pytorch_model.bin", tmp_path / "ran", nest=False)
    assert_refused(with_flag(embed_args, flag, str(folder)), tmp_path / "ran", capsys,
                   f"{flag} {folder}: refused", "weights_only=True")


@pytest.mark.parametrize("flag,file", [
    ("--text-model", "config.json"), ("--text-model", "tokenizer_config.json"), ("--clip-model", "config.json"),
])
def test_a_model_folder_asking_for_remote_code_is_refused(
        embed_args, tiny_bert, tiny_clip, tmp_path, capsys, flag, file):
    folder = shutil.copytree(tiny_bert if flag == "--text-model" else tiny_clip, tmp_path / "model")
    marker = tmp_path / "ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w')\nfrom transformers import *\n")
    config = json.loads((folder / file).read_text())
    config["auto_map"] = {"AutoModel": "custom.Model", "AutoTokenizer": ["custom.Tokenizer", None]}
    (folder / file).write_text(json.dumps(config))
    assert_refused(with_flag(embed_args, flag, str(folder)), marker, capsys,
                   f"{folder / file}: the model asks for custom code", "never runs code from a checkpoint")


def test_the_cache_holds_no_pickles(complete_cache):
    files = [path for path in complete_cache[1].rglob("*") if path.is_file()]
    assert {path.suffix or path.name for path in files} == {".parquet", ".json", ".tsv", ".lock"}
    assert all(path.read_bytes()[:4] == b"PAR1" for path in files if path.suffix == ".parquet")


def calls(tree):
    """(dotted name, keyword dict) of every call in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_no_code_path_loads_or_writes_pickles():
    assert len(list(PACKAGE.rglob("*.py"))) > 30  # the glob sees the rooms, not just the top level
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, keywords in calls(ast.parse(path.read_text())):
            assert name not in ("pickle.load", "pickle.loads", "torch.jit.load"), f"{path}: {name}"
            if name == "torch.load":
                assert keywords.get("weights_only") == "True", f"{path}: torch.load without weights_only=True"
            if name in ("np.load", "numpy.load"):
                assert keywords.get("allow_pickle") in (None, "False"), f"{path}: np.load(allow_pickle=True)"
    stage_one = [path for room in STAGE_ONE_ROOMS for path in sorted((PACKAGE / room).glob("*.py"))]
    assert len(stage_one) >= 13
    for module in stage_one:
        for name, keywords in calls(ast.parse(module.read_text())):
            assert name not in ("torch.save", "pickle.dump", "pickle.dumps", "np.save"), f"{module}: {name}"
            if name.endswith("save_pretrained"):
                assert keywords.get("safe_serialization") in (None, "True"), f"{module}: pickled save_pretrained"
