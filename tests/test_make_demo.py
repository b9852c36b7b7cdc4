"""Tests for data/make_demo.py: shape of the demo set, broken rows, determinism."""
import csv
import importlib.util
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "make_demo.py"
SPLITS = ["train", "val", "test"]
COLUMNS = ["id", "clean_title", "title", "2_way_label", "local_image_path", "subreddit"]


def load_script():
    # data/ is not a package, so import the script by path.
    spec = importlib.util.spec_from_file_location("make_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_demo():
    return load_script()


@pytest.fixture(scope="module")
def demo(make_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert make_demo.main(["--out", str(out), "--rows", "60", "--seed", "3"]) == 0
    return out


def read_rows(out):
    rows = {}
    for split in SPLITS:
        with open(out / f"{split}.tsv", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            assert reader.fieldnames == COLUMNS
            rows[split] = list(reader)
    return rows


def image_state(path):
    """'missing', 'broken' or 'ok' for one local_image_path."""
    if not path.exists():
        return "missing"
    try:
        with Image.open(path) as img:
            img.load()
    except OSError:  # UnidentifiedImageError and truncated files are both OSErrors
        return "broken"
    return "ok"


def test_tsvs_have_columns_labels_and_unique_ids(demo):
    rows = read_rows(demo)
    assert [len(rows[s]) for s in SPLITS] == [36, 12, 12]
    every = [r for s in SPLITS for r in rows[s]]
    assert {r["2_way_label"] for r in every} == {"0", "1"}
    ids = [r["id"] for r in every]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 6 and i.isalnum() and i == i.lower() for i in ids)
    assert all(r["title"] for r in every)
    assert any(r["clean_title"] == "" for r in every)  # the fall-back-to-title case
    assert all(3 <= len(r["clean_title"].split()) <= 30 for r in every if r["clean_title"])


def test_images_exist_except_the_deliberate_bad_rows(demo):
    rows = read_rows(demo)
    states = {s: [image_state(demo / r["local_image_path"]) for r in rows[s]] for s in SPLITS}
    every = [st for s in SPLITS for st in states[s]]
    assert every.count("missing") == 1
    assert every.count("broken") == 2
    assert any(st != "ok" for st in states["train"])
    broken = [demo / r["local_image_path"] for s in SPLITS for r in rows[s]
              if image_state(demo / r["local_image_path"]) == "broken"]
    heads = sorted(p.read_bytes()[:2] for p in broken)
    assert heads == [b"Th", b"\xff\xd8"]  # a text file and a cut-off JPEG
    assert any(p.stat().st_size == 200 for p in broken)


def test_image_formats_and_modes_are_mixed(demo):
    seen = set()
    for path in (demo / "images").iterdir():
        if image_state(path) == "ok":
            with Image.open(path) as img:
                seen.add((img.format, img.mode))
                if img.getexif().get(0x0112) == 6:
                    seen.add("exif6")
    assert {("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("JPEG", "L"),
            ("JPEG", "CMYK"), ("PNG", "I;16"), "exif6"} <= seen


def test_rerun_is_a_no_op_and_builds_are_deterministic(make_demo, demo, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*")}
    assert make_demo.main(["--out", str(demo), "--rows", "60", "--seed", "3"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before
    again = tmp_path / "again"
    make_demo.main(["--out", str(again), "--rows", "60", "--seed", "3"])
    files = sorted(p.relative_to(demo) for p in demo.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (demo / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_force_rebuild_with_fewer_rows_drops_stale_images(make_demo, tmp_path):
    out = tmp_path / "shrink"
    make_demo.main(["--out", str(out), "--rows", "40"])
    make_demo.main(["--out", str(out), "--rows", "20", "--force"])
    listed = {Path(r["local_image_path"]).name for rows in read_rows(out).values() for r in rows}
    listed |= {Path(r["local_image_path"]).name for r in read_new_posts(out)}
    assert {p.name for p in (out / "images").iterdir()} <= listed


def read_new_posts(out):
    with open(out / "new_posts.tsv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_new_posts_are_unlabelled_with_their_images(demo):
    rows = read_new_posts(demo)
    assert len(rows) == 12 and "2_way_label" not in rows[0]
    present = [(demo / r["local_image_path"]).is_file() for r in rows]
    assert present.count(False) == 1  # one missing image, to show a skipped row


def test_too_few_rows_is_a_usage_error(make_demo, tmp_path):
    with pytest.raises(SystemExit) as exc:
        make_demo.main(["--out", str(tmp_path / "x"), "--rows", "5"])
    assert exc.value.code == 2


def test_lora_checkpoint_loads_safely_and_is_not_a_no_op(demo):
    torch = pytest.importorskip("torch")
    ckpt = torch.load(demo / "clip_lora.pt", weights_only=True)
    assert ckpt["config"] == {"lora_r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    sd = ckpt["model_state_dict"]
    a_keys = [k for k in sd if ".lora_A." in k]
    b_keys = [k for k in sd if ".lora_B." in k]
    assert a_keys and len(a_keys) == len(b_keys)
    assert any("vision_model" in k for k in a_keys)
    assert all(sd[k].abs().sum() > 0 for k in b_keys)


def test_clip_loads_with_transformers(demo):
    transformers = pytest.importorskip("transformers")
    model = transformers.CLIPModel.from_pretrained(demo / "clip")
    assert model.config.vision_config.hidden_size == 64
    processor = transformers.CLIPImageProcessor.from_pretrained(demo / "clip")
    assert processor.crop_size["height"] == 224
