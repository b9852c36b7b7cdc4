"""The similarity feature in the cache: when it is built, and its `similarity` column (one float32 per row, null
where the row lacks its text or its image).

Only a cache whose two towers are one CLIP or SigLIP model has it (pipeline.model.similarity); its fingerprint
inputs and its manifest then list "similarity" under `features`. A cache without the key has no such column and
loads as before: no column, no feature. Every other cache's fingerprint is what it was before the feature.
"""

import numpy as np
import pyarrow as pa

from pipeline.model.image_encoder import image_family_of
from pipeline.model.similarity import SIMILARITY, is_same_model_pair
from pipeline.model.text_encoder import family_of

SIMILARITY_COLUMN = SIMILARITY


def similarity_array(values):
    """(N,) float (NaN: none) -> a float32 Arrow column, null where NaN."""
    values = np.asarray(values, dtype=np.float32)
    return pa.array(values, type=pa.float32(), mask=np.isnan(values))


def similarity_values(column):
    """The column back as (N,) float32, NaN where null."""
    return column.to_numpy(zero_copy_only=False).astype(np.float32)  # nulls come back as NaN


def has_similarity(manifest):
    """Whether the cache's parts carry the similarity column (its manifest says so)."""
    features = manifest.get("features")
    return isinstance(features, list) and SIMILARITY in features


def similarity_input(config, inputs):
    """{"features": ["similarity"]} for the fingerprint inputs of a same-model pair (config's pooling and image
    embedding resolved, `inputs` holding the models' content hashes), else nothing."""
    pair = is_same_model_pair(family_of(config.text_model).name, image_family_of(config.clip_model).name,
                              config.pooling, config.clip_embedding,
                              same_content=inputs["text_model"] == inputs["clip_model"], image_lora=config.clip_lora)
    return {"features": [SIMILARITY]} if pair else {}
