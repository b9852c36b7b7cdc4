"""Multimodal (text + image) classification with cached embeddings."""

__version__ = "0.1.0"
