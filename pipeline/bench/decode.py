"""Decoding figures of issue 24: our worker's time per image over the frozen reference loader's.

`decode.vs_reference.preview` and `.photo` time `load_image_and_sha256` (what a stage-one worker runs
per row) against `reference_loader.reference_load` (the same work as the loader was before issue 24)
on the same files, file by file in alternation so that a busy neighbour slows both alike, in CPU time
(`time.process_time`: a shared machine's waiting is not counted); each side's time is its best round.
`decode.max_level_diff` is the largest pixel difference between the two over all the files.
Torch runs with one thread, as in a DataLoader worker.
"""

import time

import numpy as np
import torch

from pipeline.bench.data import make_images
from pipeline.bench.reference_loader import reference_load
from pipeline.data.images import ImageSettings, load_image_and_sha256


def decode_vs_reference(work, previews, photos, clip_model, rounds=3):
    settings = ImageSettings.from_model_folder(clip_model)
    files = {"preview": (work / "ref-previews", make_images(work / "ref-previews", previews, "preview", seed=11)),
             "photo": (work / "ref-photos", make_images(work / "ref-photos", photos, "photo", seed=12))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result, worst = {}, 0
        for kind, (folder, paths) in files.items():
            ours, reference = [], []
            for _ in range(rounds):
                seconds = _alternating(folder, paths, settings)
                reference.append(seconds[reference_load])
                ours.append(seconds[load_image_and_sha256])
            result[kind] = {"ms_ours": round(1000 * min(ours) / len(paths), 2),
                            "ms_reference": round(1000 * min(reference) / len(paths), 2)}
            result[kind]["vs_reference"] = round(min(ours) / min(reference), 3)
            worst = max(worst, _max_level_diff(folder, paths, settings))
    finally:
        torch.set_num_threads(threads)
    return {"vs_reference": {kind: figures["vs_reference"] for kind, figures in result.items()},
            "max_level_diff": worst, "ms_per_image": result, "images": {"preview": previews, "photo": photos}}


def _alternating(folder, paths, settings):
    """CPU seconds of each loader over all the files, the two taking turns file by file."""
    seconds = {reference_load: 0.0, load_image_and_sha256: 0.0}
    for path in paths:
        for load in seconds:
            started = time.process_time()
            load(folder, path, settings)
            seconds[load] += time.process_time() - started
    return seconds


def _max_level_diff(folder, paths, settings):
    worst = 0
    for path in paths:
        ours, _ = load_image_and_sha256(folder, path, settings)
        reference, _ = reference_load(folder, path, settings)
        worst = max(worst, int(np.abs(ours.astype(np.int16) - reference).max()))
    return worst
