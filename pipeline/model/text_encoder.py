"""The text tower: any Hugging Face BERT-family folder, pooled to one vector per title."""

from torch import nn
from transformers import AutoModel, AutoTokenizer

from pipeline.errors import UserError
from pipeline.model.config import POOLINGS
from pipeline.model.folders import read_config, read_json, refusing_pickled_code


def load_tokenizer(folder):
    read_config(folder, "--text-model")  # refuses auto_map before the library reads the folder
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def load_text_model(folder):
    read_config(folder, "--text-model")
    with refusing_pickled_code(folder, "--text-model"):
        return AutoModel.from_pretrained(folder, trust_remote_code=False)


def check_max_length(folder, max_length):
    """Refuse a --max-length the model has no positions for: the first long title would crash the run."""
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
