"""Near duplicates from cached vectors: for each query row, the train rows whose cosine reaches a threshold.

Cosine is taken after subtracting the train mean: encoders put a shared
direction into every vector (a random CLIP puts almost nothing else), and
centring makes the cosine measure what differs between posts.

The search is exact and runs in blocks (a block of queries times all train
rows is one matrix product; memory stays at one block whatever the sizes):

1. screen: every query's best cosine, in bfloat16 where the hardware multiplies
   it fast (CUDA, or a CPU with AVX512-BF16/AMX: 4-5x float32 there). For unit
   vectors a bfloat16 dot product is off by at most 2 * 2^-9 < 0.004
   (Cauchy-Schwarz), so rows below threshold - 0.01 cannot reach the threshold;
2. exact: the rows that pass the screen are compared again in float32: their top
   `top_k` train rows, cosines and the count at or above the threshold.

Measured (bench figure doctor.seconds_100k_20k): see docs/benchmarks.md.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_BLOCK_VALUES = 1 << 25  # similarities per block (128 MB of float32)
MIN_EFFECTIVE_DIMENSIONS = 5  # measured: demo's random CLIP about 2, MiniLM titles 26-41
_SPREAD_SAMPLE = 20_000
SCREEN_MARGIN = 0.01  # > the largest bfloat16 error of a unit-vector dot product (0.0039)


@dataclass
class Neighbours:
    best: np.ndarray  # (Nq,) float32 highest cosine to any train row (screened precision below the threshold)
    candidates: np.ndarray  # (Nc,) int64 query rows that passed the screen, with exact neighbours below
    index: np.ndarray  # (Nc, k) int64 train rows, most similar first
    cosine: np.ndarray  # (Nc, k) float32 their exact cosines
    matches: np.ndarray  # (Nc,) int64 train rows at or above the threshold


def fast_bf16(device):
    """Whether bfloat16 matrix products are fast here (else the screen runs in float32)."""
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _centred_unit(torch, matrix, mean, device):
    x = torch.as_tensor(np.asarray(matrix, dtype=np.float32), device=device) - mean
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def effective_dimensions(train, seed=0):
    """Participation ratio (sum of eigenvalues)^2 / sum of squares, of the centred unit train vectors'
    covariance: about how many directions the vectors really use. Near 1-2, every vector lies on a
    line or a plane, cosines near +-1 are everywhere and say nothing about identity."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) > _SPREAD_SAMPLE:
        train = train[np.random.default_rng(seed).choice(len(train), _SPREAD_SAMPLE, replace=False)]
    centred = train - train.mean(axis=0)
    unit = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    eigenvalues = np.clip(np.linalg.eigvalsh(unit.T @ unit / max(len(unit), 1)), 0, None)
    return float(eigenvalues.sum() ** 2 / max((eigenvalues ** 2).sum(), 1e-300))


def nearest_train(queries, train, threshold, device=None, top_k=5, dimensions=None):
    """Neighbours of every query row among the train rows (both (N, D) float arrays).

    Returns (Neighbours, collapsed): when the train vectors span fewer than MIN_EFFECTIVE_DIMENSIONS
    effective dimensions, cosine does not tell distinct rows apart (e.g. a random image encoder):
    `collapsed` is True and no exact pass is made (candidates empty). `dimensions`: effective_dimensions(train)
    when already known.
    """
    import torch  # here: the doctor's CLI module must not import torch

    device = torch.device(device or "cpu")
    mean = torch.as_tensor(np.asarray(train, dtype=np.float64).mean(axis=0), dtype=torch.float32, device=device)
    reference = _centred_unit(torch, train, mean, device)  # (Nt, D)
    screen_type = torch.bfloat16 if fast_bf16(device) else torch.float32
    screen = reference.to(screen_type)
    rows, block = len(queries), max(1, _BLOCK_VALUES // max(reference.shape[0], 1))
    best = np.empty(rows, np.float32)
    with torch.inference_mode():
        for start in range(0, rows, block):
            query = _centred_unit(torch, queries[start:start + block], mean, device).to(screen_type)
            best[start:start + block] = (query @ screen.T).max(dim=1).values.float().cpu().numpy()  # (B,)
        candidates = np.flatnonzero(best >= threshold - SCREEN_MARGIN)
        k = min(top_k, reference.shape[0])
        dimensions = effective_dimensions(train) if dimensions is None else dimensions
        collapsed = dimensions < MIN_EFFECTIVE_DIMENSIONS
        if collapsed:
            candidates = candidates[:0]
        index = np.empty((len(candidates), k), np.int64)
        cosine = np.empty((len(candidates), k), np.float32)
        matches = np.empty(len(candidates), np.int64)
        for start in range(0, len(candidates), block):
            chosen = candidates[start:start + block]
            similarity = _centred_unit(torch, queries[chosen], mean, device) @ reference.T  # (B, Nt) float32
            values, positions = similarity.topk(k, dim=1)
            cosine[start:start + block] = values.cpu().numpy()
            index[start:start + block] = positions.cpu().numpy()
            matches[start:start + block] = (similarity >= threshold).sum(dim=1).cpu().numpy()
            best[chosen] = values[:, 0].cpu().numpy()
    return Neighbours(best=best, candidates=candidates, index=index, cosine=cosine, matches=matches), bool(collapsed)
