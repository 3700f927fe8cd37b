"""Bounded echoes of input values in messages: no error text grows with the input."""
from __future__ import annotations

MAX_ECHO_CHARS = 80


def clip(text, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def first_repeated(names):
    """The first name that appears again in `names`, or None when all are distinct."""
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def echo(value, limit: int = MAX_ECHO_CHARS) -> str:
    """repr of an input value for a message, clipped."""
    return clip(repr(value), limit)
