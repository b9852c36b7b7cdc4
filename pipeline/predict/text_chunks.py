"""A batch's titles encoded in chunks of similar length, so that short titles are not padded to the longest.

`Classifier.predict` takes posts in whatever order they come (serve's batches are whichever requests
arrived together), and a batch is padded to its longest title: on the bench's titles (median 10 tokens,
longest 52) a random batch of 16 holds 2.2 times the tokens its titles have, one of 64 three times. Sorted
by length and encoded 8 titles at a time, the demo's text tower (all-MiniLM-L6-v2, nearly all of the
model's time) took 3.2 ms a post instead of 3.9-4.1 at 16 a batch, and 2.9-3.1 instead of 5.2-5.8 at 64
(2-core bench machine, /tmp scratch script, two passes). On a GPU, where padding is nearly free and each
call costs a launch, the batch is encoded whole. Stage one needs none of this: it sorts each part by
length before batching (embed/loader.py). The vectors are the same up to float rounding (padding is masked).
"""

import torch

from pipeline.model.batch import tokenize_titles

CPU_CHUNK_ROWS = 8  # of the chunk sizes tried (4, 8, 16 rows), 8 was best at 16 a batch and within 4% of 16 at 64


def encode_titles(model, tokenizer, titles, max_length, device):
    """(B, D) text vectors for `titles` (a list of str), in their order."""
    if device.type != "cpu" or len(titles) <= CPU_CHUNK_ROWS:
        return _encode(model, tokenizer, titles, max_length, device)
    order = sorted(range(len(titles)), key=lambda i: len(titles[i]))  # characters: near enough to tokens
    chunks = [order[start:start + CPU_CHUNK_ROWS] for start in range(0, len(order), CPU_CHUNK_ROWS)]
    vectors = [_encode(model, tokenizer, [titles[i] for i in chunk], max_length, device) for chunk in chunks]
    out = torch.empty((len(titles), vectors[0].shape[1]), dtype=vectors[0].dtype, device=vectors[0].device)
    out[torch.tensor(order, device=out.device)] = torch.cat(vectors)
    return out


def _encode(model, tokenizer, titles, max_length, device):
    batch = tokenize_titles(tokenizer, titles, max_length)
    return model.encode_text({k: v.to(device) for k, v in batch.items()})
