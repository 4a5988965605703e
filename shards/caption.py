"""Caption checks shared by every input kind: UTF-8, not empty."""
from __future__ import annotations

import re

from shards.source import InputError

_CAMEL_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def decode_caption(raw: bytes) -> str:
    """Caption bytes -> text, stripped. A UTF-8 byte-order mark is dropped."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"caption is not UTF-8 (bad byte at offset {exc.start})") from None
    return check_caption(text)


def check_caption(text: str) -> str:
    """Stripped caption; raises InputError when nothing is left or it holds undecodable bytes."""
    # Surrogates: bytes a manifest reader kept with surrogateescape, or a lone "\ud83d" from JSON.
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        raise InputError("caption is not UTF-8")
    text = text.strip()
    if not text:
        raise InputError("empty caption")
    return text


def camel_to_words(name: str) -> str:
    """'ApplyEyeMakeup' -> 'apply eye makeup', 'YoYo' -> 'yo yo', 'PlayingDaf' -> 'playing daf'."""
    words = _CAMEL_WORD.findall(name)
    if not words:
        raise ValueError(f"no words in class name {name!r}")
    return " ".join(w.lower() for w in words)
