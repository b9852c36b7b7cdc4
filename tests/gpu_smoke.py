"""GPU smoke check (run by `make bench-gpu`; CI has no GPU): stage two and end-to-end fine-tuning
on CUDA with bf16, on tiny models and a synthetic 100,000-row cache. Exits non-zero on failure."""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from conftest import build_tiny_bert, build_tiny_clip, make_dataset  # noqa: E402

from pipeline.__main__ import main  # noqa: E402
from pipeline.bench.synthetic import make_splits, write_cache  # noqa: E402


def run(args):
    started = time.perf_counter()
    code = main(args)
    print(f"gpu-smoke: {args[0]} exit {code} in {time.perf_counter() - started:.1f} s", flush=True)
    if code != 0:
        sys.exit(code)


DEVICE = os.environ.get("SMOKE_DEVICE", "cuda")  # SMOKE_DEVICE=cpu: a dry run of this script

if __name__ == "__main__":
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu-smoke: no CUDA device")
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    write_cache(work / "cache100k", make_splits(100_000, 768, 512, signal="both"))
    run(["train-head", "--cache-dir", str(work / "cache100k"), "--out", str(work / "head"), "--device", DEVICE,
         "--overwrite"])  # the smoke check's own folders: a rerun replaces them
    print("gpu-smoke: head test metrics", json.loads((work / "head" / "metrics.json").read_text())["test"]["f1_macro"])
    bert, clip, data = build_tiny_bert(work / "bert"), build_tiny_clip(work / "clip"), make_dataset(work / "data")
    run(["embed", "--data-dir", str(data), "--text-model", str(bert), "--clip-model", str(clip),
         "--cache-dir", str(work / "cache"), "--device", DEVICE, "--on-stale", "rebuild"])
    run(["finetune-e2e", "--data-dir", str(data), "--text-model", str(bert), "--clip-model", str(clip),
         "--out", str(work / "e2e"), "--device", DEVICE, "--max-epochs", "2", "--num-workers", "2",
         "--overwrite"])
    print("gpu-smoke: e2e config device", json.loads((work / "e2e" / "config.json").read_text())["device"])
