"""`embed.main_loop_ms_per_batch`: the host's time per batch in stage one's main loop, the device's part free.

Batches arrive ready-made (as DataLoader workers hand them over: uint8 pixels, token ids), and the
device's part (normalisation and the encoders, `main_loop.encode_batch`) is replaced by a stand-in that
returns zero vectors of the real shapes: what is left is what the main process does per batch itself,
in series with the device, that is, copies, the finiteness check, handing rows to the part writer, and
queueing the Parquet writes (made in the writer's thread). The figure is the main thread's CPU time
(`time.thread_time`): with free encoders batches come faster than any writer can write them, so the wall
time (`_wall`, and `_drained` with the last writes) shows the writer's pace on this machine, not the loop's.
Torch runs with one thread here: on a GPU the stand-in's few tensor operations are device work, and on
a shared 2-core machine a second OpenMP thread only adds waiting to operations this small. The batches
share one pixel tensor (nothing writes to it), so 24 batches of 256 do not need 1 GB.
"""

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.bench.data import write_tsvs
from pipeline.data.images import ImageSettings
from pipeline.data.splits import read_split
from pipeline.device import resolve_device
from pipeline.embed.loader import RowBatch
from pipeline.embed.main_loop import embed_batches
from pipeline.embed.writer import PartJob, PartWriter

DIMS = {"text": 768, "image": 512}  # BERT-base and ViT-B/32's vectors


def main_loop_ms_per_batch(batch_size=256, batches=24, tokens=24, part_rows=2048, device="cpu"):
    device = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="main-loop-bench-") as folder:
        folder = Path(folder)
        rows = batch_size * batches
        write_tsvs(folder, {"train": rows, "warm": batch_size}, [f"{i}.jpg" for i in range(rows)])
        split, warm_split = read_split(folder, "train"), read_split(folder, "warm")
        pixels = torch.randint(0, 256, (batch_size, 224, 224, 3), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        pixels = pixels.pin_memory() if device.type == "cuda" else pixels
        ready = [_ready_batch(range(start, start + batch_size), pixels, tokens, device)
                 for start in range(0, rows, batch_size)]
        warm = [_ready_batch(range(batch_size), pixels, tokens, device)]
        settings = ImageSettings()
        job = PartJob(folder=str(folder / "cache"), image_root=str(folder), part_rows=part_rows, max_length=16,
                      batch_size=batch_size, num_workers=0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _run(warm, warm_split, job, settings, device, folder / "warm-cache")  # one-off allocations, imports
            started, cpu_started = time.perf_counter(), time.thread_time()
            parts = _run(ready, split, job, settings, device, folder / "cache", close=False)
            looped, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
            parts.close()
            drained = time.perf_counter() - started
        finally:
            torch.set_num_threads(threads)
    return {"main_loop_ms_per_batch": round(1000 * cpu / batches, 2),
            "main_loop_ms_per_batch_wall": round(1000 * looped / batches, 2),
            "main_loop_ms_per_batch_drained": round(1000 * drained / batches, 2),
            "main_loop_batch_size": batch_size, "main_loop_batches": batches, "main_loop_device": str(device)}


def _run(batches, split, job, settings, device, cache_dir, close=True):
    job = replace(job, folder=str(cache_dir))
    parts = PartWriter(split, job, DIMS)
    with torch.inference_mode():
        embed_batches(None, batches, split, job, settings, device, parts, encode=_stand_in)
    if close:
        parts.close()
    return parts


def _stand_in(model, text_inputs, pixels, image_settings, scratch=None):
    """Encoders that cost nothing: zero vectors of the real shapes on the batch's device."""
    text = torch.zeros(len(text_inputs["input_ids"]), DIMS["text"], device=pixels.device) if text_inputs else None
    image = torch.zeros(len(pixels), DIMS["image"], device=pixels.device) if pixels is not None else None
    return text, image


def _ready_batch(rows, pixels, tokens, device):
    rows = list(rows)
    ids = torch.randint(5, 30, (len(rows), tokens), generator=torch.Generator().manual_seed(rows[0]))
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if device.type == "cuda":
        text = {k: v.pin_memory() for k, v in text.items()}
    return RowBatch(rows=rows, good=list(range(len(rows))), bad=[], pixels=pixels, text=text,
                    titled=list(range(len(rows))), sha256={row: f"{row:064x}" for row in rows})


if __name__ == "__main__":
    print(main_loop_ms_per_batch())
