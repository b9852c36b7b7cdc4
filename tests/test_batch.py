"""One batch preparation: stage one, end-to-end fine-tuning and the benchmark give the model equal tensors."""

import numpy as np
import torch

from pipeline.data.images import ImageSettings, load_image
from pipeline.data.splits import read_split
from pipeline.e2e.data import E2ERows, MultimodalDataCollator
from pipeline.embed.loader import Collate, ImageRows
from pipeline.model.batch import pixel_values, prepare_batch, tokenize_titles
from pipeline.model.text_encoder import load_tokenizer

MAX_LENGTH = 16


def test_stage_one_end_to_end_and_bench_prepare_equal_tensors(tiny_bert, tiny_clip, dataset):
    rows = read_split(dataset, "train")
    tokenizer = load_tokenizer(tiny_bert)
    settings = ImageSettings.from_model_folder(tiny_clip)
    picked = [0, 3, 5, 11, 17]  # titles of different lengths, so padding matters
    pixels = torch.from_numpy(np.stack([load_image(dataset, rows.image_paths[r], settings) for r in picked]))
    reference = prepare_batch(tokenizer, [rows.texts[r] for r in picked], pixels, MAX_LENGTH, settings)

    # Stage one: a DataLoader worker collates; the main process normalises after the copy to the device.
    images = ImageRows(dataset, rows.image_paths, settings)
    stage_one = Collate(rows.texts, tokenizer, MAX_LENGTH, settings.size)([images[r] for r in picked])
    stage_one_inputs = {**stage_one.text, "pixel_values": pixel_values(stage_one.pixels, settings)}

    # End to end: the Trainer's collator (which adds the labels).
    e2e_rows = E2ERows(rows, picked, dataset, settings)
    e2e = MultimodalDataCollator(tokenizer, settings, MAX_LENGTH)([e2e_rows[i] for i in range(len(picked))])
    assert e2e.pop("labels").tolist() == rows.labels[picked].tolist()
    assert e2e.pop("has_text").all() and e2e.pop("has_image").all()  # whole posts: both halves there

    # The benchmark's forward-only pass tokenises the same way.
    bench = {**tokenize_titles(tokenizer, [rows.texts[r] for r in picked], MAX_LENGTH),
             "pixel_values": pixel_values(pixels, settings)}

    assert reference["input_ids"].shape[1] < MAX_LENGTH  # padded to the longest title, not to max_length
    for name, inputs in (("stage one", stage_one_inputs), ("end to end", e2e), ("bench", bench)):
        assert inputs.keys() == reference.keys(), name
        for key, tensor in reference.items():
            assert torch.equal(inputs[key], tensor), f"{name}: {key} differs"


def test_pixel_values_are_the_out_of_place_formula_bit_for_bit():
    """Normalising in place (for speed) must give what `(x / 255 - mean) / std` gave every cache before it,
    in the same memory layout (the image encoder's kernels may depend on it), and leave its input alone."""
    settings = ImageSettings(size=32)
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    before = pixels.clone()
    mean = torch.tensor(settings.mean).view(1, 3, 1, 1)
    std = torch.tensor(settings.std).view(1, 3, 1, 1)
    expected = (pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - mean) / std
    ours = pixel_values(pixels, settings)
    assert torch.equal(ours, expected) and ours.stride() == expected.stride()
    assert torch.equal(pixels, before)
    floats = pixels.to(torch.float32)  # already the target type: `.to` alone would hand back the input itself
    pixel_values(floats, settings)
    assert torch.equal(floats, before.to(torch.float32))
