"""Small synthetic data and configs that train in about a second on one CPU thread."""

from dataclasses import replace

from pipeline.bench.synthetic import make_splits
from pipeline.model.config import HeadConfig
from pipeline.train.config import TrainConfig

TEXT_DIM, IMAGE_DIM = 16, 8
SMALL_FLAGS = ["--proj-dim", "16", "--hidden-dim", "16", "--batch-size", "256", "--lr", "3e-3", "--device", "cpu"]


def small_splits(signal, rows=3000, seed=0, **kwargs):
    return make_splits(rows, TEXT_DIM, IMAGE_DIM, signal=signal, seed=seed, **kwargs)


def small_head(**overrides):
    return replace(HeadConfig(text_dim=TEXT_DIM, image_dim=IMAGE_DIM, proj_dim=32, hidden_dim=32), **overrides)


def small_train(**overrides):
    return replace(TrainConfig(lr=3e-3, batch_size=256, max_epochs=40, patience=4, device="cpu"), **overrides)


def trained_run(root, bert, clip, *train_flags):
    """conftest's default data set under `root`, embedded with `bert` / `clip` and a small head trained on it:
    {"root", "data", "run"} (the run folder of `train-head ... *train_flags`)."""
    from conftest import embed_flags, make_dataset

    from pipeline.__main__ import main

    data = make_dataset(root / "data")
    assert main(embed_flags(data, bert, clip, root / "cache")) == 0
    assert main(["train-head", "--cache-dir", str(root / "cache"), "--out", str(root / "run"), *SMALL_FLAGS,
                 *train_flags]) == 0
    return {"root": root, "data": data, "run": root / "run"}
