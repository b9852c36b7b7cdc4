"""The text tower: any Hugging Face BERT-family folder, pooled to one vector per title.

Poolings: `cls` (the first token's state), `mean` (masked mean), `max` (masked
max over tokens), `pooler` (BERT's pooler: tanh(dense(CLS)), what a
`*ForSequenceClassification` model was fine-tuned through). `auto` resolves
per folder (`resolve_pooling`): a sentence-transformers folder's own pooling,
else `pooler` for a sequence classifier that kept its pooler weights, else `cls`.
"""

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from pipeline.errors import UserError
from pipeline.model.config import POOLINGS
from pipeline.model.folders import (
    check_finite_weights,
    check_loading_info,
    read_config,
    read_json,
    refusing_pickled_code,
)

_PROBE = "the a of news photo city man dog"  # words any English vocabulary has
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "lm_head.", "pre_classifier.", "score.")  # task heads we drop


def load_tokenizer(folder):
    """The folder's tokenizer; an error when it has none that knows ordinary words (every title would be [UNK])."""
    read_config(folder, "--text-model")  # refuses auto_map before the library reads the folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise UserError(f"--text-model {folder}: no usable tokenizer ({str(error).splitlines()[0][:200]}); "
                        "save the tokenizer beside the weights (tokenizer.save_pretrained)") from None
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    if not ids or all(i == tokenizer.unk_token_id for i in ids):
        raise UserError(f"--text-model {folder}: the tokenizer turns ordinary words into [UNK] (no vocabulary "
                        "files?); save the tokenizer beside the weights (tokenizer.save_pretrained)")
    return tokenizer


def load_text_model(folder, pooling="cls"):
    read_config(folder, "--text-model")
    with refusing_pickled_code(folder, "--text-model"):
        model, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
    # The pooler is used only by `pooler` pooling (then it must load); task heads are dropped.
    check_loading_info(info, f"--text-model {folder}", ignore_missing=() if pooling == "pooler" else ("pooler.",),
                       ignore_unexpected=_HEAD_PREFIXES)
    if pooling == "pooler" and getattr(model, "pooler", None) is None:
        raise UserError(f"--pooling pooler: the text model {folder} ({type(model).__name__}) has no pooler; "
                        "use --pooling cls, mean or max")
    check_finite_weights(model, f"--text-model {folder}")
    return model


def check_max_length(folder, max_length, tokenizer=None, source="--max-length"):
    """Refuse a --max-length the model has no positions for (the first long title would crash the run),
    or one that leaves no room for a single real token beside the special ones; `source` names where the
    value came from (a flag, or a run's record)."""
    if tokenizer is not None:
        needed = tokenizer.num_special_tokens_to_add() + 1
        if max_length < needed:
            raise UserError(f"{source} {max_length}: too short to hold one word of a title beside the "
                            f"{needed - 1} special tokens; use --max-length {needed} or more (default 128)")
    limits = [read_config(folder, "--text-model").get("max_position_embeddings"),
              read_json(f"{folder}/tokenizer_config.json").get("model_max_length")]
    limit = min((int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < 1e9), default=None)
    if limit is not None and max_length > limit:
        raise UserError(f"{source} {max_length}: the text model {folder} takes at most {limit} tokens; "
                        f"use {source} {limit} or less" if source == "--max-length" else
                        f"{source} {max_length}: the text model {folder} takes at most {limit} tokens; give the "
                        "text model the run was trained with (--text-model)")


_ST_MODES = (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
             ("pooling_mode_max_tokens", "max"))  # sentence-transformers' 1_Pooling/config.json keys


def resolve_pooling(folder, pooling="auto"):
    """(pooling, why): `pooling` itself unless it is `auto`; then what the folder says its model was trained with."""
    if pooling != "auto":
        return pooling, "given"
    folder = Path(folder)
    modules = _read_modules(folder / "modules.json")
    if modules:
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                settings = read_json(folder / str(module.get("path", "")) / "config.json")
                if settings.get("pooling_mode") in ("mean", "cls", "max"):
                    return settings["pooling_mode"], f"sentence-transformers {module.get('path')}/config.json"
                for key, name in _ST_MODES:
                    if settings.get(key) is True:
                        return name, f"sentence-transformers {module.get('path')}/config.json"
    architectures = read_config(folder, "--text-model").get("architectures") or []
    if any(str(name).endswith("ForSequenceClassification") for name in architectures) and _has_pooler(folder):
        return "pooler", f"{architectures[0]} with pooler weights"
    return "cls", "no sentence-transformers pooling and no trained pooler"


def _read_modules(path):
    """sentence-transformers' modules.json (a list of {type, path}); [] when absent."""
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}); fix it or pass --pooling explicitly") from None
    return modules if isinstance(modules, list) else []


def _has_pooler(folder):
    """Whether the folder's weights hold a pooler (`*pooler.dense.weight`), read from headers only."""
    names = []
    index = read_json(folder / "model.safetensors.index.json")
    if isinstance(index.get("weight_map"), dict):
        names = list(index["weight_map"])
    elif (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            names = list(handle.keys())
    elif (folder / "pytorch_model.bin").is_file():
        names = list(torch.load(folder / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True))
    return any(name.endswith("pooler.dense.weight") for name in names)


def pool(hidden, attention_mask, pooling, pooler=None):
    """(B, T, H) token states -> (B, H) by `pooling` (see the module's docstring); `pooler` is the model's."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "pooler":
        return pooler(hidden)  # BertPooler: tanh(dense(hidden[:, 0]))
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if pooling == "max":  # padding can never win: it is set to the lowest value first
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class TextEncoder(nn.Module):
    def __init__(self, model, pooling="cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if pooling == "pooler" and getattr(model, "pooler", None) is None:
            raise ValueError("pooler pooling needs a model with a pooler")
        self.model = model
        self.pooling = pooling

    @property
    def dim(self):
        return self.model.config.hidden_size

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
        ).last_hidden_state
        return pool(hidden, attention_mask, self.pooling, getattr(self.model, "pooler", None))
