"""Decoding the next batches in a thread of the main process while the current batch's forward pass runs.

With no DataLoader workers (on a CPU of fewer than 4 cores, `device.decode_workers` gives none) the images of a
batch used to be decoded in series with the encoders. The decoders (Pillow, simplejpeg, torch's resize),
SHA-256, NumPy and the tokenizer release the GIL, so a thread keeps `depth` batches ready meanwhile. The batches
are the same objects in the same order as the loader's: only when they are made changes.
"""

import os
import queue
import threading

import torch

DEPTH = 2  # batches decoded ahead: one ready, one in the making (bounded memory)
# The thread's niceness above the process's. On a quiet 2-core machine the encoders' two OpenMP threads keep both
# cores busy, and a decoder competing as an equal stalls them at every barrier: one DataLoader worker (a process
# of equal priority) measured 0.509 of the forward-only rate against 0.528 decoding in series (docs/benchmarks.md,
# "A quiet fresh-clone run"). Niced, the thread takes the cores when the encoders leave them (serial stretches,
# threads asleep between operations) and all of one when the main thread waits for it, so it is meant to cost
# at most what decoding in series cost while the encoders keep their cores. Chosen by that reasoning and that one
# quiet measurement; this shared machine could not rank the variants (docs/benchmarks.md, "Decoding ahead").
# Threads this one starts inherit it (none of ours; a tokenizer's pool if first used here).
NICE = 10
_ITEM, _END, _ERROR = "item", "end", "error"


class BackgroundBatches:
    """Iterates `batches` (any iterable, here a DataLoader without workers) in a daemon thread, at most `depth`
    batches ahead, with `torch_threads` intra-op threads of its own for torch's resize (one, as a DataLoader
    worker has: the forward pass keeps its threads). An error in the thread is raised here, at the batch where
    it happened; leaving the loop early (an error, Ctrl-C) stops the thread before returning."""

    def __init__(self, batches, depth=DEPTH, torch_threads=1, nice=NICE):
        self.batches = batches
        self.depth = depth
        self.torch_threads = torch_threads
        self.nice = nice

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        ready = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        torch.get_num_threads()  # settles this thread's own thread count before the producer changes the default
        producer = threading.Thread(target=self._produce, args=(ready, stop), name="embed-prefetch", daemon=True)
        producer.start()
        try:
            while True:
                kind, value = ready.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise value
                yield value
        finally:
            stop.set()
            producer.join()

    def _produce(self, ready, stop):
        # torch.set_num_threads is the process's default for threads that have not run a parallel op yet; a
        # thread that has (the main one) keeps its own. Restored on the way out for any later thread.
        before = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        _lower_priority(self.nice)
        try:
            for batch in self.batches:
                if not _put(ready, stop, (_ITEM, batch)):
                    return
            _put(ready, stop, (_END, None))
        except BaseException as error:  # handed to the main thread, which raises it
            _put(ready, stop, (_ERROR, error))
        finally:
            torch.set_num_threads(before)


def _lower_priority(nice):
    """Raise this thread's niceness by `nice` (Linux: a thread id is a PRIO_PROCESS target; raising it needs no
    privilege). Best effort: where it cannot be set the thread runs at the process's priority."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + nice, 19))
    except (OSError, AttributeError):
        pass


def _put(ready, stop, item):
    """Queue `item` unless the consumer has gone; False when it has."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
