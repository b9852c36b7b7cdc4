"""torchrun on CPU (gloo, two processes): sharded stage one and distributed end-to-end fine-tuning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_same_cache, load_all, with_flag, write_split

from pipeline.__main__ import main
from pipeline.embed import cache

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def torchrun(args, processes=2, **kwargs):
    """`torchrun --standalone --nproc_per_node N -m pipeline ARGS` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "pipeline", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kwargs)


def kill_everything_running(marker):
    """SIGKILL torchrun and its workers (they run in sessions of their own): every process whose
    command line names `marker`, as a crashed node would leave them."""
    killed = set()
    for _ in range(50):
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    # A dying process loses its command line (its memory) before its files: until it is gone or a zombie it
    # may still hold the cache's lock, and a rerun started at once would be told another run is writing.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_still_exiting(pid) for pid in killed):
        time.sleep(0.02)


def _still_exiting(pid):
    try:
        return "\nState:\tZ" not in (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False  # gone


def _cmdline_has(proc, marker):
    try:
        return marker in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def test_two_processes_give_the_one_process_cache(embed_args, tmp_path):
    single = with_flag(embed_args, "--cache-dir", str(tmp_path / "single"))
    assert main(single) == 0
    code, output = finish(torchrun(embed_args))
    assert code == 0, output
    manifest = cache.read_manifest(tmp_path / "cache")
    assert manifest["config"]["timings"]["processes"] == 2
    assert_same_cache(load_all(tmp_path / "cache"), load_all(tmp_path / "single"))
    assert manifest["splits"] == cache.read_manifest(tmp_path / "single")["splits"]


def test_killed_two_process_run_resumes_with_one_process(embed_args, tmp_path):
    reference = with_flag(embed_args, "--cache-dir", str(tmp_path / "reference"))
    assert main(reference) == 0
    process = torchrun(embed_args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if list((tmp_path / "cache").glob("*/part-*.parquet")):
            kill_everything_running(str(tmp_path / "cache"))
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert not (tmp_path / "cache" / cache.MANIFEST_NAME).exists()
    assert main(embed_args) == 0
    assert_same_cache(load_all(tmp_path / "cache"), load_all(tmp_path / "reference"))


def test_one_failing_rank_fails_the_run_with_its_error(embed_args, dataset):
    # Rows 8-15 of train form part 1, which rank 1 embeds: only rank 1 meets the missing image.
    (dataset / "images" / "tr0009.jpg").unlink()
    started = time.monotonic()
    code, output = finish(torchrun(embed_args + ["--on-bad-image", "fail"]), timeout=180)
    assert code != 0
    assert "error: " in output and "train.tsv: line 11" in output and "missing file" in output
    assert time.monotonic() - started < 170  # failed, did not hang at a barrier


def test_two_process_fine_tuning_evaluates_every_row_once(tiny_bert, tiny_clip, dataset, tmp_path):
    # 9 validation rows: not a multiple of 2 processes x batch size, so the sampler must pad and drop.
    rows = pd.read_csv(dataset / "val.tsv", sep="\t").to_dict("records")
    write_split(dataset, "val", rows + [{**rows[0], "id": "va9999"}])
    out = tmp_path / "e2e"
    args = ["finetune-e2e", "--data-dir", str(dataset), "--text-model", str(tiny_bert), "--clip-model",
            str(tiny_clip), "--out", str(out), "--device", "cpu", "--num-workers", "0", "--batch-size", "4",
            "--eval-batch-size", "4", "--max-epochs", "2", "--train-text", "frozen"]
    code, output = finish(torchrun(args), timeout=400)
    assert code == 0, output
    predictions = pd.read_csv(out / "predictions_val.csv", dtype={"id": str})
    assert sorted(predictions["id"]) == sorted(r["id"] for r in rows) + ["va9999"]
    assert json.loads((out / "metrics.json").read_text())["val"]["rows"] == 9
    assert output.count("run folder:") == 1  # rank 0 alone writes the folder and the exports
    assert (out / "export" / "clip_lora" / "adapter_config.json").is_file()
