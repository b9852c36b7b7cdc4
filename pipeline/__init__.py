"""Multimodal (text + image) classification with cached embeddings.

`from pipeline import Classifier` loads torch only when `Classifier` is first used,
so `import pipeline` and `python -m pipeline --help` stay fast.
"""

__version__ = "0.1.0"
__all__ = ["Classifier"]


def __getattr__(name):
    if name == "Classifier":
        from pipeline.predict.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
