"""Classify new posts with a trained run: `python -m pipeline predict` and `pipeline.Classifier`."""
