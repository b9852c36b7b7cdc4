"""Device choice and mixed precision: CUDA with bf16 autocast when present, CPU float32 otherwise."""

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from pipeline.config import DEVICES
from pipeline.errors import UserError


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device; use one of {', '.join(DEVICES)} (or cuda:N)") from None


def autocast(device):
    """bf16 autocast on CUDA; a no-op on CPU, where float32 is both faster and exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decode_workers(requested, device):
    """DataLoader workers for image decoding; -1 picks by device.

    On CUDA the model waits for the CPU, so decoding gets all cores but one. On
    the CPU the model itself needs the cores: measured on 2 cores with BERT-base
    + ViT-B/32, two decoding workers cut stage one's throughput by about 10%
    against decoding in the main process, so the CPU gets a quarter of the cores.
    With none (fewer than 4 cores), stage one decodes each batch on every core of the main
    process, in turn with the encoders (embed/in_turn.py).
    """
    if requested >= 0:
        return requested
    cores = available_cores()
    if device.type == "cuda":
        return max(1, min(cores - 1, 16))
    return cores // 4


def pin_torch_threads(count):
    """Give the calling thread `count` torch intra-op threads, for good.

    torch.set_num_threads in a thread that has not asked for its count yet only sets the default, which
    the next set, by any thread, replaces; reading the count back fixes it for this thread. (A serve model
    thread with 2 threads ran on 1 after its decoding threads asked for 1 each, and scored at half speed.)
    """
    torch.set_num_threads(count)
    torch.get_num_threads()


MAX_DECODE_THREADS = 16


def available_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decoding_pool(name, threads=None):
    """Threads that decode images in the calling process (stage one in turn, serve's batches): `threads`, by
    default one a core, each with one torch thread for the resize. Pillow, simplejpeg and torch release the
    GIL, so they decode in parallel; the caller should pin its own torch threads first."""
    return ThreadPoolExecutor(threads or min(available_cores(), MAX_DECODE_THREADS), thread_name_prefix=name,
                              initializer=pin_torch_threads, initargs=(1,))
