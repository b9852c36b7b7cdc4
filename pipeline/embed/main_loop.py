"""Stage one's main loop: batches in, vectors out, without waiting on the device batch by batch.

Each batch is launched (its inputs copied to the device without blocking, from pinned memory on CUDA,
and its vectors queued for a non-blocking copy back into pinned host memory), and the results of the
batch launched `lag` batches earlier are brought back only then: the device always has the next batch
queued while the host hands finished vectors to the part writer (which writes Parquet in its own
thread). Results are keyed by row, so the cache is byte for byte the one a batch-by-batch loop writes.
A NaN or Inf vector stops the run when its batch is brought back, before any of its rows reach a part.
"""

from collections import deque
from dataclasses import dataclass

import torch

from pipeline.errors import UserError
from pipeline.model.batch import pixel_values

LAG = 2  # batches in flight: one on the device, one queued behind it


def encode_batch(model, text_inputs, pixels, image_settings, scratch=None):
    """The device's part of a batch: (text vectors or None, image vectors or None), float32, on the device.
    `scratch` (a `PixelScratch`) lends the buffer the pixel values are written into."""
    text = model.encode_text(text_inputs).float() if text_inputs else None
    image = None
    if pixels is not None:
        out = scratch.take(pixels) if scratch is not None else None
        image = model.encode_image({"pixel_values": pixel_values(pixels, image_settings, out=out)}).float()
    return text, image


class PixelScratch:
    """One float32 buffer for a batch's pixel values, reused batch after batch on the CPU.

    A batch of 64 is 38 MB of float32; a new one each batch cost 18.5 ms on the 2-core bench machine, 14 of
    them first-touch page faults (glibc maps blocks that large afresh on each allocation), against 4.0 ms
    written into this one. Safe on the CPU only, where the forward pass is done with its input when
    `encode` returns; on CUDA `take` gives None (the caching allocator already reuses device memory)."""

    def __init__(self):
        self.buffer = None

    def take(self, pixels):
        """A (B, 3, S, S) float32 view for `pixels` (B, S, S, 3) uint8, or None off the CPU."""
        if pixels.device.type != "cpu":
            return None
        batch, height, width, channels = pixels.shape
        shape = (batch, channels, height, width)
        if self.buffer is None or self.buffer.shape[1:] != shape[1:] or self.buffer.shape[0] < batch:
            self.buffer = torch.empty(shape, dtype=torch.float32)
        return self.buffer[:batch]


@dataclass
class _InFlight:
    """A launched batch: its vectors and finiteness flags on their way to the host."""

    batch: object  # loader.RowBatch
    text: torch.Tensor = None  # (len(batch.titled), D_text) on the host once `ready` has fired
    image: torch.Tensor = None  # (len(batch.good), D_image)
    text_finite: torch.Tensor = None  # (len(batch.titled),) bool
    image_finite: torch.Tensor = None
    ready: object = None  # a CUDA event after the copies, None on the CPU (copies done at once)


def embed_batches(model, loader, rows, job, image_settings, device, parts, progress=None,
                  encode=encode_batch, lag=LAG):
    """Embed every batch of `loader` into `parts` (a writer.PartWriter); returns the rows kept."""
    in_flight, scratch = deque(), PixelScratch()
    embedded = 0
    for batch in loader:
        _settle_bad_rows(batch, rows, job, parts)
        in_flight.append(_launch(model, batch, image_settings, device, encode, scratch))
        while len(in_flight) > lag:
            embedded += _bring_back(in_flight.popleft(), rows, parts)
        if progress:
            progress(len(batch.rows))
    while in_flight:
        embedded += _bring_back(in_flight.popleft(), rows, parts)
    return embedded


def _settle_bad_rows(batch, rows, job, parts):
    for row, reason in batch.bad:  # all image failures (an empty title alone is settled before loading)
        if job.on_bad_image == "fail":
            raise UserError(
                f"{rows.path}: line {rows.line(row)}, column local_image_path {rows.image_paths[row]!r}: "
                f"{reason.removeprefix('empty_title_and_').replace('_', ' ')}; fix the image or pass "
                "--on-bad-image skip (or text-only)"
            )
        parts.skip(row, reason)


def _launch(model, batch, image_settings, device, encode, scratch):
    flight = _InFlight(batch)
    if not batch.titled and not batch.good:
        return flight
    text_inputs = {k: v.to(device, non_blocking=True) for k, v in batch.text.items()} if batch.titled else None
    pixels = batch.pixels.to(device, non_blocking=True) if batch.good else None
    text, image = encode(model, text_inputs, pixels, image_settings, scratch=scratch)
    if text is not None:
        flight.text, flight.text_finite = _to_host(text), _to_host(torch.isfinite(text).all(dim=1))
    if image is not None:
        flight.image, flight.image_finite = _to_host(image), _to_host(torch.isfinite(image).all(dim=1))
    if device.type == "cuda":
        flight.ready = torch.cuda.Event()
        flight.ready.record()
    return flight


def _to_host(tensor):
    """A copy on the host that is queued, not waited for (pinned memory on CUDA; the tensor itself on CPU)."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def _bring_back(flight, rows, parts):
    batch = flight.batch
    kept = sorted(set(batch.good) | set(batch.titled))  # positions in batch.rows
    if not kept:
        return 0
    if flight.ready is not None:
        flight.ready.synchronize()  # this batch's copies only; later batches keep the device busy
    text, image = dict.fromkeys(kept), dict.fromkeys(kept)
    if batch.titled:
        _check_finite("text_emb", flight.text_finite, [batch.rows[i] for i in batch.titled], rows)
        text.update(zip(batch.titled, flight.text.numpy()))
    if batch.good:
        _check_finite("image_emb", flight.image_finite, [batch.rows[i] for i in batch.good], rows)
        image.update(zip(batch.good, flight.image.numpy()))
    parts.add([batch.rows[i] for i in kept], [text[i] for i in kept], [image[i] for i in kept],
              truncated=batch.truncated, missing=batch.missing, sha256=batch.sha256, phash=batch.phash)
    return len(kept)


_LIKELY_CAUSES = {
    "text_emb": "the text model's weights (--text-model) hold NaN/Inf, or --device's bf16 overflowed",
    "image_emb": "the CLIP weights (--clip-model or --clip-lora) hold NaN/Inf, --lora-alpha or the adapter's "
                 "lora_alpha is absurd, or preprocessor_config.json's image_mean/image_std are wrong (a std of 0)",
}


def _check_finite(name, finite, batch_rows, rows):
    """A NaN or Inf vector stops the run before its part is written: never a cache of garbage."""
    if not bool(finite.all()):
        first = batch_rows[int((~finite).nonzero()[0])]
        raise UserError(f"{rows.path}: line {rows.line(first)}: the {name.split('_')[0]} vector is NaN or Inf; "
                        f"likely cause: {_LIKELY_CAUSES[name]}; fix that and rerun (nothing of this part was written)")
