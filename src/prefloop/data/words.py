"""Counted nouns for messages: one place that writes "1 row" / "2 rows" (never "1 row(s)")."""

from __future__ import annotations

_IRREGULAR = {"entry": "entries", "was": "were", "has": "have", "is": "are"}


def plural(noun: str, n: int) -> str:
    """`noun` for a count of `n` ("row" -> "rows"; "entry" -> "entries")."""
    if n == 1:
        return noun
    return _IRREGULAR.get(noun, noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s"))


def count(n: int, noun: str) -> str:
    """"1 row", "3 rows", "0 pairs": `n` and `noun` in agreement."""
    return f"{n} {plural(noun, n)}"
