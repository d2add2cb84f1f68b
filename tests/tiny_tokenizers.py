"""Tokenizers for the tests' tiny random models, written offline (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_clip_tokenizer(folder: Path):
    """A `CLIPTokenizer` over single letters (vocab and empty merges written to ``folder``), 16 tokens at most."""
    from transformers import CLIPTokenizer

    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}  # OWL models want the start token id > 0
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>", model_max_length=16
    )
