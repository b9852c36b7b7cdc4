"""Decoding each batch on every core, in turn with the encoders, when there are no DataLoader workers.

On a CPU of fewer than 4 cores `device.decode_workers` gives no worker processes: the encoders' OpenMP
threads keep every core busy during a forward pass, so a decoder running beside them stalls them at each
barrier. Here the forward pass and the decoding take the cores in turn: a batch's images are decoded (read,
hashed, decoded, resized, perceptually hashed) by one thread a core while the encoders wait, then collated
(tokenised, stacked) in the calling thread. Pillow, simplejpeg, torch's resize, SHA-256 and NumPy release
the GIL, so the threads decode in parallel. On the 2-core bench machine, alternating runs in one process:
0.724 of the forward-only rate against 0.668 for decoding ahead in a niced thread (docs/benchmarks.md,
"Stage one in turn").

The batches are the loader's: the same rows, the same collate, the same order, so the cache is byte for
byte the one a serial loop writes (tests/test_in_turn.py).
"""

import torch

from pipeline.device import decoding_pool, pin_torch_threads


class DecodedInTurn:
    """`collate([dataset[row] for row in batch])` for each batch of row indices, the items made by `threads`
    threads (default: one a core), each with one torch thread; the caller keeps its own torch threads."""

    def __init__(self, dataset, collate, batches, threads=None):
        self.dataset = dataset
        self.collate = collate
        self.batches = batches
        self.threads = threads

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        pin_torch_threads(torch.get_num_threads())  # the decoders set 1 each: not the encoders' count
        with decoding_pool("embed-decode", self.threads) as pool:
            for batch in self.batches:
                yield self.collate(list(pool.map(self.dataset.__getitem__, batch)))
