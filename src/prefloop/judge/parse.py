"""Reading a verdict out of a judge's free-text answer, and soft verdicts from its log-probs.

Rules, most reliable first (modelled on how Arena-Hard and MT-Bench read their judges, but
stricter about conflicts):
1. Bracketed verdicts `[[A]]`, `[[b]]`, `[[ C ]]`, `[[tie]]`: if they all agree, that is the
   verdict. If they conflict (a judge echoing the instructions, or changing its mind), only those
   after the last mention of "verdict" count; still conflicting -> no verdict.
2. Without brackets, a bare answer ("A", "**B**", "tie.") or a verdict stated in prose
   ("Verdict: B", "Assistant A is better", "I prefer response B", "both answers are equally good"),
   again only when every such statement agrees.
3. Anything else is no verdict (None): never silently B.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

VERDICTS = ("A", "B", "C")  # C = tie

_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_VERDICT_WORD = re.compile(r"verdict", re.IGNORECASE)
_BARE = re.compile(r"^\W*(?:(?i:assistant|response|answer|output)\s+)?(A|B|C|(?i:a|b|c|tie))\W*$")
_SIDE = r"(?i:assistant|response|answer|output|model)\s*([ABab])\b"
_PROSE = [
    # "Verdict: B", "final decision is [A]", "winner: Assistant A", "My choice: tie"
    re.compile(r"(?i:verdict|decision|winner|choice|final answer)\s*(?i:is|:|-|=)?\s*[\"'*\[(]*\s*"
               r"(?:(?i:assistant|response|answer|output|model)\s*)?(A|B|C|[Tt]ie)\b"),
    # "Assistant A is better", "Response b is clearly more helpful", "answer B wins"
    re.compile(_SIDE + r"(?:'s\s+(?i:answer|response))?\s+(?i:is|was|wins|provides a better|gives a better)"
               r"(?:\s+(?i:clearly|slightly|much|significantly|far|overall))?"
               r"(?:\s+(?i:better|superior|preferred|more helpful|more accurate|the winner|the better))?"),
    # "I prefer response B", "I would choose assistant A", "I pick B"
    re.compile(r"\bI\s+(?:would\s+)?(?i:prefer|choose|pick|select)\s+(?:" + _SIDE + r"|([AB])\b)"),
    # ties in words
    re.compile(r"(?i:\bit'?s\s+a\s+(tie)\b|\b(?:both|the two)\s+(?:responses|answers|assistants)\s+are\s+"
               r"(?:equally|equal)|\bequally\s+(?:good|helpful|bad)\b|\b(tie)d\b)"),
]


@dataclass(frozen=True)
class ParsedVerdict:
    verdict: str  # "A", "B" or "C"
    position: int  # character index of the verdict letter in the text (for soft verdicts)


def _normalize(token: str | None) -> str:
    token = (token or "C").strip().upper()
    return "C" if token in ("TIE", "C") else token


def _unique(found: list[tuple[str, int]]) -> ParsedVerdict | None:
    letters = {v for v, _ in found}
    if len(letters) != 1:
        return None
    return ParsedVerdict(found[-1][0], found[-1][1])


def _prose(text: str) -> list[tuple[str, int]]:
    found = []
    for pattern in _PROSE:
        for m in pattern.finditer(text):
            groups = [(g, m.start(i + 1)) for i, g in enumerate(m.groups()) if g is not None]
            if groups:
                token, at = groups[0]
                found.append((_normalize(token), at))
            else:
                found.append(("C", m.start()))
    return sorted(found, key=lambda f: f[1])


def parse_verdict(text: str | None) -> ParsedVerdict | None:
    """The judge's verdict ("A", "B" or "C" for a tie) with its position, or None when unclear."""
    if not text:
        return None
    brackets = [(_normalize(m.group(1)), m.start(1)) for m in _BRACKET.finditer(text)]
    if brackets:
        verdict = _unique(brackets)
        if verdict is None:
            last_word = [m.end() for m in _VERDICT_WORD.finditer(text)]
            if last_word:
                verdict = _unique([b for b in brackets if b[1] >= last_word[-1]])
        return verdict
    bare = _BARE.match(text.strip())
    if bare:
        return ParsedVerdict(_normalize(bare.group(1)), text.find(bare.group(1), len(text) - len(text.lstrip())))
    return _unique(_prose(text))


def soft_verdict(logprobs, verdict: ParsedVerdict) -> dict[str, float] | None:
    """P(A), P(B), P(C) at the verdict token, from its top log-probs (None when not available).

    `logprobs` is the list of generated tokens (each with `.token` and `.top` [(token, logprob)]);
    the verdict token is the one covering `verdict.position` in the concatenated token text.
    """
    if not logprobs:
        return None
    offset, entry = 0, None
    for candidate in logprobs:
        if offset <= verdict.position < offset + len(candidate.token):
            entry = candidate
            break
        offset += len(candidate.token)
    if entry is None or not entry.top:
        return None
    mass = {"A": 0.0, "B": 0.0, "C": 0.0}
    for token, logprob in entry.top:
        key = token.strip().upper()
        key = "C" if key == "TIE" else key
        if key in mass:
            mass[key] += math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {k: v / total for k, v in mass.items()}
