"""The fusion head: cached (or freshly encoded) embeddings -> K logits, one per class (K = 2: fake, real).

The head consumes exactly the dict that stage one caches and that an end-to-end
model's `encode(batch)` returns, `{"text_emb": (B, Dt), "image_emb": (B, Di)}`,
so training it on the cache and fine-tuning end to end share this one module.

A post may lack a modality (a dead image link, an empty title): the dict then
also carries `has_text` / `has_image` (B,) bool masks, and the head puts a
learned "missing" vector (one per modality, in the projection space) where a
projection would be. Modality dropout in training (`drop_modalities`) teaches
a two-modality head to score a row from either half. Heads saved before this
existed have no missing vectors: they still load and score whole rows, and
refuse a row with a modality missing.
A head with extra features (`HeadConfig.features`: the text-image similarity,
pipeline.model.similarity) also reads them from the dict, one (B,) value each,
beside the fused embeddings; heads saved before them read none.
A checkpoint folder holds `model.safetensors` and `head_config.json`, so it
loads without flags.
"""

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import UserError
from pipeline.files import output_folder, write_atomic, write_json_atomic
from pipeline.model.config import HeadConfig
from pipeline.model.folders import check_finite_weights

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "head_config.json"


def _projection(in_dim, out_dim, dropout):
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))


class FusionHead(nn.Module):
    def __init__(self, config: HeadConfig, missing_vectors=True):
        super().__init__()
        self.config = config
        dims, width = config.dims(), config.proj_dim
        self.projections = nn.ModuleDict({m: _projection(dims[m], width, config.dropout) for m in config.modalities})
        # Zeros at first: a missing modality starts out contributing nothing; training moves them.
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(width)) for m in config.modalities}) \
            if missing_vectors else None
        self.fuses = len(config.modalities) == 2
        if self.fuses and config.fusion == "gated":
            # One gate value per dimension, computed from both modalities.
            self.gate = nn.Linear(2 * width, width)
        fused_dim = 2 * width if self.fuses and config.fusion == "concat" else width
        self.extras = len(config.features)  # extra features (similarity), projected beside the fused vector
        if self.extras:
            # Standardised by the training rows' mean and spread (set_feature_scale), so that a cosine that varies
            # in the second decimal is a unit-sized input from the first step; then widened to P values of their
            # own (no LayerNorm: over one input it would keep the sign and drop the magnitude), so that one
            # number weighs beside 2P fused ones instead of being 1 input in 2P + 1.
            self.register_buffer("feature_shift", torch.zeros(self.extras))
            self.register_buffer("feature_scale", torch.ones(self.extras))
            self.extra_projection = nn.Sequential(nn.Linear(self.extras, width), nn.GELU())
        fused_dim += width if self.extras else 0
        self.classifier = nn.Sequential(
            nn.Linear(fused_dim, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.num_classes),
        )

    @property
    def supports_missing(self):
        """Whether rows with a modality missing can be scored (heads saved before missing vectors cannot)."""
        return self.missing is not None

    def forward(self, features):
        """{"text_emb": (B, Dt), "image_emb": (B, Di)[, "has_text", "has_image": (B,) bool]} -> logits (B, K).

        Unused modalities are ignored; without a `has_*` mask every row has that modality.
        """
        projected = []
        for m in self.config.modalities:
            vectors = self.projections[m](features[f"{m}_emb"])  # (B, P)
            present = features.get(f"has_{m}")
            if present is not None:
                if self.missing is None:
                    if not bool(present.all()):
                        raise UserError(f"this head has no missing-{m} vector (it was saved before heads learned "
                                        f"missing modalities): it cannot score rows without a {m}; train it again")
                else:
                    fill = self.missing[m].to(vectors.dtype).expand_as(vectors)
                    vectors = torch.where(present.to(torch.bool).unsqueeze(1), vectors, fill)
            projected.append(vectors)
        fused = self._fuse(projected)
        if self.extras:
            extra = self.extra_projection(self._extra_features(features).to(fused.dtype))  # (B, P)
            fused = torch.cat([fused, extra], dim=1)  # (B, F + P)
        return self.classifier(fused)

    def _extra_features(self, features):
        """(B, E) standardised extra features; 0 (the training mean) where a row has none: a NaN (no text or no
        image when it was embedded) or a half cleared by a `has_*` mask (modality dropout, a half-post), since
        the similarity needs both halves."""
        absent = [name for name in self.config.features if name not in features]
        if absent:
            raise UserError(f"this head reads the extra feature {', '.join(absent)} beside the embeddings, and the "
                            f"features given lack it; score it on a cache that has it (see docs/your-data.md)")
        values = torch.stack([features[name].float() for name in self.config.features], dim=1)  # (B, E)
        values = (values - self.feature_shift) / self.feature_scale
        usable = ~torch.isnan(values)
        for m in ("text", "image"):
            present = features.get(f"has_{m}")
            if present is not None:
                usable &= present.to(torch.bool).unsqueeze(1)
        return torch.where(usable, values, torch.zeros_like(values))

    def _fuse(self, projected):
        if not self.fuses:
            return projected[0]
        text, image = projected
        kind = self.config.fusion
        if kind == "concat":
            return torch.cat([text, image], dim=1)  # (B, 2P)
        if kind == "max":
            return torch.maximum(text, image)
        if kind == "mean":
            return (text + image) / 2
        gate = torch.sigmoid(self.gate(torch.cat([text, image], dim=1)))  # (B, P) in (0, 1)
        return gate * text + (1 - gate) * image


@torch.no_grad()
def set_feature_scale(head, values):
    """Standardise the head's extra features by `values` ((N, E) float, NaN where a row has none; the training
    rows'): their mean and standard deviation (1 where they do not vary)."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1, head.extras)
    for column in range(head.extras):
        known = values[:, column][~torch.isnan(values[:, column])]
        mean = known.mean() if len(known) else torch.zeros((), dtype=torch.float64)
        spread = known.std() if len(known) > 1 else torch.ones((), dtype=torch.float64)
        head.feature_shift[column] = float(mean)
        head.feature_scale[column] = float(spread) if float(spread) > 1e-8 else 1.0


def drop_modalities(features, probability, generator=None):
    """Modality dropout for training: each row that has both modalities loses one of them (text or image,
    evenly) with `probability`, by clearing its `has_*` mask; the vectors are left as they are. `features`
    needs `has_text` or `text_emb` (for the row count); other keys (e.g. a batch's input_ids) pass through."""
    reference = features["has_text"] if "has_text" in features else features["text_emb"]
    rows, device = reference.shape[0], reference.device
    has_text = features.get("has_text", torch.ones(rows, dtype=torch.bool, device=device)).to(torch.bool)
    has_image = features.get("has_image", torch.ones(rows, dtype=torch.bool, device=device)).to(torch.bool)
    if probability <= 0:
        return {**features, "has_text": has_text, "has_image": has_image}
    draws = torch.rand(rows, 2, generator=generator).to(device)  # (B, 2): drop?, which
    drop = (draws[:, 0] < probability) & has_text & has_image
    drop_text = drop & (draws[:, 1] < 0.5)
    return {**features, "has_text": has_text & ~drop_text, "has_image": has_image & ~(drop & ~drop_text)}


def save_head(folder, head, extra_config=None):
    """Write `model.safetensors` and `head_config.json` (the HeadConfig plus `extra_config`, e.g. training setup)."""
    folder = output_folder(folder, "head folder")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}
    write_atomic(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    write_json_atomic(folder / CONFIG_NAME, {"head": asdict(head.config), "extra": extra_config or {}})


def load_head(folder, dims=None, dims_source="the features"):
    """Rebuild a saved head in eval mode.

    `dims` ({"text": Dt, "image": Di}, e.g. a cache manifest's) is checked against
    the head before any weights are read; `dims_source` names it in the error.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"{path}: missing, so {folder} is not a head checkpoint; point at a run's head/ folder")
    config = _read_head_config(config_path)
    if dims is not None:
        check_dims(config, dims, source=dims_source, head_name=str(folder))
    tensors = _read_safetensors_header(weights_path, config_path)
    # A head saved before missing vectors existed has no `missing.*` tensors: it loads without them.
    missing_vectors = any(name.startswith("missing.") for name in tensors)
    with torch.device("meta"):  # shapes only: nothing is allocated before the file is known to match
        expected = {name: tuple(t.shape) for name, t in FusionHead(config, missing_vectors).state_dict().items()}
    _check_tensor_shapes(weights_path, tensors, expected, config_path)
    head = FusionHead(config, missing_vectors)
    try:
        state = load_file(weights_path)
        head.load_state_dict(state)
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise UserError(f"{weights_path}: weights do not fit {config_path} ({str(error)[:200]}); "
                        "re-save the head") from None
    check_finite_weights(head, str(weights_path))
    return head.eval()


MAX_WIDTH = 1 << 16  # caps every width a head config can ask for (a 1.5 TB head is a typo, not a model)
_MAX_HEADER = 1 << 24  # a head's safetensors header is a few kB


def _read_head_config(path):
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("head"), dict):
            raise TypeError("expected an object with a 'head' object")
        config = HeadConfig(**payload["head"])
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, UserError) as error:
        raise UserError(f"{path}: not a valid head config ({str(error).strip()}); "
                        "re-save the head with save_head") from None
    too_wide = [f"{name} {getattr(config, name)}" for name in ("text_dim", "image_dim", "proj_dim", "hidden_dim")
                if getattr(config, name) > MAX_WIDTH]
    if too_wide:
        raise UserError(f"{path}: {', '.join(too_wide)} above {MAX_WIDTH}: not a head this tool saved; "
                        "re-save the head with save_head")
    return config


def _not_the_weights(path, config_path, what):
    raise UserError(f"{path}: {what}; not the weights of {config_path}: re-save the head with save_head")


def _read_safetensors_header(path, config_path):
    """{tensor name: entry} of a safetensors file's header, checked to lie within the file."""
    def bad(what):
        _not_the_weights(path, config_path, what)

    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > min(size - 8, _MAX_HEADER):
            bad(f"corrupt safetensors header (says {length} bytes, the file has {size})")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad("corrupt safetensors header (not JSON)")
    if not isinstance(header, dict):
        bad("corrupt safetensors header (not an object)")
    return {k: v for k, v in header.items() if k != "__metadata__"}


def _check_tensor_shapes(path, tensors, expected, config_path):
    """The header's `tensors` are exactly those `expected` ({name: shape})."""
    shapes = {k: tuple(v.get("shape", ())) if isinstance(v, dict) else None for k, v in tensors.items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if shapes[k] != expected[k])
    if missing or unexpected or wrong:
        found = "; ".join(f"{label} {', '.join(keys[:3])}" for label, keys in
                          (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        _not_the_weights(path, config_path, f"weights do not fit the config ({found})")


def check_dims(config, dims, source, head_name="the head"):
    """Raise if the features' widths differ from what the head reads (only its own modalities count)."""
    wrong = [f"{m} is {dims.get(m)} wide but {head_name} expects {config.dims()[m]}"
             for m in config.modalities if dims.get(m) != config.dims()[m]]
    if wrong:
        raise UserError(
            f"{source}: {'; '.join(wrong)}. The head was trained on other encoders' features: "
            "use features from the same encoders, or train a new head on these"
        )
