"""The benchmark suite behind `make bench`: every figure a ratio measured in one run, or an
absolute figure stated with its machine.

Keys of results.json (see the README's benchmark table):
  embed.<config>.rows_per_s          stage one end to end (read, decode, preprocess, encode, write)
  embed.<config>.efficiency          rows_per_s / the encoders' forward-only rows/s on the same batch shapes
                                     (medians of 3 alternating rounds; efficiency_rounds: each round's ratio)
  embed.<config>.speedup_vs_naive    against the notebook's loop (per-row CLIPProcessor, max-length padding)
  embed.main_loop_ms_per_batch       the main loop's own time per batch of 256, encoders stood in (bench/main_loop.py)
  decode.speedup, decode.cosine_*    our loader vs plain Image.open + convert + Pillow resize on 2-4 MP photos
  decode.vs_reference.preview/photo  our worker's time per image / the frozen pre-issue-24 loader's (bench/decode.py)
  decode.max_level_diff              largest pixel difference from that reference over the same files
  predict.<config>.rows_per_s       `predict` end to end (models loaded inside) on embed.<config>'s rows
  predict.<config>.vs_embed         predict.rows_per_s / embed.rows_per_s (it is stage one plus a tiny head)
  head.seconds_100k, head.speedup_vs_e2e
  head.busy_vs_quiet                 head.seconds_100k beside a CPU-burning process / without (bench/head_busy.py)
  embed.rss_growth, cache.load_overhead
  cache.bytes_per_row_float32/16, cache.float16_f1_change
  serve.rows_per_s, serve.vs_predict, serve.p50_ms, serve.p99_ms  (bench/serve.py)
  doctor.seconds_100k_20k            `doctor` on 100,000 train x 20,000 val+test synthetic rows (bench/doctor.py)
"""

import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import CLIPImageProcessor

from pipeline.bench.data import make_images, write_tsvs
from pipeline.bench.reference_loader import reference_resize_and_crop
from pipeline.data.images import ImageSettings, load_image
from pipeline.data.splits import read_split
from pipeline.device import autocast, decode_workers, resolve_device
from pipeline.embed import cache
from pipeline.embed.config import EmbedConfig
from pipeline.embed.loader import plan_batches
from pipeline.embed.run import run_embed
from pipeline.model.batch import pixel_values, tokenize_titles
from pipeline.model.classifier import build_encoders
from pipeline.model.image_encoder import load_image_encoder
from pipeline.model.text_encoder import load_tokenizer


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def prepare_data(folder, rows, kind, seed=0):
    """A one-split data folder of `rows` posts over min(rows, 200) distinct images."""
    folder = Path(folder)
    paths = make_images(folder / "images", min(rows, 200), kind, seed)
    write_tsvs(folder, {"train": rows}, paths, seed)
    return folder


def time_embed(config):
    """Seconds for one full stage-one run (models loaded inside, as a user runs it), and its cache."""
    started = time.perf_counter()
    run_embed(config, log=lambda *_: None)
    return time.perf_counter() - started


def loaded_for_loop(config):
    """(model, tokenizer, rows, settings) for `time_embed_loop`: the encoders loaded and warmed up once."""
    device = resolve_device(config.device)
    model, _ = build_encoders(config.text_model, config.clip_model, pooling=config.pooling)
    model.to(device).eval()
    tokenizer = load_tokenizer(config.text_model)
    rows = read_split(config.data_dir, "train")
    settings = ImageSettings.from_model_folder(config.clip_model)
    warm_up(model, tokenizer, rows, config, settings, device)  # as forward_only_rows_per_s does
    return model, tokenizer, rows, settings


def time_embed_loop(config, loaded):
    """Stage one with the models already loaded (`loaded_for_loop`): the rows/s that the efficiency ratio
    compares, into a fresh `config.cache_dir`."""
    from pipeline.embed.run import embed_split
    from pipeline.embed.writer import PartJob

    model, tokenizer, rows, settings = loaded
    device = resolve_device(config.device)
    Path(config.cache_dir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    embedded = embed_split(model, tokenizer, rows, PartJob.from_config(config), settings, device)
    _sync(device)
    return embedded / (time.perf_counter() - started)


def warm_up(model, tokenizer, rows, config, settings, device):
    """One forward pass first, so one-off kernel selection is timed in neither measurement."""
    batch = tokenize_titles(tokenizer, rows.texts[:config.batch_size], config.max_length)
    batch["pixel_values"] = torch.randn(len(batch["input_ids"]), 3, settings.size, settings.size)
    with torch.inference_mode(), autocast(device):
        model.encode({k: v.to(device) for k, v in batch.items()})
    _sync(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_only_rows_per_s(model, tokenizer, rows, config, settings):
    """The encoders alone on ready-made tensors with the pipeline's batch shapes."""
    parts = [range(start, min(start + config.part_rows, len(rows))) for start in range(0, len(rows), config.part_rows)]
    usable = [[r for r in part if rows.texts[r]] for part in parts]
    batches = plan_batches(usable, rows.texts, config.batch_size)  # the pipeline's batches, per part
    device = next(model.parameters()).device
    inputs = []
    for batch in batches:
        text = tokenize_titles(tokenizer, [rows.texts[r] for r in batch], config.max_length)
        text["pixel_values"] = torch.randn(len(batch), 3, settings.size, settings.size)
        inputs.append({k: v.to(device) for k, v in text.items()})
    warm_up(model, tokenizer, rows, config, settings, device)
    with torch.inference_mode(), autocast(device):
        started = time.perf_counter()
        for batch in inputs:
            model.encode(batch)
        _sync(device)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def naive_rows_per_s(model, config, rows):
    """The notebook's way: one row at a time through CLIPProcessor and a max-length tokenizer,
    torch.no_grad (not inference_mode), a default DataLoader."""
    processor = CLIPImageProcessor.from_pretrained(config.clip_model) if (
        Path(config.clip_model) / "preprocessor_config.json").is_file() else CLIPImageProcessor()
    tokenizer = load_tokenizer(config.text_model)
    root = Path(config.data_dir)

    class NaiveRows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            image = Image.open(root / rows.image_paths[i]).convert("RGB")
            pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
            text = tokenizer(rows.texts[i], padding="max_length", max_length=config.max_length,
                             truncation=True, return_tensors="pt")
            return {"pixel_values": pixels, **{k: v[0] for k, v in text.items()}}

    device = next(model.parameters()).device
    started = time.perf_counter()
    with torch.no_grad(), autocast(device):
        for batch in DataLoader(NaiveRows(), batch_size=config.batch_size):
            model.encode({k: v.to(device) for k, v in batch.items()})
        _sync(device)
    return len(rows) / (time.perf_counter() - started)


def bench_embed(work, name, text_model, clip_model, rows, kind, batch_size, num_workers, device="cpu", rounds=3):
    """Stage one end to end, then `rounds` alternating runs of its loop (models loaded) and of the encoders
    alone: `efficiency` is the median loop rate over the median forward-only rate (each round's ratio is kept
    too). On a shared machine one run of each can land in different weather: the single rounds' ratios of one
    build spread 0.59-0.74 in one process (docs/benchmarks.md, "Rounds")."""
    data = prepare_data(work / f"data-{name}", rows, kind)
    config = EmbedConfig(data_dir=str(data), text_model=str(text_model), clip_model=str(clip_model),
                         cache_dir=str(work / f"cache-{name}"), splits=("train",), batch_size=batch_size,
                         num_workers=num_workers, device=device, part_rows=max(rows // 4, 64))
    seconds = time_embed(config)
    loaded = loaded_for_loop(config)
    model, tokenizer, split_rows, settings = loaded
    loop_rates, forward_rates = [], []
    for round_ in range(rounds):  # in turn, so a neighbour's burst on a shared machine falls on both sides
        loop_rates.append(time_embed_loop(replace(config, cache_dir=str(work / f"loop-{name}-{round_}")), loaded))
        forward_rates.append(forward_only_rows_per_s(model, tokenizer, split_rows, config, settings))
    loop_rate, forward_rate = statistics.median(loop_rates), statistics.median(forward_rates)
    naive_rate = naive_rows_per_s(model, config, split_rows)
    return {
        "rows": rows, "images": kind, "batch_size": batch_size, "num_workers": num_workers, "device": device,
        "rows_per_s": round(rows / seconds, 1),
        "rows_per_s_models_loaded": round(loop_rate, 1),
        "forward_only_rows_per_s": round(forward_rate, 1),
        "efficiency": round(loop_rate / forward_rate, 3),
        "efficiency_rounds": [round(a / b, 3) for a, b in zip(loop_rates, forward_rates)],
        "naive_rows_per_s": round(naive_rate, 1),
        "speedup_vs_naive": round(loop_rate / naive_rate, 2),
    }


def bench_predict(work, name, batch_size, num_workers, device, embed_rows_per_s):
    """`predict` on the rows `bench_embed` embedded, with the same models and settings, end to end as a user
    runs it (encoder check, model loading, embedding, head, output). The head is untrained: its weights
    cost the same whatever they are."""
    from pipeline.data.splits import find_split_file
    from pipeline.model.config import HeadConfig
    from pipeline.model.head import FusionHead, save_head
    from pipeline.predict.classifier import Classifier
    from pipeline.predict.run import predict_file
    from pipeline.runs.encoders import from_manifest, write_encoders
    from pipeline.runs.record import write_run_record

    manifest = cache.read_manifest(work / f"cache-{name}")
    embed = manifest["config"]["embed"]
    run = work / f"predict-run-{name}"
    save_head(run / "head", FusionHead(HeadConfig(text_dim=manifest["dims"]["text"],
                                                  image_dim=manifest["dims"]["image"])))
    encoders = from_manifest(manifest)
    write_encoders(run, encoders, 0.5)
    write_run_record(run, "train-head", cache={"dir": str(work / f"cache-{name}"),
                                               "fingerprint": manifest.get("fingerprint")}, encoders=encoders)
    started = time.perf_counter()
    classifier = Classifier.from_run(run, device=device, batch_size=batch_size)
    summary = predict_file(classifier, find_split_file(embed["data_dir"], "train"), work / f"predict-{name}.csv",
                           image_root=embed["image_root"], batch_size=batch_size, num_workers=num_workers,
                           part_rows=embed["part_rows"], log=lambda *_: None)
    rate = summary["rows"] / (time.perf_counter() - started)
    return {"rows": summary["rows"], "rows_per_s": round(rate, 1), "vs_embed": round(rate / embed_rows_per_s, 3)}


def bench_decode(work, count, clip_model):
    """Our loader (JPEG draft mode) against plain Image.open + convert + resize on 2-4 MP photos."""
    folder = work / "photos"
    paths = make_images(folder, count, "photo", seed=7)
    settings = ImageSettings.from_model_folder(clip_model)
    started = time.perf_counter()
    fast = [load_image(folder, p, settings) for p in paths]
    fast_seconds = time.perf_counter() - started
    started = time.perf_counter()
    plain = [reference_resize_and_crop(Image.open(folder / p).convert("RGB"), settings.size) for p in paths]
    plain_seconds = time.perf_counter() - started
    model = load_image_encoder(clip_model).eval()
    with torch.inference_mode():
        a = model(pixel_values(torch.from_numpy(np.stack(fast)), settings))
        b = model(pixel_values(torch.from_numpy(np.stack(plain)), settings))
    cosine = torch.nn.functional.cosine_similarity(a, b).numpy()
    return {"photos": count, "speedup": round(plain_seconds / fast_seconds, 2),
            "ms_per_photo_fast": round(1000 * fast_seconds / count, 1),
            "ms_per_photo_plain": round(1000 * plain_seconds / count, 1),
            "cosine_mean": round(float(cosine.mean()), 5), "cosine_min": round(float(cosine.min()), 5)}


def child_peak_rss(code):
    """Peak resident memory (bytes) of a fresh Python process running `code`."""
    script = code + "\nimport resource; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return int(output.rsplit("PEAK", 1)[1]) * 1024


def bench_memory(work, text_model, clip_model, rows):
    """Stage one's peak RSS at N and 10 N rows, and the RSS cost of loading a cache split."""
    peaks = {}
    for n in (rows, 10 * rows):
        data = prepare_data(work / f"rss-data-{n}", n, "preview", seed=3)
        peaks[n] = child_peak_rss(
            "from pipeline.embed.config import EmbedConfig\nfrom pipeline.embed.run import run_embed\n"
            f"run_embed(EmbedConfig(data_dir={str(data)!r}, text_model={str(text_model)!r}, "
            f"clip_model={str(clip_model)!r}, cache_dir={str(work / f'rss-cache-{n}')!r}, splits=('train',), "
            "num_workers=0, device='cpu', part_rows=256), log=lambda *_: None)"
        )
    return {"rows": [rows, 10 * rows], "peak_rss_mb": [round(peaks[n] / 2**20, 1) for n in (rows, 10 * rows)],
            "rss_growth": round(peaks[10 * rows] / peaks[rows], 3)}


def bench_cache_load(work, rows, dims=(768, 512)):
    """Resident-memory growth of load_split divided by the split's raw float32 bytes.

    A 100-row cache is loaded first, so the one-off initialisation of Arrow's
    readers and allocator (the same for any size) is not counted as the split's.
    """
    from pipeline.bench.synthetic import write_cache
    from pipeline.embed.cache import CachedSplit

    rng = np.random.default_rng(0)
    for name, n in (("warm-up", 100), ("load-cache", rows)):
        split = CachedSplit(np.array([str(i) for i in range(n)], dtype=object), rng.integers(0, 2, n),
                            rng.standard_normal((n, dims[0]), dtype=np.float32),
                            rng.standard_normal((n, dims[1]), dtype=np.float32))
        write_cache(work / name, {"train": split})
    del split
    code = (
        "import gc\nfrom pipeline.embed import cache\n"
        "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        f"cache.load_split({str(work / 'warm-up')!r}, 'train')\ngc.collect()\n"
        f"before = rss()\nsplit = cache.load_split({str(work / 'load-cache')!r}, 'train')\ngc.collect()\n"
        "print('GROWTH', rss() - before)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    growth = int(output.rsplit("GROWTH", 1)[1])
    raw = rows * sum(dims) * 4
    return {"rows": rows, "raw_mb": round(raw / 2**20, 1), "growth_mb": round(growth / 2**20, 1),
            "load_overhead": round(growth / raw, 3)}


def bench_cache_dtype(cache_dir, work):
    """Bytes per row with float32 and float16 storage, and the test macro-F1 change float16 causes."""
    from pipeline.bench.synthetic import write_cache
    from pipeline.model.config import HeadConfig
    from pipeline.train.config import TrainConfig
    from pipeline.train.fit import train_head

    manifest = cache.read_manifest(cache_dir)
    splits = {name: cache.load_split(cache_dir, name) for name in manifest["splits"]}
    write_cache(work / "f16", splits, dtype="float16")
    result = {}
    for dtype, folder in (("float32", Path(cache_dir)), ("float16", work / "f16")):
        size = sum(p.stat().st_size for p in folder.glob("*/part-*.parquet"))
        result[f"bytes_per_row_{dtype}"] = round(size / sum(len(s) for s in splits.values()), 1)
        loaded = {name: cache.load_split(folder, name) for name in splits}
        head = HeadConfig(text_dim=manifest["dims"]["text"], image_dim=manifest["dims"]["image"])
        run = train_head(loaded, head, TrainConfig(seed=0, device="cpu"))
        result[f"test_f1_macro_{dtype}"] = round(run.metrics["test"]["f1_macro"], 4)
    result["float16_f1_change"] = round(result["test_f1_macro_float16"] - result["test_f1_macro_float32"], 4)
    return result


def bench_head(rows, demo_cache, demo_config):
    from pipeline.bench.head import seconds_100k
    from pipeline.bench.head_busy import busy_vs_quiet

    quiet = seconds_100k(rows=rows)
    return {"seconds_100k": round(quiet, 2), "rows_100k": rows, **busy_vs_quiet(rows, quiet),
            **head_vs_e2e_epoch(demo_cache, demo_config)}


def head_vs_e2e_epoch(cache_dir, data):
    """One head epoch on the cached train rows against one end-to-end epoch (full text, LoRA image)
    on the same rows, both with stage two's and the Trainer's default batch sizes."""
    from pipeline.e2e.config import FinetuneConfig
    from pipeline.e2e.data import E2ERows, MultimodalDataCollator, scan_rows
    from pipeline.e2e.run import build_model
    from pipeline.model.config import HeadConfig
    from pipeline.model.head import FusionHead
    from pipeline.train.config import TrainConfig
    from pipeline.train.fit import to_features, train_epoch
    from pipeline.train.losses import class_weights

    split = cache.load_split(cache_dir, "train")
    dims = cache.read_manifest(cache_dir)["dims"]
    head = FusionHead(HeadConfig(text_dim=dims["text"], image_dim=dims["image"]))
    train = TrainConfig(device="cpu")
    weights = class_weights(split.labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=train.lr)
    started = time.perf_counter()
    train_epoch(head, optimizer, to_features(split, "cpu"), torch.from_numpy(split.labels), weights, train,
                 torch.Generator().manual_seed(0))
    head_seconds = time.perf_counter() - started

    settings = ImageSettings.from_model_folder(data.clip_model)
    rows = read_split(data.data_dir, "train")
    keep, _, _ = scan_rows(rows, data.resolved_image_root, settings, workers=0)
    model, _ = build_model(data, FinetuneConfig())
    model.train()
    collate = MultimodalDataCollator(load_tokenizer(data.text_model), settings, data.max_length)
    loader = DataLoader(E2ERows(rows, keep, data.resolved_image_root, settings), batch_size=16, shuffle=True,
                        collate_fn=collate, num_workers=decode_workers(data.num_workers, torch.device("cpu")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    started = time.perf_counter()
    for batch in loader:
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**batch), labels, weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    e2e_seconds = time.perf_counter() - started
    return {"head_epoch_s": round(head_seconds, 4), "e2e_epoch_s": round(e2e_seconds, 2),
            "epoch_rows": len(split), "speedup_vs_e2e": round(e2e_seconds / head_seconds, 1)}


class gpu_utilisation:
    """Samples `nvidia-smi` every 200 ms while the block runs (a no-op when disabled)."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.samples = []

    def __enter__(self):
        if self.enabled:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.process.terminate()
            output, _ = self.process.communicate()
            self.samples = [int(line) for line in output.split() if line.strip().isdigit()]

    def summary(self):
        busy = [s for s in self.samples if s > 0]
        return {"samples": len(self.samples), "mean": round(float(np.mean(self.samples)), 1) if self.samples else None,
                "mean_while_busy": round(float(np.mean(busy)), 1) if busy else None}
