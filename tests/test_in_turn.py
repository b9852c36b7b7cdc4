"""Decoding each batch on every core, in turn with the encoders (pipeline/embed/in_turn.py): the batches the
loader would make, in its order, an error raised at its batch, no thread left running after the loop, the
decoders on one torch thread each and the caller's count kept; stage one with it writes the cache a serial
loop writes, byte for byte."""

import threading
from pathlib import Path

import pytest
import torch
from conftest import cache_dir_of, load_all, with_flag

from pipeline.__main__ import main
from pipeline.embed import loader as embed_loader
from pipeline.embed.in_turn import DecodedInTurn


class Items:
    """dataset[row] -> (row, the decoding thread's name, its torch threads); fails at row `fail_at`."""

    def __init__(self, fail_at=None):
        self.fail_at = fail_at

    def __getitem__(self, row):
        if row == self.fail_at:
            raise ValueError(f"bad row {row}")
        return row, threading.current_thread().name, torch.get_num_threads()


def rows_of(items):
    return [row for row, _, _ in items]


def _decoding_threads():
    return [t for t in threading.enumerate() if t.name.startswith("embed-decode")]


def test_the_batches_are_the_loaders_in_its_order():
    batches = [[5, 1, 9], [0], [7, 7, 2, 3]]
    assert [rows_of(batch) for batch in DecodedInTurn(Items(), list, batches, threads=3)] == batches
    assert list(DecodedInTurn(Items(), list, [])) == []
    assert len(DecodedInTurn(Items(), list, batches)) == 3
    assert not _decoding_threads()


def test_an_error_is_raised_at_its_batch_after_the_batches_before_it():
    seen = []
    with pytest.raises(ValueError, match="bad row 4"):
        for batch in DecodedInTurn(Items(fail_at=4), rows_of, [[0, 1], [2, 3], [4, 5], [6]], threads=2):
            seen.append(batch)
    assert seen == [[0, 1], [2, 3]]
    assert not _decoding_threads()


def test_leaving_the_loop_early_stops_the_threads():
    for batch in DecodedInTurn(Items(), rows_of, [[i] for i in range(100)], threads=2):
        if batch == [3]:
            break
    assert not _decoding_threads()


def test_the_decoders_run_one_torch_thread_each_and_the_callers_count_stays():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        torch.get_num_threads()
        batches = [list(range(8))] * 3
        items = [item for batch in DecodedInTurn(Items(), list, batches, threads=2) for item in batch]
        assert {name for _, name, _ in items} <= {"embed-decode_0", "embed-decode_1"}
        assert {threads for _, _, threads in items} == {1}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_stage_one_writes_the_same_cache_in_turn_as_a_serial_loop(embed_args, tmp_path, monkeypatch):
    """--num-workers 0 decodes in turn on the threads; the same run with every item made in the calling thread
    must write the same parts, byte for byte."""
    assert main(embed_args) == 0

    def serial(dataset, collate, batches):
        return [collate([dataset[row] for row in batch]) for batch in batches]

    monkeypatch.setattr(embed_loader, "DecodedInTurn", serial)
    serial_args = with_flag(embed_args, "--cache-dir", str(tmp_path / "serial"))
    assert main(serial_args) == 0
    in_turn, plain = Path(cache_dir_of(embed_args)), Path(cache_dir_of(serial_args))
    parts = sorted(path.relative_to(in_turn) for path in in_turn.glob("*/part-*.parquet"))
    assert len(parts) >= 3 and parts == sorted(path.relative_to(plain) for path in plain.glob("*/part-*.parquet"))
    for part in parts:
        assert (in_turn / part).read_bytes() == (plain / part).read_bytes(), part
    cached = load_all(in_turn)["train"]
    assert all(cached.image_sha256)  # the per-image results were written (and compared)
