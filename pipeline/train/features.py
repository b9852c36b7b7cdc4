"""`--features`: the extra per-row features a head reads beside the embeddings, checked against the cache,
handed to the head, and summarised per class for the report.

Today the one feature is `similarity` (pipeline.model.similarity): a cache has it only when one CLIP or SigLIP
model was both towers, and its manifest says so.
"""

import numpy as np
import torch

from pipeline.data.splits import CLASS_NAMES
from pipeline.embed.similarity import has_similarity
from pipeline.errors import UserError
from pipeline.files import write_json_atomic
from pipeline.model.head import set_feature_scale
from pipeline.model.similarity import SAME_MODEL_HINT, SIMILARITY, SUMMARY_NAME

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
BINS = 10


def check_cache_features(manifest, features, cache_dir):
    """Refuse `--features` the cache lacks, saying how to build a cache that has them."""
    if SIMILARITY in features and not has_similarity(manifest):
        raise UserError(f"--features similarity: the cache {cache_dir} has no similarity column (its manifest lists "
                        f"no 'similarity' under features: its text and image towers are not one CLIP or SigLIP "
                        f"model, or it was built before the feature); {SAME_MODEL_HINT}, into a new --cache-dir, "
                        "or leave --features out")


def feature_tensors(split, device):
    """{"similarity": (N,) float32 tensor} when the split has the column, else {} (the head reads what it needs)."""
    if split.similarity is None:
        return {}
    return {SIMILARITY: torch.from_numpy(split.similarity).to(device)}


def scale_features(head, train_split):
    """Standardise the head's extra features by the training rows' values (a no-op for a head without any)."""
    if head.extras:
        columns = [getattr(train_split, name) for name in head.config.features]
        set_feature_scale(head, np.stack(columns, axis=1))


def write_similarity_summary(out, splits):
    """similarity.json: per split and class, the rows, the rows without a similarity, quantiles and a histogram
    over the range of all rows' values; returns the summary (None when the splits have no similarity)."""
    if any(split.similarity is None for split in splits.values()):
        return None
    known = np.concatenate([split.similarity[~np.isnan(split.similarity)] for split in splits.values()])
    low, high = (float(known.min()), float(known.max())) if len(known) else (-1.0, 1.0)
    edges = np.linspace(low, high, BINS + 1)
    summary = {"quantiles": list(QUANTILES), "bin_edges": [float(e) for e in edges], "splits": {}}
    for name, split in splits.items():
        summary["splits"][name] = {}
        for label in sorted(set(split.labels.tolist())):
            class_name = CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else f"class_{label}"
            values = split.similarity[split.labels == label]
            present = values[~np.isnan(values)]
            summary["splits"][name][class_name] = {
                "rows": int(len(values)), "missing": int(len(values) - len(present)),
                "quantiles": [float(q) for q in np.quantile(present, QUANTILES)] if len(present) else None,
                "mean": float(present.mean()) if len(present) else None,
                "histogram": [int(c) for c in np.histogram(present, bins=edges)[0]],
            }
    write_json_atomic(out / SUMMARY_NAME, summary)
    return summary
