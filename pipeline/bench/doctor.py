"""Figure doctor.seconds_100k_20k: `doctor` on a synthetic cache of 100,000 train and 20,000 val+test rows.

The vectors are Gaussian (384-d text, 512-d image, MiniLM's and CLIP ViT-B/32's
widths) with 100 planted near copies of train rows in test; the figure is the
whole `doctor` run on the written cache (loading and checking the parts, exact
image hashes, both near-duplicate searches, the report), not the time to write
the cache. Run alone: `python -m pipeline.bench.doctor [train_rows eval_rows]`.
"""

import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.bench.synthetic import write_cache
from pipeline.doctor.cli import DoctorConfig
from pipeline.doctor.run import run_doctor
from pipeline.embed.cache import CachedSplit

PLANTED = 100


def synthetic_cache(folder, train_rows, eval_rows, dims=(384, 512), seed=0):
    rng = np.random.default_rng(seed)
    sizes = {"train": train_rows, "val": eval_rows // 2, "test": eval_rows - eval_rows // 2}
    splits = {}
    for name, rows in sizes.items():
        text = rng.standard_normal((rows, dims[0]), dtype=np.float32)
        image = rng.standard_normal((rows, dims[1]), dtype=np.float32)
        digests = np.array([hashlib.sha256(f"{name}-{i}".encode()).hexdigest() for i in range(rows)], dtype=object)
        splits[name] = CachedSplit(np.array([f"{name}-{i}" for i in range(rows)], dtype=object),
                                   rng.integers(0, 2, rows), text, image, digests)
    planted = min(PLANTED, sizes["test"], train_rows)
    for column in ("text_emb", "image_emb"):
        source = getattr(splits["train"], column)[:planted]
        getattr(splits["test"], column)[:planted] = source + 0.05 * rng.standard_normal(source.shape, dtype=np.float32)
    write_cache(folder, splits, part_rows=20_000, dtype="float16")
    return planted


def seconds_100k_20k(train_rows=100_000, eval_rows=20_000, device="cpu", log=None):
    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as work:
        planted = synthetic_cache(Path(work) / "cache", train_rows, eval_rows)
        started = time.perf_counter()
        report = run_doctor(DoctorConfig(cache_dir=str(Path(work) / "cache"), out=str(Path(work) / "doctor"),
                                         device=device), log=log or (lambda *_: None))
        seconds = time.perf_counter() - started
    found = report["cross_split_duplicates"]["test"]["rows_with_cross_split_duplicate"]
    return {"seconds_100k_20k": round(seconds, 2), "train_rows": train_rows, "eval_rows": eval_rows,
            "planted": planted, "found": found}


if __name__ == "__main__":
    sizes = [int(value) for value in sys.argv[1:3]]
    print(seconds_100k_20k(*sizes))
