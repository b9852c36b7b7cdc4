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
from pipeline.model.config import HeadConfig

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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}
    save_file(state, folder / WEIGHTS_NAME)
    payload = {"head": asdict(head.config), "extra": extra_config or {}}
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


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
    try:
        config = HeadConfig(**json.loads(config_path.read_text())["head"])
    except (json.JSONDecodeError, KeyError, TypeError, UserError) as error:
        raise UserError(f"{config_path}: not a valid head config ({error}); re-save the head with save_head") from None
    if dims is not None:
        check_dims(config, dims, source=dims_source, head_name=str(folder))
    head = FusionHead(config)
    try:
        head.load_state_dict(load_file(weights_path))
    except RuntimeError as error:
        raise UserError(f"{weights_path}: weights do not fit {config_path} ({error}); re-save the head") from None
    return head.eval()


def check_dims(config, dims, source, head_name="the head"):
    """Raise if the features' widths differ from what the head reads (only its own modalities count)."""
    wrong = [f"{m} is {dims.get(m)} wide but {head_name} expects {config.dims()[m]}"
             for m in config.modalities if dims.get(m) != config.dims()[m]]
    if wrong:
        raise UserError(
            f"{source}: {'; '.join(wrong)}. The head was trained on other encoders' features: "
            "use features from the same encoders, or train a new head on these"
        )
