"""Device choice and mixed precision: CUDA with bf16 autocast when present, CPU float32 otherwise."""

import contextlib

import torch

from pipeline.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


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
