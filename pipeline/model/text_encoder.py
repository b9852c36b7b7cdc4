"""The text tower: any Hugging Face BERT-family folder, pooled to one vector per title."""

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


def load_text_model(folder):
    read_config(folder, "--text-model")
    with refusing_pickled_code(folder, "--text-model"):
        model, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
    # The pooler is never used (cls pooling reads the hidden state), and task heads are dropped.
    check_loading_info(info, f"--text-model {folder}", ignore_missing=("pooler.",), ignore_unexpected=_HEAD_PREFIXES)
    check_finite_weights(model, f"--text-model {folder}")
    return model


def check_max_length(folder, max_length, tokenizer=None):
    """Refuse a --max-length the model has no positions for (the first long title would crash the run),
    or one that leaves no room for a single real token beside the special ones."""
    if tokenizer is not None:
        needed = tokenizer.num_special_tokens_to_add() + 1
        if max_length < needed:
            raise UserError(f"--max-length {max_length}: too short to hold one word of a title beside the "
                            f"{needed - 1} special tokens; use --max-length {needed} or more (default 128)")
    limits = [read_config(folder, "--text-model").get("max_position_embeddings"),
              read_json(f"{folder}/tokenizer_config.json").get("model_max_length")]
    limit = min((int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < 1e9), default=None)
    if limit is not None and max_length > limit:
        raise UserError(f"--max-length {max_length}: the text model {folder} takes at most {limit} tokens; "
                        f"use --max-length {limit} or less")


def pool(hidden, attention_mask, pooling):
    """(B, T, H) token states -> (B, H): the [CLS] state or the masked mean."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class TextEncoder(nn.Module):
    def __init__(self, model, pooling="cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.model = model
        self.pooling = pooling

    @property
    def dim(self):
        return self.model.config.hidden_size

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
        ).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)
