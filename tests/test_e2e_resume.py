"""End-to-end fine-tuning killed with SIGKILL after a checkpoint resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.__main__ import main

pytestmark = pytest.mark.slow


def e2e_args(tiny_bert, tiny_clip, dataset, out):
    return ["finetune-e2e", "--data-dir", str(dataset), "--text-model", str(tiny_bert), "--clip-model",
            str(tiny_clip), "--num-workers", "0", "--device", "cpu", "--out", str(out), "--batch-size", "4",
            "--max-epochs", "3", "--patience", "5", "--train-text", "full", "--seed", "5"]


def kill_after_first_checkpoint(args, folder, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if list(folder.glob("checkpoints/checkpoint-*/trainer_state.json")):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_bert, tiny_clip, dataset, tmp_path, capsys):
    assert main(e2e_args(tiny_bert, tiny_clip, dataset, tmp_path / "whole")) == 0
    killed = tmp_path / "killed"
    args = e2e_args(tiny_bert, tiny_clip, dataset, killed)
    assert kill_after_first_checkpoint(args, killed) == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    assert main(args) == 2  # a second run without --resume (or --overwrite) is refused
    assert "--resume to continue its checkpoints" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert f"resuming {killed} from {killed / 'checkpoints' / 'checkpoint-'}" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    for split in ("val", "test"):
        assert resumed[split]["loss"] == pytest.approx(whole[split]["loss"], abs=1e-5)
        assert resumed[split]["confusion_matrix"] == whole[split]["confusion_matrix"]
