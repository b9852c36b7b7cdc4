"""One model for both ways of training: a text encoder and an image encoder (any family each) and a fusion head.

`encode(batch)` returns exactly what stage one caches, `{"text_emb", "image_emb"}`;
`forward` applies the fusion head to it. Stage one calls `encode` with the head
left out; end-to-end fine-tuning calls `forward`.
"""

from torch import nn

from pipeline.model.checkpoint import apply_clip_checkpoint
from pipeline.model.families import ALL_TEXT_INPUTS
from pipeline.model.image_encoder import load_image_encoder
from pipeline.model.text_encoder import TextEncoder, load_text_model, resolve_pooling

TEXT_INPUTS = ALL_TEXT_INPUTS  # the batch's text keys; the text encoder passes on those its model takes
PRESENCE_MASKS = ("has_text", "has_image")


class EncodersWithHead(nn.Module):
    """The two encoders and the head on their vectors (no head: stage one's feature extractor)."""

    def __init__(self, text_encoder, image_encoder, head=None):
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.head = head

    @property
    def dims(self):
        return {"text": self.text_encoder.dim, "image": self.image_encoder.dim}

    def encode_text(self, batch):
        return self.text_encoder(**{k: batch[k] for k in TEXT_INPUTS if batch.get(k) is not None})

    def encode_image(self, batch):
        return self.image_encoder(batch["pixel_values"])

    def encode(self, batch):
        """batch: input_ids/attention_mask (B, T), pixel_values (B, 3, S, S) -> (B, D) each."""
        return {"text_emb": self.encode_text(batch), "image_emb": self.encode_image(batch)}

    def forward(self, batch=None, **inputs):
        """Logits (B, 2); takes a batch dict or its keys as keyword arguments (the Trainer's way).

        The batch's `has_text` / `has_image` masks (B,) reach the head, which puts its missing vectors there.
        """
        batch = batch if batch is not None else inputs
        features = self.encode(batch)
        features.update({k: batch[k] for k in PRESENCE_MASKS if batch.get(k) is not None})
        return self.head(features)


MultimodalBertClipClassifier = EncodersWithHead  # the old name: existing code and saved references keep working


def build_encoders(text_model, clip_model, clip_lora=None, lora_alpha=None,
                   pooling="cls", clip_embedding="auto"):
    """Load both encoders from folders (and merge an optional image checkpoint); `pooling` and `clip_embedding`
    may be `auto`."""
    pooling, _ = resolve_pooling(text_model, pooling)
    text_encoder = TextEncoder(load_text_model(text_model, pooling), pooling)
    image_encoder = load_image_encoder(clip_model, clip_embedding)
    lora_summary = None
    if clip_lora:
        lora_summary = apply_clip_checkpoint(image_encoder, clip_lora, lora_alpha)
    return EncodersWithHead(text_encoder, image_encoder), lora_summary
