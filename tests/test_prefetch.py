"""Decoding ahead in a thread (pipeline/embed/prefetch.py): the loader's batches, in its order, its errors raised
where they happened, nothing left running after the loop, and the main thread's torch threads left alone; stage
one with it writes the cache a loop without it writes, byte for byte."""

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import cache_dir_of, load_all, with_flag

from pipeline.__main__ import main
from pipeline.embed import loader as embed_loader
from pipeline.embed.prefetch import BackgroundBatches


class Counting:
    """An iterable of 0..n-1 that records how far it was read and fails at `fail_at`."""

    def __init__(self, n, fail_at=None):
        self.n, self.fail_at, self.made = n, fail_at, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise ValueError(f"bad batch {i}")
            self.made += 1
            yield i


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "embed-prefetch"]


def test_the_batches_come_in_the_loaders_order():
    assert list(BackgroundBatches(Counting(50), depth=3)) == list(range(50))
    assert list(BackgroundBatches(Counting(0))) == []
    assert len(BackgroundBatches(Counting(7))) == 7
    assert not _prefetch_threads()


def test_an_error_in_the_thread_is_raised_after_the_batches_before_it():
    seen = []
    with pytest.raises(ValueError, match="bad batch 5"):
        for item in BackgroundBatches(Counting(10, fail_at=5)):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert not _prefetch_threads()


def test_leaving_the_loop_early_stops_the_thread_and_reads_at_most_depth_ahead():
    source = Counting(1000)
    for item in BackgroundBatches(source, depth=2):
        if item == 3:
            break
    assert not _prefetch_threads()  # joined before the loop returned
    time.sleep(0.1)
    assert 4 <= source.made <= 4 + 2 + 1  # the batches used, the queue's two, the one being put


def test_the_thread_runs_torch_on_its_own_threads_and_the_main_threads_count_stays():
    before = torch.get_num_threads()
    inside = []

    class Probe:
        def __iter__(self):
            inside.append(torch.get_num_threads())
            yield 0

    assert list(BackgroundBatches(Probe(), torch_threads=1)) == [0]
    assert inside == [1]
    assert torch.get_num_threads() == before
    new_thread = []
    worker = threading.Thread(target=lambda: new_thread.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert new_thread == [before]  # the default is restored for threads started later


def test_the_thread_runs_niced_and_the_main_thread_keeps_its_priority():
    main_thread = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    inside = []

    class Probe:
        def __iter__(self):
            inside.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            yield 0

    list(BackgroundBatches(Probe(), nice=5))
    assert inside == [min(main_thread + 5, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_thread


def test_stage_one_writes_the_same_cache_with_and_without_the_prefetching_thread(embed_args, tmp_path, monkeypatch):
    """--num-workers 0 decodes in the thread; the same run with the DataLoader iterated in the main thread
    (as before the thread existed) must write the same parts, byte for byte."""
    assert main(embed_args) == 0
    monkeypatch.setattr(embed_loader, "BackgroundBatches", lambda batches: batches)
    serial_args = with_flag(embed_args, "--cache-dir", str(tmp_path / "serial"))
    assert main(serial_args) == 0
    threaded, serial = Path(cache_dir_of(embed_args)), Path(cache_dir_of(serial_args))
    parts = sorted(path.relative_to(threaded) for path in threaded.glob("*/part-*.parquet"))
    assert len(parts) >= 3 and parts == sorted(path.relative_to(serial) for path in serial.glob("*/part-*.parquet"))
    for part in parts:
        assert (threaded / part).read_bytes() == (serial / part).read_bytes(), part
    assert all(load_all(threaded)["train"].image_sha256)  # the worker-side results were written, and compared
