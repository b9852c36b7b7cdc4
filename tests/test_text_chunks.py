"""`Classifier.predict`'s titles in chunks of similar length (pipeline/predict/text_chunks.py): the vectors of
the whole padded batch, in the titles' order, from one text forward pass per chunk on the CPU."""

import random

import torch
from conftest import WORDS

from pipeline.model.batch import tokenize_titles
from pipeline.model.classifier import build_encoders
from pipeline.model.text_encoder import load_tokenizer
from pipeline.predict import text_chunks
from pipeline.predict.text_chunks import CPU_CHUNK_ROWS, encode_titles

MAX_LENGTH = 32


def titles(count, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 15, 25]))) for _ in range(count)]


def test_chunked_vectors_are_the_whole_batchs_in_order(tiny_bert, tiny_clip, monkeypatch):
    model, _ = build_encoders(tiny_bert, tiny_clip)
    model.eval()
    tokenizer = load_tokenizer(tiny_bert)
    calls = []
    encode = text_chunks._encode
    monkeypatch.setattr(text_chunks, "_encode", lambda *args: calls.append(len(args[2])) or encode(*args))
    cpu = torch.device("cpu")
    for count in (3, CPU_CHUNK_ROWS, 2 * CPU_CHUNK_ROWS + 3):
        chosen = titles(count, seed=count)
        calls.clear()
        with torch.inference_mode():
            whole = model.encode_text(tokenize_titles(tokenizer, chosen, MAX_LENGTH))
            chunked = encode_titles(model, tokenizer, chosen, MAX_LENGTH, cpu)
        assert chunked.shape == whole.shape
        assert torch.allclose(chunked, whole, atol=1e-5), count  # padding is masked: the same up to rounding
        assert calls == ([count] if count <= CPU_CHUNK_ROWS else [CPU_CHUNK_ROWS, CPU_CHUNK_ROWS, 3])


def test_a_chunk_holds_titles_of_similar_length(tiny_bert, tiny_clip, monkeypatch):
    model, _ = build_encoders(tiny_bert, tiny_clip)
    tokenizer = load_tokenizer(tiny_bert)
    seen = []
    encode = text_chunks._encode
    monkeypatch.setattr(text_chunks, "_encode", lambda *args: seen.append(args[2]) or encode(*args))
    chosen = titles(2 * CPU_CHUNK_ROWS, seed=1)
    with torch.inference_mode():
        encode_titles(model, tokenizer, chosen, MAX_LENGTH, torch.device("cpu"))
    short, long = seen
    assert max(map(len, short)) <= min(map(len, long))  # the short titles are not padded to the long ones
    assert sorted(short + long) == sorted(chosen)
