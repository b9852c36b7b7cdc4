"""Benchmark: seconds to train a fusion head on 100,000 cached rows of 768 + 512 features to early stopping.

`python -m pipeline.head_bench` prints the figure; a `make bench` target can
call `seconds_100k()`. The cache is synthetic but learnable (see
pipeline.synthetic), written with `write_cache` and read back with the same
loader as `train-head`; only training (all epochs with their validation passes,
then the threshold tuning and test scoring) is timed, not writing or reading.
"""

import sys
import tempfile
import time

import torch

from pipeline.bench.synthetic import make_splits, write_cache
from pipeline.model.config import HeadConfig
from pipeline.train.config import TrainConfig
from pipeline.train.fit import load_cached_splits, train_head


def seconds_100k(rows=100_000, text_dim=768, image_dim=512, head_config=None, train_config=None, log=None):
    """Wall-clock seconds of `train_head` with the default configs (unless given) on a `rows`-row cache."""
    head_config = head_config or HeadConfig(text_dim=text_dim, image_dim=image_dim)
    train_config = train_config or TrainConfig(device="cpu")
    with tempfile.TemporaryDirectory(prefix="head-bench-") as folder:
        write_cache(folder, make_splits(rows, text_dim, image_dim, signal="both"))
        _, splits = load_cached_splits(folder)
    # torch imports its compiler stack on the first optimizer: a one-off per process, not training time.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    threads = torch.get_num_threads()
    started = time.perf_counter()
    run = train_head(splits, head_config, train_config)
    seconds = time.perf_counter() - started
    used = torch.get_num_threads()
    torch.set_num_threads(threads)  # train_head sets the process's threads; the bench's later figures keep theirs
    if log:
        test = run.metrics["test"]
        log(f"{rows} rows ({len(splits['train'])} train), {text_dim} + {image_dim} features, "
            f"{used} torch threads: {seconds:.1f} s to early stopping, "
            f"{len(run.fit.history)} epochs (best {run.fit.best_epoch}), "
            f"test f1_macro {test['f1_macro']:.4f}, roc_auc {test['roc_auc']:.4f}")
    return seconds


if __name__ == "__main__":
    seconds_100k(log=print)
    sys.exit(0)
