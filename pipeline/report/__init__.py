"""The report: one self-contained HTML page per run folder or ablation folder (no network, images inline)."""
