"""The house rules that keep the rooms apart, read from the source, and a `--help` that imports no model code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
STAGES = ("embed", "train", "e2e", "bench", "predict", "report", "doctor", "compare", "serve")
COMMANDS = ("embed", "train-head", "ablate", "finetune-e2e", "predict", "bench", "report", "doctor", "compare",
            "serve")


def imports(path):
    """(module, [names]) for every import in a file, at any depth (imports inside functions count)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def room_of(module):
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


@pytest.mark.parametrize("room", ["data", "model"])
def test_data_and_model_import_nothing_from_the_stages(room):
    files = sorted((PACKAGE / room).glob("*.py"))
    assert files
    for path in files:
        for module, names in imports(path):
            used = {room_of(module)} | {name for name in names if module == "pipeline"}
            assert not used & set(STAGES), f"{path.relative_to(PACKAGE)} imports {module} {names}"


@pytest.mark.parametrize("room", ["e2e", "bench", "predict", "report", "doctor", "compare", "serve"])
def test_other_rooms_use_only_public_names_of_other_rooms(room):
    for path in sorted((PACKAGE / room).glob("*.py")):
        for module, names in imports(path):
            if module.startswith("pipeline") and room_of(module) != room:
                private = [name for name in names if name.startswith("_")]
                assert not private, f"{path.relative_to(PACKAGE)} imports private {private} from {module}"


# Every room, lowest first: a room imports only rooms before it, so no two rooms import each other (train
# never imports report, which reads train's folders; `__main__` writes a command's page).
ROOMS = ("data", "model", "embed", "runs", "doctor", "train", "e2e", "predict", "report", "compare", "serve", "bench")


def upward_imports(room):
    """(file, module) of each import in `room` of a room not before it in ROOMS."""
    allowed = set(ROOMS[:ROOMS.index(room)])
    for path in sorted((PACKAGE / room).glob("*.py")):
        for module, _ in imports(path):
            other = room_of(module)
            if other and other != room and (PACKAGE / other).is_dir() and other not in allowed:
                yield path.relative_to(PACKAGE), module


def test_every_room_is_in_the_order():
    assert sorted(ROOMS) == sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("room", ROOMS)
def test_rooms_import_only_the_rooms_below_them(room):
    assert not list(upward_imports(room))


def test_the_direction_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """A train file that imported report (the cycle this rule removed) would be caught."""
    fake = tmp_path / "pipeline"
    (fake / "train").mkdir(parents=True)
    (fake / "report").mkdir()
    (fake / "train" / "cli.py").write_text("def run():\n    from pipeline.report.build import write_report\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert list(upward_imports("train")) == [(Path("train/cli.py"), "pipeline.report.build")]


def test_the_rule_checker_sees_a_violation(tmp_path):
    """The checks above would fail on a private import: the reader finds imports inside functions too."""
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from pipeline.train.fit import _secret\n")
    assert ("pipeline.train.fit", ["_secret"]) in list(imports(path))


def test_help_imports_neither_torch_nor_transformers():
    code = (
        "import sys\nfrom pipeline.__main__ import main\n"
        f"for argv in [['--help']] + [[name, '--help'] for name in {list(COMMANDS)!r}]:\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = [name for name in ('torch', 'transformers', 'peft', 'sklearn', 'fastapi', 'uvicorn')\n"
        "         if name in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    assert "--cache-dir" in result.stdout and "--lr-encoder" in result.stdout  # the commands' flags were listed
    assert result.stderr.strip().splitlines()[-1] == "HEAVY []"


def test_import_pipeline_and_its_classifier_name_import_no_torch():
    code = "import sys, pipeline\nassert 'Classifier' in pipeline.__all__\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=PACKAGE.parent)
    assert result.stdout.strip() == "False"
