"""Shared fixtures: tiny BERT and CLIP folders built from configs, tiny TSV splits with Pillow images.

The models are saved with `save_pretrained` and loaded back through the same
`from_pretrained` code users hit; nothing is downloaded.
"""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPConfig, CLIPModel

from pipeline.bench.synthetic import write_cache
from tests.helpers import small_splits

# The test models are tiny: a second thread only adds synchronisation, and on a
# busy CI machine OpenMP's waits between threads cost more than the maths.
torch.set_num_threads(1)

WORDS = "the a photo of city council scientists shocking news you won't believe cat dog man woman car".split()


def build_tiny_bert(folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores `vocab_file` here (every word became [UNK]); `vocab` takes the file.
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # = the default --max-length
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_clip_config(image_size=32):
    return CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=16),
        projection_dim=24,
    )


def build_tiny_clip(folder, image_size=32):
    folder = Path(folder)
    torch.manual_seed(1)
    CLIPModel(tiny_clip_config(image_size)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        '{"crop_size": {"height": %d, "width": %d}, "image_mean": [0.48145466, 0.4578275, 0.40821073], '
        '"image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "CLIPImageProcessor", '
        '"size": {"shortest_edge": %d}}' % (image_size, image_size, image_size)
    )
    return folder


def write_split(folder, split, rows):
    """rows: list of dicts with id, clean_title, 2_way_label, local_image_path (any subset)."""
    columns = list(rows[0])
    lines = ["\t".join(columns)] + ["\t".join(str(row[c]) for c in columns) for row in rows]
    path = Path(folder) / f"{split}.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_dataset(folder, counts=(("train", 24), ("val", 8), ("test", 8)), seed=0):
    """Small Fakeddit-shaped splits with varied Pillow images; returns the folder."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, count in counts:
        rows = []
        for i in range(count):
            key = f"{split[:2]}{i:04d}"
            label = i % 2
            size = rng.choice([(40, 30), (64, 64), (30, 50), (120, 90)])
            color = (200, 60, 40) if label else (40, 80, 200)
            image = Image.new("RGB", size, color)
            image.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), (rng.randrange(256),) * 3)
            image.save(folder / "images" / f"{key}.jpg", quality=90)
            title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
            rows.append({"id": key, "clean_title": title, "2_way_label": label,
                         "local_image_path": f"images/{key}.jpg"})
        write_split(folder, split, rows)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


def embed_flags(data_dir, text_model, clip_model, cache_dir):
    """Flags for a small stage-one run; tests add or override."""
    return ["embed", "--data-dir", str(data_dir), "--text-model", str(text_model), "--clip-model", str(clip_model),
            "--cache-dir", str(cache_dir), "--batch-size", "4", "--num-workers", "0",
            "--part-rows", "8", "--device", "cpu"]


@pytest.fixture
def embed_args(tiny_bert, tiny_clip, dataset, tmp_path):
    return embed_flags(dataset, tiny_bert, tiny_clip, tmp_path / "cache")


def cache_dir_of(args):
    return args[args.index("--cache-dir") + 1]


def with_flag(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def load_all(cache_dir, splits=("train", "val", "test")):
    from pipeline.embed.cache import load_split  # here, not at the top: conftest's imports are shared with stage two's

    return {s: load_split(cache_dir, s) for s in splits}


def assert_same_cache(a, b, exact=False):
    """`exact`: value for value, as the same computation on the same CPU must give."""
    same = np.array_equal if exact else (lambda x, y: np.allclose(x, y, atol=1e-6))
    assert a.keys() == b.keys()
    for split in a:
        assert list(a[split].ids) == list(b[split].ids)
        assert np.array_equal(a[split].labels, b[split].labels)
        assert same(a[split].text_emb, b[split].text_emb)
        assert same(a[split].image_emb, b[split].image_emb)


def rgb_noise(size, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def xor_cache(tmp_path_factory):
    """A complete cache on disk whose label needs both modalities (see pipeline.synthetic)."""
    folder = tmp_path_factory.mktemp("xor-cache")
    write_cache(folder, small_splits("xor", rows=2000), part_rows=700)
    return folder
