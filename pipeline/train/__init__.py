"""Stage two: train and compare fusion heads on the cache (fit, ablate, losses, metrics, run folder, plots)."""
