"""The fusion head: cached (or freshly encoded) embeddings -> two logits (fake, real).

The head consumes exactly the dict that stage one caches and that an end-to-end
model's `encode(batch)` returns, `{"text_emb": (B, Dt), "image_emb": (B, Di)}`,
so training it on the cache and fine-tuning end to end share this one module.
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
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        dims, width = config.dims(), config.proj_dim
        self.projections = nn.ModuleDict({m: _projection(dims[m], width, config.dropout) for m in config.modalities})
        self.fuses = len(config.modalities) == 2
        if self.fuses and config.fusion == "gated":
            # One gate value per dimension, computed from both modalities.
            self.gate = nn.Linear(2 * width, width)
        fused_dim = 2 * width if self.fuses and config.fusion == "concat" else width
        self.classifier = nn.Sequential(
            nn.Linear(fused_dim, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, 2),
        )

    def forward(self, features):
        """{"text_emb": (B, Dt), "image_emb": (B, Di)} -> logits (B, 2); unused modalities are ignored."""
        projected = [self.projections[m](features[f"{m}_emb"]) for m in self.config.modalities]  # each (B, P)
        return self.classifier(self._fuse(projected))

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
    with torch.device("meta"):  # shapes only: nothing is allocated before the file is known to match
        expected = {name: tuple(t.shape) for name, t in FusionHead(config).state_dict().items()}
    _check_safetensors_header(weights_path, expected, config_path)
    head = FusionHead(config)
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


def _check_safetensors_header(path, expected, config_path):
    """The file's header lists exactly the tensors `expected` ({name: shape}), within the file's size."""
    def bad(what):
        raise UserError(f"{path}: {what}; not the weights of {config_path}: re-save the head with save_head")

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
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    shapes = {k: tuple(v.get("shape", ())) if isinstance(v, dict) else None for k, v in tensors.items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if shapes[k] != expected[k])
    if missing or unexpected or wrong:
        found = "; ".join(f"{label} {', '.join(keys[:3])}" for label, keys in
                          (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        bad(f"weights do not fit the config ({found})")


def check_dims(config, dims, source, head_name="the head"):
    """Raise if the features' widths differ from what the head reads (only its own modalities count)."""
    wrong = [f"{m} is {dims.get(m)} wide but {head_name} expects {config.dims()[m]}"
             for m in config.modalities if dims.get(m) != config.dims()[m]]
    if wrong:
        raise UserError(
            f"{source}: {'; '.join(wrong)}. The head was trained on other encoders' features: "
            "use features from the same encoders, or train a new head on these"
        )
