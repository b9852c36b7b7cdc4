"""Benchmark inputs: Fakeddit-like titles and images, and random models of the real shapes.

Titles follow Fakeddit's length distribution (clean_title: median about 8
words, a long tail to 40+); images are 320-px Reddit previews or 2-4 megapixel
photos (JPEG, about one in six PNG), all named `.jpg` as Fakeddit saves them.
"""

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPConfig, CLIPModel

VOCAB_WORDS = ("the a of to in and is for on with this that after new man woman police found world year "
               "photo city old dog cat car house water first who trump people video says just").split()


def title_lengths(rows, seed=0):
    """Word counts: log-normal fitted to Fakeddit's clean_title (median 8, 95th percentile about 25)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(mean=np.log(8), sigma=0.6, size=rows)), 1, 60).astype(int)


def make_images(folder, count, kind, seed=0):
    """`count` images of `kind` 'preview' (320 px wide) or 'photo' (2-4 MP); returns relative paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        if kind == "preview":
            size = (320, rng.choice([180, 240, 320, 427]))
        else:
            megapixels = rng.uniform(2.0, 4.0) * 1e6
            width = int((megapixels * 4 / 3) ** 0.5)
            size = (width, int(width * 3 / 4))
        image = _textured(size, rng)
        name = f"{kind}-{i:05d}.jpg"
        if i % 6 == 5:
            image.save(folder / name, format="PNG", compress_level=1)  # a PNG named .jpg
        else:
            image.save(folder / name, format="JPEG", quality=88)
        paths.append(name)
    return paths


def _textured(size, rng):
    """Smooth gradients plus noise: compresses like a photo, not like a flat colour."""
    width, height = size
    small = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (height // 32 + 2, width // 32 + 2, 3))
    image = Image.fromarray(small.astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(-12, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def write_tsvs(folder, splits, image_paths, seed=0):
    """One TSV per split (id, clean_title, 2_way_label, local_image_path), cycling over the images."""
    folder = Path(folder)
    rng = random.Random(seed)
    for index, (split, rows) in enumerate(splits.items()):
        lengths = title_lengths(rows, seed=seed + index)
        lines = ["id\tclean_title\t2_way_label\tlocal_image_path"]
        for i in range(rows):
            title = " ".join(rng.choice(VOCAB_WORDS) for _ in range(lengths[i]))
            lines.append(f"{split}{i}\t{title}\t{rng.randint(0, 1)}\timages/{image_paths[i % len(image_paths)]}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def build_base_models(folder):
    """Random BERT-base (768-d, 12 layers) and CLIP ViT-B/32 (512-d projection) folders: real shapes."""
    folder = Path(folder)
    torch.manual_seed(0)
    text = folder / "bert-base"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(VOCAB_WORDS))
    text.mkdir(parents=True, exist_ok=True)
    (text / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertModel(BertConfig(vocab_size=30522)).save_pretrained(text)  # bert-base-uncased's shapes
    BertTokenizerFast(vocab=str(text / "vocab.txt")).save_pretrained(text)
    clip = folder / "clip-vit-b32"
    config = CLIPConfig(
        text_config={"num_hidden_layers": 1},  # unused by this pipeline; kept small
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
        projection_dim=512,
    )
    CLIPModel(config).save_pretrained(clip)
    return text, clip
