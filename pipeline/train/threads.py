"""How many torch CPU threads the head trains with: `--threads 0` (auto) means one on the CPU.

The head's work is small matrix products (a mini-batch times 1280 features, a few hundred hidden units),
where a second OpenMP thread gains little on a quiet machine and loses everything on a busy one: each
product waits at a barrier for the slowest thread, and a thread descheduled by a neighbour process makes
them all wait. Measured on this project's shared 2-core machine (20,000 rows to early stopping, other work
running): one thread 17.8 s alone and 35.8 s beside a CPU-burning process; two threads 165 s and 255 s.
See docs/benchmarks.md (`head.busy_vs_quiet`).
"""

AUTO_CPU_THREADS = 1


def head_threads(requested, device):
    """The thread count to set, or None to leave torch's as it is (a GPU trains the head)."""
    if requested:
        return requested
    return AUTO_CPU_THREADS if device.type == "cpu" else None
