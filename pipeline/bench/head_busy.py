"""`head.busy_vs_quiet`: head.seconds_100k beside a CPU-burning neighbour process over without one.

The neighbour is a second Python process spinning on one core for as long as the busy measurement lasts,
as another job on a shared machine would; both measurements use the default training config (`--threads`
auto, pipeline/train/threads.py), in the same run.
"""

import subprocess
import sys
import time

from pipeline.bench.head import seconds_100k


def busy_vs_quiet(rows, quiet_seconds=None):
    """{"seconds_100k_busy", "busy_vs_quiet"}; `quiet_seconds`: head.seconds_100k of this run, if measured."""
    quiet = quiet_seconds if quiet_seconds is not None else seconds_100k(rows=rows)
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # the neighbour is running before the clock starts
        busy = seconds_100k(rows=rows)
    finally:
        neighbour.kill()
        neighbour.wait()
    return {"seconds_100k_busy": round(busy, 2), "busy_vs_quiet": round(busy / quiet, 3)}
