"""The model: text encoder, CLIP image encoder, checkpoint and LoRA loading, the fusion head, and the
classifier whose `encode` stage one caches. Imports nothing from the stages."""
