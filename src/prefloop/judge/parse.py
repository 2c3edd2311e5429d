"""Reading a verdict out of a judge's free-text answer, and soft verdicts from its log-probs.

A verdict is read from what the judge *concludes*, never from wherever a side's letter occurs:
"Response A is wrong: ... The better answer is B." is B (the stated conclusion), and
"Response A is wrong." is no verdict (a remark about one side is not a comparison), for which the
judge is asked once more (`pairwise.py`). Rules, most reliable first (after how Arena-Hard and
MT-Bench read their judges, stricter about conflicts):

0. A reasoning model's thinking (a `<think>...</think>` block the text starts with, or everything
   before a first `</think>` that no `<think>` opened) is not its answer: verdicts in it are ignored
   (a judge thinking "maybe [[A]]" concludes nothing). Tags elsewhere are text the judge wrote about
   (a response that leaked them); after a lone `</think>` without a verdict the whole text is read.
1. Bracketed verdicts `[[A]]`, `[[b]]`, `[[ C ]]`, `[[tie]]`, and Arena-Hard's labels `[[A>>B]]`,
   `[[A>B]]`, `[[A=B]]`, `[[B>A]]`, `[[B>>A]]` (and the mirrored `[[A<B]]`, `[[B<<A]]`, `[[B=A]]`;
   a tie for "=", else the side the comparison favours, its label kept in `ParsedVerdict.label`):
   if they all agree, that is the verdict. If they conflict (a judge echoing the instructions, or
   changing its mind), only those after the last mention of "verdict" count; still conflicting ->
   no verdict.
2. A bare answer: "A", "**B**", "tie.", "Assistant B", AlpacaEval's "Output (b)", a label "B>A".
3. Conclusions stated in prose, each a whole phrase that names a side *and* says how it compares:
   - a conclusion keyword ("keyword"): "Verdict: B", "my final decision is [A]", "the better
     answer is B", "winner: Assistant A";
   - a comparison: "Assistant A is better", "Response B is clearly more helpful", "answer B wins",
     "Assistant A is worse than B" (-> B), "Response A is less accurate" (-> B);
   - a preference: "I prefer response B", "I would choose A";
   - a tie: "both answers are equally good", "it's a tie", "neither response is better".
   A phrase in a negated, conditional or reported clause ("it is not true that A is better",
   "if A is better, ...", "Assistant A says 'B is better'") states no conclusion and is ignored. When the phrases agree, that is the verdict;
   when they conflict, the keyword phrases decide if they agree among themselves (the judge's
   stated conclusion over its earlier remarks); otherwise no verdict.
4. Anything else is no verdict (None): never silently A or B.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

VERDICTS = ("A", "B", "C")  # C = tie

# Arena-Hard's comparison labels: "A>>B" (A much better) ... "B>>A"; "=" is a tie.
_LABEL = r"[AB]\s*(?:>>|>|=|<<|<)\s*[AB]"
_BRACKET = re.compile(r"\[\[\s*(" + _LABEL + r"|A|B|C|tie)\s*\]\]", re.IGNORECASE)
_VERDICT_WORD = re.compile(r"verdict", re.IGNORECASE)
_THINK_OPEN, _THINK_CLOSE = re.compile(r"<think>", re.IGNORECASE), re.compile(r"</think>", re.IGNORECASE)
_NOUN = r"(?i:assistant|response|answer|output|model|option|candidate)"
_BARE = re.compile(r"^\W*(?:" + _NOUN + r"\s*\(\s*|" + _NOUN + r"\s+)?(A|B|C|(?i:a|b|c|tie))\W*$")
# A side: "Assistant A", "response b", "Output (a)", or a bare capital "A"/"B" (a lowercase "a" is an article).
_SIDE = r"(?:" + _NOUN + r"\s*\(([ABab])\)|" + _NOUN + r"\s*([ABab])\b|\b([AB])\b)"
_POSSESSIVE = r"(?:'s\s+(?i:answer|response|output))?"
_ADVERBS = r"(?:\s+(?i:clearly|slightly|much|significantly|far|overall|definitely|somewhat|marginally|the|a|an))*"
_QUALITIES = r"(?:helpful|accurate|correct|complete|relevant|useful|informative|appropriate|precise|factual)"
_BETTER = (r"(?i:better|superior|preferred|preferable|stronger|more\s+" + _QUALITIES
           + r"|the\s+winner|(?:the\s+)?(?:best|strongest)(?:\s+one)?)\b")
_WORSE = r"(?i:worse|inferior|weaker|less\s+" + _QUALITIES + r")\b"

# (pattern, kind): "keyword" (a stated conclusion), "better", "worse" (names the loser), "tie".
_PHRASES = [
    (re.compile(r"(?i:\b(?:verdict|decision|winner|choice|final\s+answer|"
                r"(?:better|best|stronger|preferred|superior)\s+(?:answer|response|one|output|option|choice))"
                r"(?:\s+overall)?\s*(?:is|:|-|=|would\s+be|goes\s+to)?\s*[\"'*\[(]*\s*)"
                r"(?:" + _NOUN + r"\s*)?(A|B|C|(?i:a|b|c|tie))\b"), "keyword"),
    (re.compile(_SIDE + _POSSESSIVE + r"\s+(?i:is|was)" + _ADVERBS + r"\s+" + _BETTER), "better"),
    (re.compile(_SIDE + _POSSESSIVE + r"\s+(?i:wins|comes\s+out\s+ahead|is\s+the\s+winner)\b"), "better"),
    (re.compile(_SIDE + _POSSESSIVE + r"\s+(?i:is|was)" + _ADVERBS + r"\s+" + _WORSE), "worse"),
    (re.compile(r"\bI\s+(?i:would\s+|will\s+|do\s+|clearly\s+|strongly\s+)?(?i:prefer|choose|pick|select|favou?r|"
                r"go\s+with)\s+" + _SIDE), "better"),
    (re.compile(r"(?i:\bit'?s\s+a\s+tie\b|\b(?:both|the\s+two)\s+(?:responses|answers|assistants|outputs)\s+are\s+"
                r"(?:equally|equal)\b|\bequally\s+(?:good|helpful|bad|strong|weak|accurate)\b|\btied\b|"
                r"\bneither\s+(?:response|answer|assistant|output|one)?\s*is\s+(?:clearly\s+)?(?:better|worse)\b)"), "tie"),
]
# What makes a phrase state no conclusion, when found earlier in its clause.
_NEGATED = re.compile(r"(?i:\b(?:not|never|no|hardly|nor)\b|n't\b)")
_CONDITIONAL = re.compile(r"(?i:\b(?:if|whether|unless)\b)")
_REPORTED = re.compile(r"(?i:\b(?:says?|said|claims?|claimed|states?|stated|argues?|argued|thinks?|believes?)\b|[\"'\u201c\u2018]\s*$)")
_CLAUSE_END = re.compile(r"(?i:[.;:!?,\n]|\bbut\b|\bhowever\b|\bwhile\b|\bwhereas\b|\bthough\b|\bthen\b)")


@dataclass(frozen=True)
class ParsedVerdict:
    verdict: str  # "A", "B" or "C"
    position: int  # character index of the verdict letter in the text (for soft verdicts)
    names_loser: bool = False  # the letter at `position` is the worse side ("A is worse" -> B)
    label: str | None = None  # an Arena-Hard label ("A>>B", "B>A", "A=B"), as the judge wrote it


def _label_verdict(label: str) -> str:
    """The verdict of an Arena-Hard label: the side the comparison favours, "C" for "="."""
    label = re.sub(r"\s+", "", label).upper()
    first, op, second = label[0], label[1:-1], label[-1]
    if "=" in op or first == second:
        return "C"
    return first if op.startswith(">") else second


def _bracket(match) -> tuple:
    token = match.group(1)
    if len(token.strip()) > 1 and token.strip().upper() != "TIE":
        return (_label_verdict(token), match.start(1), "label", re.sub(r"\s+", "", token).upper())
    return (_normalize(token), match.start(1))


def _normalize(token: str | None) -> str:
    token = (token or "C").strip().upper()
    return "C" if token in ("TIE", "C") else token


def _unique(found: list[tuple]) -> ParsedVerdict | None:
    """The verdict when every (verdict, position[, kind]) agrees, at the last one's position."""
    letters = {f[0] for f in found}
    if len(letters) != 1:
        return None
    last = found[-1]
    return ParsedVerdict(last[0], last[1], len(last) > 2 and last[2] == "worse", last[3] if len(last) > 3 else None)


def _answer_part(text: str) -> tuple[str, int, bool]:
    """The text without a reasoning model's thinking, the offset of what is kept in `text`, and
    whether that split is only a guess.

    Thinking is a block the answer *starts* with: `<think>...</think>` at the start (unclosed: cut off
    by max_tokens, all of it is thinking), or everything before the first `</think>` when no `<think>`
    comes before it (a template that opens the thinking in the prompt). That last split is a guess
    (the judge may be quoting a stray `</think>` a response printed), so `parse_verdict` reads the
    whole text when the part after it has no verdict. A `<think>` tag anywhere else is text the judge
    wrote about (a response that leaked its tags), not thinking."""
    head = len(text) - len(text.lstrip())
    if _THINK_OPEN.match(text, head):
        close = _THINK_CLOSE.search(text, head)
        return (text[close.end():], close.end(), False) if close else ("", len(text), False)
    close = _THINK_CLOSE.search(text)
    if close and not _THINK_OPEN.search(text, 0, close.start()):
        return text[close.end():], close.end(), True
    return text, 0, False


def _clause_before(text: str, at: int) -> str:
    """The text of the clause that holds position `at`, up to `at`."""
    start = 0
    for m in _CLAUSE_END.finditer(text, 0, at):
        start = m.end()
    return text[start:at]


def _phrases(text: str) -> list[tuple[str, int, str]]:
    """(verdict, position, kind) of every conclusion phrase, in text order; negated/conditional ones left out."""
    found = []
    for pattern, kind in _PHRASES:
        for m in pattern.finditer(text):
            before = _clause_before(text, m.start())
            if _NEGATED.search(before) or _CONDITIONAL.search(before) or _REPORTED.search(before):
                continue
            groups = [(g, m.start(i + 1)) for i, g in enumerate(m.groups()) if g is not None]
            if kind == "tie" or not groups:
                found.append(("C", m.start(), kind))
                continue
            token, at = groups[0]
            verdict = _normalize(token)
            if kind == "worse":
                verdict = {"A": "B", "B": "A"}[verdict]
            found.append((verdict, at, kind))
    return sorted(found, key=lambda f: f[1])


def parse_verdict(text: str | None) -> ParsedVerdict | None:
    """The judge's concluded verdict ("A", "B" or "C" for a tie) with its position, or None when unclear.

    See the module docstring for the rules. None means "ask again", never a default side.
    """
    if not text:
        return None
    answer, offset, guessed = _answer_part(text)
    verdict = _parse_answer(answer)
    if verdict is None and guessed:  # a lone </think> that was not the end of thinking after all
        return _parse_answer(text)
    return None if verdict is None else replace(verdict, position=verdict.position + offset)


def _parse_answer(text: str) -> ParsedVerdict | None:
    brackets = [_bracket(m) for m in _BRACKET.finditer(text)]
    if brackets:
        verdict = _unique(brackets)
        if verdict is None:
            last_word = [m.end() for m in _VERDICT_WORD.finditer(text)]
            if last_word:
                verdict = _unique([b for b in brackets if b[1] >= last_word[-1]])
        return verdict
    label = re.fullmatch(r"\W*(" + _LABEL + r")\W*", text.strip())
    if label:  # a bare Arena-Hard label: "A>B"
        return ParsedVerdict(_label_verdict(label.group(1)), len(text) - len(text.lstrip()) + label.start(1),
                             label=re.sub(r"\s+", "", label.group(1)).upper())
    bare = _BARE.match(text.strip())
    if bare:
        return ParsedVerdict(_normalize(bare.group(1)), len(text) - len(text.lstrip()) + bare.start(1))
    found = _phrases(text)
    verdict = _unique(found)
    if verdict is None:
        verdict = _unique([f for f in found if f[2] == "keyword"])
    return verdict


def soft_verdict(logprobs, verdict: ParsedVerdict) -> dict[str, float] | None:
    """P(A), P(B), P(C) at the verdict token, from its top log-probs (None when not available).

    `logprobs` is the list of generated tokens (each with `.token` and `.top` [(token, logprob)]);
    the verdict token is the one covering `verdict.position` in the concatenated token text. When
    that letter names the worse side ("Assistant A is worse"), the A and B masses are swapped.
    """
    if not logprobs or verdict.label is not None:  # the first letter of "[[A=B]]" is no side's probability
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
    if verdict.names_loser:  # the letter written is the worse side: P(letter A) = P(B is better)
        mass["A"], mass["B"] = mass["B"], mass["A"]
    return {k: v / total for k, v in mass.items()}
