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
_ITEM, _END, _ERROR = "item", "end", "error"


class BackgroundBatches:
    """Iterates `batches` (any iterable, here a DataLoader without workers) in a daemon thread, at most `depth`
    batches ahead, with `torch_threads` intra-op threads of its own for torch's resize (one, as a DataLoader
    worker has: the forward pass keeps its threads). An error in the thread is raised here, at the batch where
    it happened; leaving the loop early (an error, Ctrl-C) stops the thread before returning."""

    def __init__(self, batches, depth=DEPTH, torch_threads=1, nice=0):
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
        if self.nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
        try:
            for batch in self.batches:
                if not _put(ready, stop, (_ITEM, batch)):
                    return
            _put(ready, stop, (_END, None))
        except BaseException as error:  # handed to the main thread, which raises it
            _put(ready, stop, (_ERROR, error))
        finally:
            torch.set_num_threads(before)


def _put(ready, stop, item):
    """Queue `item` unless the consumer has gone; False when it has."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False
