"""Counted nouns for messages: one place that writes "1 row" / "2 rows" (never "1 row(s)")."""

from __future__ import annotations

_IRREGULAR = {"was": "were", "has": "have", "is": "are"}


def plural(noun: str, n: int) -> str:
    """`noun` for a count of `n` ("row" -> "rows"; "match" -> "matches"; consonant + y: "reply" -> "replies",
    but vowel + y: "day" -> "days"). The last word of a phrase is the one made plural ("bad entry")."""
    if n == 1:
        return noun
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if len(noun) >= 2 and noun.endswith("y") and noun[-2].lower() not in "aeiouy ":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def count(n: int, noun: str) -> str:
    """"1 row", "3 rows", "0 pairs": `n` and `noun` in agreement."""
    return f"{n} {plural(noun, n)}"
