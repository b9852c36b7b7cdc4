#!/usr/bin/env python
"""Build a small, deterministic, Fakeddit-shaped demo data set and a tiny random CLIP.

Fully offline, so the pipeline can be tried and tested without Fakeddit or a model hub:
    python data/make_demo.py --out data/demo [--rows 1000] [--seed 0] [--force]
Writes train/val/test TSVs, new_posts.tsv (unlabelled posts for `predict`), images/ (mixed
sizes, modes, formats, three broken rows), clip/ (random CLIPModel + preprocessor config),
clip_lora.pt (LoRA checkpoint as the Colab notebook saves it), README.md and, last, a
.complete stamp. Same arguments, same bytes.
"""
import argparse
import colorsys
import csv
import io
import json
import os
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Bump when the generated output changes, so stamps from older builds stop matching.
VERSION = 2
MIN_ROWS = 20  # enough for every special image kind and three non-empty splits
REAL_SHARE, TEXT_NOISE, IMAGE_NOISE = 0.55, 0.15, 0.20
COLUMNS = ["id", "clean_title", "title", "2_way_label", "local_image_path", "subreddit"]
NEW_POSTS = 12  # rows of new_posts.tsv: unlabelled, one of them with a missing image

# Phrases carry the label signal.
REAL_PHRASES = ["photo of", "city council", "scientists", "local", "study finds",
                "officials say", "museum", "university", "weather service", "report"]
FAKE_PHRASES = ["shocking", "you won't believe", "photoshopped", "aliens", "miracle",
                "this one trick", "secret", "exposed", "doctors hate", "bizarre"]
# Neutral fragments and words only pad titles to their length; single words fill the last gaps.
FRAGMENTS = ["near the river", "after the storm", "on main street", "last week", "this morning",
             "in my town", "at the old bridge", "for the first time", "outside the school",
             "next to the market", "during the parade", "with a dog"]
WORDS = "man woman dog cat car house park tree sign train bus sky garden road beach".split()
SUBREDDITS = {1: ["usnews", "upliftingnews", "mildlyinteresting", "pic", "neutralnews"],
              0: ["photoshopbattles", "theonion", "fakealbumcovers", "satire", "savedyouaclick"]}

# Share of rows per special file kind; each kind gets at least one row so small
# builds still exercise every loader path. Everything else is an RGB JPEG.
FORMAT_SHARES = {"png": 0.04, "rgba": 0.03, "gif": 0.03, "gray": 0.03, "cmyk": 0.03,
                 "i16": 0.02, "exif6": 0.0}
SIZE_SHARES = {(64, 48): 0.05, (800, 600): 0.03, (1600, 1200): 0.01}
LORA_CONFIG = {"lora_r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True,
                   help="output folder; the script owns it and rewrites its files")
    p.add_argument("--rows", type=int, default=1000,
                   help=f"number of rows over all splits (at least {MIN_ROWS}; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if --out holds a finished build with the same arguments")
    args = p.parse_args(argv)
    if args.rows < MIN_ROWS:
        p.error(f"--rows must be at least {MIN_ROWS}, got {args.rows}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a folder; pick another path")
    return args


def make_title(rng, style):
    """Raw title of 3-30 words with at least one phrase of the given style."""
    phrases = REAL_PHRASES if style else FAKE_PHRASES
    target = rng.randint(3, 30)
    units = [rng.choice(phrases)]  # units keep phrases whole when shuffling words in
    count = len(units[0].split())
    while count < target:
        roll = rng.random()
        unit = rng.choice(phrases if roll < 0.1 else FRAGMENTS if roll < 0.6 else WORDS)
        if count + len(unit.split()) > target:
            unit = rng.choice(WORDS)
        units.insert(rng.randint(0, len(units)), unit)
        count += len(unit.split())
    title = " ".join(units)
    # Raw titles vary in casing and punctuation the way Reddit titles do.
    cased = title.title().replace("'T", "'t") if rng.random() < 0.3 else None
    title = cased or title[0].upper() + title[1:]
    return title + rng.choice(["", "", ".", "!", "?", "..."])


def pick(rng, pool, share, n):
    """Take max(1, share * n) rows out of pool, deterministically."""
    chosen = rng.sample(sorted(pool), max(1, round(share * n)))
    pool.difference_update(chosen)
    return chosen


def noisy(rng, label, noise):
    """The label, flipped with probability `noise`."""
    return label if rng.random() >= noise else 1 - label


def make_row(rng, row_id):
    label = int(rng.random() < REAL_SHARE)
    # Text and image are flipped independently: each alone is imperfect, so fusion helps.
    title = make_title(rng, noisy(rng, label, TEXT_NOISE))
    clean = re.sub(r"[^a-z0-9 ]", "", title.lower())  # as Fakeddit's clean_title: no punctuation
    return {"id": row_id, "clean_title": clean, "title": title, "2_way_label": label,
            "local_image_path": f"images/{row_id}.jpg", "subreddit": rng.choice(SUBREDDITS[label]),
            "style": noisy(rng, label, IMAGE_NOISE), "kind": "jpeg",
            "size": (320, rng.choice([180, 240, 320, 427]))}


def mark_special_rows(rng, rows, split_starts):
    """Assign the broken rows, odd file kinds, odd sizes and empty clean titles."""
    # One broken row at the start of each split, so the skip path shows up in all of them.
    for kind, i in zip(["missing", "truncated", "text"], split_starts):
        rows[i]["kind"] = kind
    n = len(rows)
    pool = set(range(n)) - set(split_starts)
    for kind, share in FORMAT_SHARES.items():
        for i in pick(rng, pool, share, n):
            rows[i]["kind"] = kind
    pool = set(range(n))
    for size, share in SIZE_SHARES.items():
        for i in pick(rng, pool, share, n):
            rows[i]["size"] = size
    for i in pick(rng, set(range(n)), 0.01, n):
        rows[i]["clean_title"] = ""  # the pipeline must fall back to the raw title


def plan_rows(n, seed):
    rng = random.Random(seed)
    ids = {}  # a dict, not a set: a set's order would change with PYTHONHASHSEED
    while len(ids) < n:
        ids["".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=6))] = None
    rows = [make_row(rng, row_id) for row_id in ids]
    val, test = round(0.6 * n), round(0.8 * n)
    mark_special_rows(rng, rows, [0, val, test])
    return {"train": rows[:val], "val": rows[val:test], "test": rows[test:]}


def plan_new_posts(seed, n=NEW_POSTS):
    """Unlabelled posts as a moderator would get them (their own RNG: the splits do not change)."""
    rng = random.Random(f"{seed}-new-posts")
    rows = [make_row(rng, f"new{i:03d}") for i in range(n)]
    rows[n // 2]["kind"] = "missing"  # shows a skipped row in predict's output
    return rows


def write_new_posts(out, rows):
    columns = [c for c in COLUMNS if c != "2_way_label"]
    with open(out / "new_posts.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def color(rng, style):
    # Real images lean warm (reds/oranges/yellows), fake ones cool (greens/blues).
    hue = rng.uniform(-0.06, 0.14) % 1.0 if style else rng.uniform(0.45, 0.72)
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.0))
    return tuple(round(c * 255) for c in rgb)


def draw(rng, style, size):
    """Real: warm gradient with a few large blobs. Fake: cool diagonal stripes."""
    # Drawn at a quarter of the size and scaled up: fast, and the soft edges keep
    # files small; the colour and pattern signal survives the scaling.
    w, h = max(8, size[0] // 4), max(8, size[1] // 4)
    ax, ay = rng.choice([(1, 0), (0, 1), (1, 1), (1, -1)])  # gradient direction
    ramp = np.add.outer(ay * np.arange(h), ax * np.arange(w), dtype=np.float32)
    ramp -= ramp.min()
    mask = Image.fromarray((ramp * (255 / max(1.0, ramp.max()))).astype(np.uint8), "L")
    img = Image.composite(Image.new("RGB", (w, h), color(rng, style)),
                          Image.new("RGB", (w, h), color(rng, style)), mask)
    pen = ImageDraw.Draw(img)
    if style:
        for _ in range(rng.randint(1, 3)):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.5) * min(w, h)
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color(rng, style))
    else:
        period, slope = max(2.0, rng.uniform(0.12, 0.3) * w), rng.uniform(-1, 1)
        fill = color(rng, style)
        x = -slope * h - period
        while x < w + abs(slope) * h:  # parallel bands across the whole picture
            pen.polygon([(x, 0), (x + period / 2, 0), (x + period / 2 + slope * h, h),
                         (x + slope * h, h)], fill=fill)
            x += period
    return img.resize(size, Image.Resampling.BILINEAR)


def jpeg_bytes(img, **extra):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70, **extra)
    return buf.getvalue()


def exif_rotated(img):
    # Store the picture turned 90 degrees counter-clockwise; orientation 6 tells
    # viewers to turn it back, so only EXIF-aware loaders see it upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(img.transpose(Image.Transpose.ROTATE_90), exif=exif)


# Every file is named .jpg as in Fakeddit, whatever its real format.
SAVERS = {
    "jpeg": lambda img, p: p.write_bytes(jpeg_bytes(img)),
    "png": lambda img, p: img.save(p, "PNG"),
    "rgba": lambda img, p: Image.merge(
        "RGBA", [*img.split(), Image.linear_gradient("L").resize(img.size)]).save(p, "PNG"),
    "gif": lambda img, p: img.quantize(32, Image.Quantize.FASTOCTREE).save(
        p, "GIF", transparency=0),
    "gray": lambda img, p: p.write_bytes(jpeg_bytes(img.convert("L"))),
    "cmyk": lambda img, p: p.write_bytes(jpeg_bytes(img.convert("CMYK"))),
    # 16-bit grey: 0..255 stretched to 0..65535, which Pillow opens as mode I;16.
    "i16": lambda img, p: Image.fromarray(
        np.asarray(img.convert("L"), np.uint16) * 257).save(p, "PNG"),
    "exif6": lambda img, p: p.write_bytes(exif_rotated(img)),
    "truncated": lambda img, p: p.write_bytes(jpeg_bytes(img)[:200]),
    "text": lambda img, p: p.write_text("This is a text file, not an image.\n"),
    "missing": lambda img, p: None,
}


def write_images(out, splits, seed):
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for row in (r for rows in splits.values() for r in rows):
        # Per-image RNG keyed by id: an image does not depend on the ones drawn before it.
        rng = random.Random(f"{seed}-{row['id']}")
        path = out / row["local_image_path"]
        SAVERS[row["kind"]](draw(rng, row["style"], row["size"]), path)
        if row["kind"] != "missing":
            wanted.add(path.name)
    for stale in folder.iterdir():  # left over from a build with other arguments
        if stale.is_file() and stale.name not in wanted:
            stale.unlink()


def write_tsvs(out, splits):
    for name, rows in splits.items():
        with open(out / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS, delimiter="\t", lineterminator="\n",
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def build_clip(out, seed):
    """Save a tiny randomly initialised CLIPModel and the standard CLIP preprocessor."""
    import torch
    import transformers
    text = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, projection_dim=64,
                pad_token_id=0, bos_token_id=998, eos_token_id=999)  # ids inside the vocab
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, image_size=224, patch_size=32, projection_dim=64)
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    model = transformers.CLIPModel(config)
    model.save_pretrained(out / "clip")
    # The Pil variant writes the same JSON as CLIPImageProcessor without needing torchvision;
    # `or` rather than getattr's default, which would touch (and warn about) the other class.
    processor = (getattr(transformers, "CLIPImageProcessorPil", None)
                 or transformers.CLIPImageProcessor)
    processor().save_pretrained(out / "clip")
    return model


def build_lora(model, path, seed):
    """Save a LoRA checkpoint shaped like the Colab notebook's torch.save output.

    Keys are `peft_model.state_dict()` kept to the LoRA weights, so they carry the adapter
    name (not the `get_peft_model_state_dict` form without `.default.`), e.g.
    base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight.
    The adapter wraps the whole CLIPModel, so text-tower keys are there as well.
    """
    import peft
    import torch
    with warnings.catch_warnings():  # PEFT trips a transformers deprecation warning
        warnings.simplefilter("ignore", FutureWarning)
        lora = peft.get_peft_model(model, peft.LoraConfig(
            r=LORA_CONFIG["lora_r"], lora_alpha=LORA_CONFIG["lora_alpha"],
            target_modules=LORA_CONFIG["target_modules"]))
    # PEFT starts lora_B at zero, a no-op adapter. Random A (about PEFT's own scale)
    # and small random B move the image embeddings by roughly 1%: visible, not wild.
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=gen) * (0.02 if ".lora_B." in k else 0.1)
          for k, v in sorted(lora.state_dict().items()) if ".lora_" in k}
    first = next(iter(sd.values()))
    optimizer = {"state": {0: {"step": torch.tensor(30.0), "exp_avg": torch.zeros_like(first),
                               "exp_avg_sq": torch.zeros_like(first)}},
                 "param_groups": [{"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8,
                                   "weight_decay": 0.01, "params": [0]}]}
    torch.save({"model_state_dict": sd, "config": dict(LORA_CONFIG), "epoch": 3,
                "optimizer_state_dict": optimizer}, path)


def write_readme(out, args):
    (out / "README.md").write_text(
        f"# Synthetic demo data\n\nMade by `data/make_demo.py --rows {args.rows} --seed "
        f"{args.seed}`; nothing here is real. Titles come from templates and word lists, images "
        f"are drawn shapes, and `clip/` is a tiny randomly initialised CLIP, not a trained image "
        f"encoder (its embeddings reflect raw colour and layout only); `clip_lora.pt` is a "
        f"random LoRA for it. `2_way_label` is 1 for real, 0 for fake (about {REAL_SHARE:.0%} "
        f"real). Titles carry the label in word choice (\"scientists\", \"city council\" vs "
        f"\"shocking\", \"photoshopped\") with {TEXT_NOISE:.0%} of rows flipped; images carry it "
        f"in colour and pattern (warm gradients and blobs vs cool stripes) with {IMAGE_NOISE:.0%} "
        f"flipped independently, so text and image together beat either alone. Three rows are "
        f"broken on purpose: a missing file, a truncated JPEG and a text file named .jpg.\n",
        encoding="utf-8")


def main(argv=None):
    args = parse_args(argv)
    out = args.out
    stamp = out / ".complete"
    want = json.dumps({"rows": args.rows, "seed": args.seed, "version": VERSION}, sort_keys=True)
    if not args.force and stamp.is_file() and stamp.read_text() == want:
        print(f"{out} is up to date (use --force to rebuild)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # a half-finished rebuild must not look complete
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never touch the network
    splits = plan_rows(args.rows, args.seed)
    new_posts = plan_new_posts(args.seed)
    write_images(out, {**splits, "new_posts": new_posts}, args.seed)
    write_tsvs(out, splits)
    write_new_posts(out, new_posts)
    build_lora(build_clip(out, args.seed), out / "clip_lora.pt", args.seed)
    write_readme(out, args)
    stamp.write_text(want)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {args.rows} rows to {out} ({sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
