"""The text-image similarity feature: the cosine of one CLIP (or SigLIP) model's projected text and image vectors.

FND-CLIP (arXiv 2205.14304) adds CLIP's text-image similarity to the fused features of a fake-news classifier;
out-of-context work finds it a strong signal on its own. It only means something when both vectors live in the
one space the model was trained to align, so stage one computes it only for a *same-model pair*:

- the text and image towers are the same folder's content (one CLIPModel or SiglipModel folder given as
  both --text-model and --image-model),
- the text tower pools as `get_text_features` does (CLIP: `projected`, SigLIP: `pooler`) and the image tower
  embeds as `get_image_features` does (CLIP: `projected`, SigLIP: `pooled`),
- and no image LoRA is merged: a LoRA trained for this task moves the image tower out of the space its text
  tower was aligned with, so the cosine would no longer be the model's own similarity (docs/your-data.md).

Then the cached vectors *are* get_text_features / get_image_features, and the cosine of them is the model's
similarity (before its logit scale). No torch here: stage one, train-head and predict share these few lines.
"""

import numpy as np

SIMILARITY = "similarity"
FEATURES = (SIMILARITY,)  # the extra per-row features a head can read beside the embeddings (`--features`)
# family -> (text pooling, image embedding) that give get_text_features / get_image_features
PROJECTED = {"clip": ("projected", "projected"), "siglip": ("pooler", "pooled")}
SUMMARY_NAME = "similarity.json"  # a run folder's summary of the feature per split and class, for the report
SAME_MODEL_HINT = ("embed with one CLIP or SigLIP folder as both --text-model and --image-model (pooling and "
                   "image embedding auto, no --image-lora)")


def is_same_model_pair(text_family, image_family, pooling, embedding, same_content, image_lora):
    """Whether the two towers' vectors are one model's projected pair (see the module's docstring)."""
    wanted = PROJECTED.get(text_family)
    return (wanted is not None and text_family == image_family and same_content and not image_lora
            and (pooling, embedding) == wanted)


def cosine_similarity(text, image, has_text=None, has_image=None):
    """(N,) float32 cosine of each row's text and image vector ((N, Dt), (N, Di), Dt = Di), NaN where a row lacks
    either half (or a vector is all zeros). Computed in float64 and rounded once, so that the cache's value and
    predict's agree to the last float32 bit for the same vectors."""
    text, image = np.asarray(text, dtype=np.float64), np.asarray(image, dtype=np.float64)
    rows = len(text)
    present = np.ones(rows, bool)
    for mask in (has_text, has_image):
        if mask is not None:
            present &= np.asarray(mask, dtype=bool)
    norms = np.linalg.norm(text, axis=1) * np.linalg.norm(image, axis=1)
    present &= norms > 0
    values = np.full(rows, np.nan)
    values[present] = np.einsum("nd,nd->n", text[present], image[present]) / norms[present]
    return values.astype(np.float32)


def check_features(features):
    """`features` (HeadConfig.features) as known names, or the problem to report."""
    unknown = [name for name in features if name not in FEATURES]
    if unknown or len(set(features)) != len(features):
        return (f"--features {','.join(features)}: not a set of extra features; give {', '.join(FEATURES)} "
                "(comma-separated, without repeats) or leave it out")
    return None
