"""The text tower: any encoder `AutoModel` loads, or CLIP's / SigLIP's own text tower, pooled to one vector per title.

Poolings: `cls` (the first token's state), `mean` (masked mean), `max` (masked
max over tokens), `pooler` (the model's pooled output: BERT's tanh(dense(CLS)),
what a `*ForSequenceClassification` model was fine-tuned through; CLIP's EOS
token; SigLIP's last position through its head), `projected` (CLIP's
`get_text_features`: the EOS token through the text projection). Which ones a
model has, and the inputs its forward takes, come from its family
(`pipeline.model.families`). `auto` resolves per folder (`resolve_pooling`): a
sentence-transformers folder's own pooling, else `pooler` for a sequence
classifier that kept its BERT pooler weights, else the family's own.
"""

import inspect
import json
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModel, AutoTokenizer

from pipeline.errors import UserError
from pipeline.model.config import POOLINGS
from pipeline.model.families import check_pooling, family_lora_targets, text_family
from pipeline.model.folders import (
    check_finite_weights,
    check_loading_info,
    has_weight,
    read_config,
    read_json,
    refusing_pickled_code,
)

_PROBE = "the a of news photo city man dog"  # words any English vocabulary has
# Task heads we drop; `pooler.` is a DeBERTa classifier's ContextPooler (a BERT model's own pooler loads).
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "lm_head.", "pre_classifier.", "score.", "pooler.",
                  "discriminator_predictions.", "generator_predictions.", "generator_lm_head.")  # ELECTRA's


def family_of(folder):
    """The text family of a model folder, from its config.json."""
    return text_family(read_config(folder, "--text-model").get("model_type"))


def text_lora_targets(folder, given=None):
    """The modules `--train-text lora` wraps in the folder's model: `given`, else its family's (PEFT's) default."""
    model_type = read_config(folder, "--text-model").get("model_type")
    return family_lora_targets(text_family(model_type), model_type, given)


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
    # Read by batch.tokenize_titles: every caller gets the padding the family needs from the tokenizer it loaded.
    tokenizer.title_padding = family_of(folder).padding
    return tokenizer


def load_text_model(folder, pooling="cls"):
    family = family_of(folder)
    check_pooling(family, pooling, folder)
    with refusing_pickled_code(folder, "--text-model"):
        if family.is_tower_of_two:
            model = _load_text_tower(folder, family, pooling)
        else:
            model, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
            # The pooler is used only by `pooler` pooling (then it must load); task heads are dropped.
            check_loading_info(info, f"--text-model {folder}",
                               ignore_missing=() if pooling == "pooler" else ("pooler.",),
                               ignore_unexpected=_HEAD_PREFIXES)
    if pooling == "pooler" and not family.is_tower_of_two and getattr(model, "pooler", None) is None:
        valid = ", ".join(p for p in family.poolings if p != "pooler")
        raise UserError(f"--pooling pooler: the text model {folder} ({type(model).__name__}) has no pooler; "
                        f"use --pooling auto or one of: {valid}")
    check_finite_weights(model, f"--text-model {folder}")
    return model


def _load_text_tower(folder, family, pooling):
    """The text half of a two-tower model (CLIP, SigLIP) as its own tower class, so that exporting, LoRA and the
    weights checks see the text tower alone. From a whole model's folder the text half is copied out: loading the
    tower class from it would re-initialise the projection (transformers 5, as for CLIP's vision half)."""
    name = f"--text-model {folder}"
    tower_class = getattr(transformers, family.tower_class)
    if read_config(folder, "--text-model").get("model_type") == family.whole_model_type:
        whole, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
        parts = tuple(f"{attr}." for attr in (family.whole_text, family.projection) if attr)
        check_loading_info(info, name, only=parts)  # the image half is not used
        text_config = whole.config.text_config
        if family.projection:
            text_config.projection_dim = getattr(whole, family.projection).out_features
        tower = tower_class(text_config)
        transformer = getattr(tower, family.transformer) if family.transformer else tower
        transformer.load_state_dict(getattr(whole, family.whole_text).state_dict())
        if family.projection:
            getattr(tower, family.projection).load_state_dict(getattr(whole, family.projection).state_dict())
        return tower.eval()
    tower, info = tower_class.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
    no_projection = family.projection and any(str(key).startswith(f"{family.projection}.")
                                              for key in info.get("missing_keys", ()))
    if no_projection and pooling == "projected":
        raise UserError(f"--pooling projected: the text model {folder} has no {family.projection} weights; "
                        f"use --pooling auto or one of: {', '.join(p for p in family.poolings if p != 'projected')}")
    check_loading_info(info, name, ignore_missing=(f"{family.projection}.",) if no_projection else ())
    return tower


def check_max_length(folder, max_length, tokenizer=None, source="--max-length"):
    """Refuse a --max-length the model has no positions for (the first long title would crash the run),
    or one that leaves no room for a single real token beside the special ones; `source` names where the
    value came from (a flag, or a run's record)."""
    if tokenizer is not None:
        needed = tokenizer.num_special_tokens_to_add() + 1
        if max_length < needed:
            raise UserError(f"{source} {max_length}: too short to hold one word of a title beside the "
                            f"{needed - 1} special tokens; use --max-length {needed} or more (default 128)")
    config = read_config(folder, "--text-model")
    family = text_family(config.get("model_type"))
    if family.config_key and isinstance(config.get(family.config_key), dict):
        config = config[family.config_key]  # a whole CLIP / SigLIP folder: the text tower's own positions
    limits = [config.get("max_position_embeddings"),
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
    """(pooling, why): `pooling` itself unless it is `auto`; then what the folder says its model was trained with,
    else its family's own. A pooling the family cannot give is an error listing those it can."""
    config = read_config(folder, "--text-model")
    family = text_family(config.get("model_type"))
    if pooling != "auto":
        check_pooling(family, pooling, folder)
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
    architectures = [str(name) for name in config.get("architectures") or []]
    if family.is_tower_of_two:
        if family.auto == "projected" and config.get("model_type") != family.whole_model_type and not any(
                name.endswith("WithProjection") for name in architectures):
            return "pooler", f"a {family.name} text tower saved without its projection"
        return family.auto, f"the {family.name} text tower's own embedding"
    if ("pooler" in family.poolings and any(name.endswith("ForSequenceClassification") for name in architectures)
            and _has_pooler(folder)):
        return "pooler", f"{architectures[0]} with pooler weights"
    return family.auto, "no sentence-transformers pooling and no trained pooler"


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
    return has_weight(folder, "pooler.dense.weight")


def pool(hidden, attention_mask, pooling):
    """(B, T, H) token states -> (B, H) by `cls`, `mean` or `max` (the model's own poolings: TextEncoder)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if pooling == "max":  # padding can never win: it is set to the lowest value first
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class TextEncoder(nn.Module):
    def __init__(self, model, pooling="cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.family = text_family(model.config.model_type)
        if pooling not in self.family.poolings:
            raise ValueError(f"{pooling} pooling is not one of the {self.family.name} family's {self.family.poolings}")
        if pooling == "pooler" and not self.family.is_tower_of_two and getattr(model, "pooler", None) is None:
            raise ValueError("pooler pooling needs a model with a pooler")
        self.model = model
        self.pooling = pooling
        # Only the inputs its forward names: DistilBERT's and CLIP's take no token_type_ids (fixed before LoRA
        # wraps the model, whose forward takes anything).
        accepted = inspect.signature(self._transformer().forward).parameters
        self.input_names = tuple(name for name in self.family.inputs if name in accepted)

    @property
    def dim(self):
        config = self.model.config
        if self.pooling == "projected":
            return getattr(self.model, self.family.projection).out_features
        if self.pooling == "pooler" and self.family.is_tower_of_two:
            return getattr(config, "projection_size", None) or config.hidden_size  # SigLIP's head may resize
        return config.hidden_size

    def _transformer(self):
        """What returns last_hidden_state and pooler_output: the model itself, or a two-tower's text transformer."""
        return getattr(self.model, self.family.transformer) if self.family.transformer else self.model

    def forward(self, input_ids, attention_mask, **more_inputs):
        """(B, T) token ids and mask (and token_type_ids for the families that take them) -> (B, D)."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, **more_inputs}
        output = self._transformer()(**{name: given[name] for name in self.input_names if given.get(name) is not None})
        if self.pooling == "projected":  # CLIP's get_text_features
            return getattr(self.model, self.family.projection)(output.pooler_output)
        if self.pooling == "pooler":
            return output.pooler_output  # BERT: tanh(dense(CLS)); CLIP: the EOS token; SigLIP: last position, head
        return pool(output.last_hidden_state, attention_mask, self.pooling)
