"""Stage one killed with SIGKILL at several points, two runs on one cache, a full disk: nothing lost or doubled.

The killed runs are real `python -m pipeline embed` processes. To kill one at a
chosen point, the process is started through a few lines (below, test code only)
that wrap one library function so that it stops at that point, says so with a
marker file and sleeps until the kill; the library itself has no test hooks.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_same_cache, embed_flags, load_all, make_dataset

from pipeline.__main__ import main
from pipeline.embed import cache

REPO = Path(__file__).resolve().parents[1]
POINTS = ("batch", "part", "manifest")

PAUSING_RUN = r"""
import json, os, runpy, sys, time
from pathlib import Path

import torch

point, marker = os.environ["PAUSE_AT"], Path(os.environ["PAUSE_MARKER"])
torch.set_num_threads(int(os.environ["TORCH_THREADS"]))  # as in the test process: the values must match exactly


def pause():
    marker.touch()
    time.sleep(600)  # until the test kills this process


if point == "batch":  # in the 5th forward pass: two parts written, the third half-computed
    from pipeline.model.classifier import MultimodalBertClipClassifier as Model

    encode, calls = Model.encode_image, []  # stage one encodes each batch's images once

    def paused_encode(self, batch):
        calls.append(1)
        if len(calls) == 5:
            pause()
        return encode(self, batch)

    Model.encode_image = paused_encode
elif point == "part":  # half of the third part's bytes are on disk (under the temp name)
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_table, calls = pq.write_table, []

    def paused_write_table(table, where, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            buffer = pa.BufferOutputStream()
            write_table(table, buffer, **kwargs)
            data = buffer.getvalue().to_pybytes()
            with open(where, "wb") as handle:
                handle.write(data[: len(data) // 2])
            pause()
        return write_table(table, where, **kwargs)

    pq.write_table = paused_write_table
elif point == "manifest":  # every part done, the manifest's first bytes written
    from pipeline.embed import cache

    write_json_atomic = cache.write_json_atomic

    def paused_write_json_atomic(path, payload):
        if Path(path).name == cache.MANIFEST_NAME:
            Path(path).with_name(f".{cache.MANIFEST_NAME}.{os.getpid()}.tmp").write_text(json.dumps(payload)[:100])
            pause()
        return write_json_atomic(path, payload)

    cache.write_json_atomic = paused_write_json_atomic
sys.argv = ["python -m pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
"""


def temp_files(cache_dir):
    return sorted(Path(cache_dir).rglob(".*.tmp"))


@pytest.fixture(scope="module")
def flags(tiny_bert, tiny_clip, tmp_path_factory):
    """cache folder -> the flags of a run on one small data set."""
    data = make_dataset(tmp_path_factory.mktemp("interruption") / "data")
    return lambda cache_dir: embed_flags(data, tiny_bert, tiny_clip, cache_dir)


@pytest.fixture(scope="module")
def paused(flags, tmp_path_factory):
    """One real run per point, started at once (their start-up is most of the time), each stopped at its point."""
    root = tmp_path_factory.mktemp("paused")
    runs = {}
    for point in POINTS:
        env = {**os.environ, "PAUSE_AT": point, "PAUSE_MARKER": str(root / f"{point}.paused"),
               "TORCH_THREADS": str(torch.get_num_threads())}
        with open(root / f"{point}.log", "w") as log:
            process = subprocess.Popen([sys.executable, "-c", PAUSING_RUN, *flags(root / point)], cwd=REPO, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        runs[point] = {"process": process, "args": flags(root / point), "cache": root / point,
                       "marker": root / f"{point}.paused", "log": root / f"{point}.log"}
    yield runs
    for run in runs.values():
        if run["process"].poll() is None:
            run["process"].kill()
            run["process"].wait()


@pytest.fixture(scope="module")
def reference(flags, tmp_path_factory):
    """The cache of an uninterrupted run, and its manifest."""
    cache_dir = tmp_path_factory.mktemp("reference") / "cache"
    assert main(flags(cache_dir)) == 0
    return load_all(cache_dir), cache.read_manifest(cache_dir)


def wait_until_paused(run, timeout=240):
    deadline = time.monotonic() + timeout
    while not run["marker"].exists():
        assert run["process"].poll() is None, run["log"].read_text()
        assert time.monotonic() < deadline, f"{run['args']}: never reached its pause"
        time.sleep(0.1)
    return run["process"]


def kill(process):
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def part_times(cache_dir):
    return {str(p): p.stat().st_mtime_ns for p in Path(cache_dir).rglob("part-*.parquet")}


def assert_resumed_to_the_reference(run, reference):
    """Rerun the same command after the kill: the cache of an uninterrupted run, byte for byte."""
    cache_dir = run["cache"]
    assert not (cache_dir / cache.MANIFEST_NAME).exists()
    kept = part_times(cache_dir)
    assert kept  # finished parts survived the kill
    assert main(run["args"]) == 0  # the same command again
    assert not temp_files(cache_dir)  # ...which cleared the debris
    assert all(part_times(cache_dir)[path] == mtime for path, mtime in kept.items())  # kept, not redone
    assert_same_cache(load_all(cache_dir), reference[0], exact=True)
    for split, info in cache.read_manifest(cache_dir)["splits"].items():
        expected = reference[1]["splits"][split]
        assert info["parts"] == expected["parts"]  # byte-identical part files (sha256)
        assert (info["rows_read"], info["rows_embedded"], info["rows_skipped"]) == \
               (expected["rows_read"], expected["rows_embedded"], expected["rows_skipped"])


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_run_killed_mid_batch_resumes(paused, reference, capsys):
    run = paused["batch"]
    first = wait_until_paused(run)
    before = part_times(run["cache"])
    assert main(run["args"]) == 2  # started while the first holds the cache
    assert "another `embed` run is writing this cache; wait for it to finish" in capsys.readouterr().err
    assert first.poll() is None and part_times(run["cache"]) == before  # the first run was not disturbed
    kill(first)  # the OS drops a dead process's lock: no stale lock to clean by hand
    assert_resumed_to_the_reference(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["part", "manifest"])
def test_killed_while_writing_a_file_resumes_to_the_same_cache(paused, reference, point):
    run = paused[point]
    kill(wait_until_paused(run))
    (half,) = temp_files(run["cache"])  # the half-written file is there when the process dies...
    if point == "part":
        with pytest.raises(Exception):
            pq.read_metadata(half)  # ...and really is half a Parquet file
    assert_resumed_to_the_reference(run, reference)


def test_a_full_disk_leaves_no_part_behind_and_says_so(flags, reference, tmp_path, monkeypatch, capsys):
    cache_dir = tmp_path / "cache"
    write_table, calls = pq.write_table, []

    def fills_the_disk(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            with open(where, "wb") as handle:
                handle.write(b"PAR1" + b"\0" * 100)  # some bytes got out before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return write_table(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", fills_the_disk)
    assert main(flags(cache_dir)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rerun the same command" in err
    assert err.splitlines()[-1].startswith(f"error: {cache_dir / 'train' / 'part-00002.parquet'}: could not write "
                                           "(disk full: [Errno 28] No space left on device")
    assert not temp_files(cache_dir) and not (cache_dir / "train" / "part-00002.parquet").exists()
    for path in cache_dir.rglob("part-*.parquet"):
        pq.read_metadata(path)  # every part left is whole
    monkeypatch.setattr(pq, "write_table", write_table)  # space freed
    assert main(flags(cache_dir)) == 0
    assert_same_cache(load_all(cache_dir), reference[0], exact=True)
