"""The one way titles and images become the model's inputs, for every caller.

Stage one, end-to-end fine-tuning and the benchmark all go through here:
titles are tokenised with padding to the batch's longest title (dynamic
padding: no work on pad tokens up to max_length), and (B, S, S, 3) uint8
pixels, already resized and centre-cropped by `pipeline.data.images`, are
normalised with the CLIP folder's mean and std on whatever device they are on.
Stage one tokenises in its DataLoader workers and normalises on the GPU after
the copy, so the two halves are separate functions; `prepare_batch` joins them.
"""

import torch


def tokenize_titles(tokenizer, titles, max_length):
    """{"input_ids", "attention_mask", ...}: (B, T) tensors, T = the longest title's tokens (at most max_length),
    or max_length for a family that pools a fixed position (SigLIP; `load_tokenizer` sets `title_padding`)."""
    padding = getattr(tokenizer, "title_padding", "longest")
    return dict(tokenizer(list(titles), padding=padding, truncation=True, max_length=max_length,
                          return_tensors="pt"))


def pixel_values(pixels_uint8, settings, dtype=torch.float32, out=None):
    """(B, S, S, 3) uint8 -> (B, 3, S, S) normalised float, vectorised over the batch; written into `out` (a
    (B, 3, S, S) tensor of `dtype` on the same device) when given, a new tensor otherwise."""
    planes = pixels_uint8.permute(0, 3, 1, 2)
    pixels = planes.to(dtype, copy=True) if out is None else out.copy_(planes)  # ours: the steps below are in place
    mean = torch.tensor(settings.mean, dtype=dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(settings.std, dtype=dtype, device=pixels.device).view(1, 3, 1, 1)
    # In place: the same three operations as (x / 255 - mean) / std, so the same values bit for bit, in one
    # buffer instead of four (a batch of 64 is 38 MB of float32; the new buffers cost 3x the arithmetic on CPU).
    return pixels.div_(255.0).sub_(mean).div_(std)


def prepare_batch(tokenizer, titles, pixels_uint8, max_length, settings):
    """The model's whole input dict for rows given as titles and (B, S, S, 3) uint8 pixels."""
    batch = tokenize_titles(tokenizer, titles, max_length)
    batch["pixel_values"] = pixel_values(pixels_uint8, settings)
    return batch
