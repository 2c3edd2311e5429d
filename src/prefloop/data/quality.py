"""Quality checks behind `prefloop data check`: bad pairs, length bias, off-topic answers.

Each check looks at the pairs only (no model, no tokenizer) and yields a `Finding`: how many pairs
it flags, a few examples, and what to do. Checks that find pairs with no usable preference signal
(identical, formatting-only, empty, duplicate, contradicting) mark them for removal by
`--write-clean`; the statistical checks (length bias, off-topic, duplicate ids) only warn.
"""

from __future__ import annotations

import re
import statistics
import string
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from prefloop.data.schema import PreferencePair, is_empty_prompt, is_repeat
from prefloop.data.template import answer_key, is_empty_answer

# Defaults of the statistical checks.
LENGTH_BIAS_SHARE = 0.7  # warn when chosen is longer than rejected in more than this share of pairs
LENGTH_BIAS_RATIO = 1.5  # ... or when chosen is on average this many times as long
LENGTH_BIAS_MIN_PAIRS = 10  # fewer pairs than this say nothing about a bias
OFF_TOPIC_MIN_WORDS = 3  # prompt and response need this many content words to be scored
MAX_EXAMPLES = 5

_PUNCTUATION = "".join(
    {*string.punctuation, "\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014", "\u2026", "\u00ab", "\u00bb", "\u00bf", "\u00a1"}
)
_STRIP_PUNCTUATION = str.maketrans("", "", _PUNCTUATION)
_CONTENT_WORD = re.compile(r"[^\W\d_]{3,}|\d+")  # words of 3+ letters, or numbers
_NOT_WORD = re.compile(r"[\W_]+")
_STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
    out over own same she should so some such than that the their them then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your yours
    please thanks thank hello sure yes okay ok tell give make know like get want need one use""".split()
)


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_STRIP_PUNCTUATION)
    return " ".join(text.split())


def formatting_key(text: str) -> str:
    """What is left when whitespace, case and punctuation are ignored ("a, b" and "A  b." share it)."""
    return _NOT_WORD.sub("", text.lower())


def content_words(text: str) -> set[str]:
    """Words that carry topic (stopwords and words under 3 letters dropped, numbers kept), stemmed to 5 letters."""
    return {w[:5] for w in set(_CONTENT_WORD.findall(text.lower())) - _STOPWORDS}


def _word_count(words: set[str]) -> int:
    """Content words that are not numbers: a bare number ("60") says too little about the topic."""
    return sum(1 for w in words if not w.isdigit())


def overlap_score(prompt_words: set[str], response_words: set[str]) -> float:
    """Overlap coefficient |P & R| / min(|P|, |R|): 0 = no shared content word, 1 = one contains the other."""
    if not prompt_words or not response_words:
        return 1.0
    return len(prompt_words & response_words) / min(len(prompt_words), len(response_words))


@dataclass
class Finding:
    """The result of one check. `fired` when it flags anything; `removes` when --write-clean drops those pairs."""

    check: str
    title: str
    severity: str  # "error": no training signal; "warning": likely hurts; "info"
    count: int
    advice: str
    removes: bool = False
    examples: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.count > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "title": self.title,
            "severity": self.severity if self.fired else "ok",
            "count": self.count,
            "removes": self.removes,
            "advice": self.advice,
            "examples": self.examples,
            **({"stats": self.stats} if self.stats else {}),
        }


@dataclass
class QualityReport:
    findings: list[Finding]
    removed: dict[int, str]  # index of a pair -> the first removing check that flagged it
    total: int

    def finding(self, check: str) -> Finding:
        for f in self.findings:
            if f.check == check:
                return f
        raise KeyError(check)

    def clean(self, pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
        """The pairs no removing check flagged, in input order."""
        return [p for i, p in enumerate(pairs) if i not in self.removed]

    def removed_by_check(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for check in self.removed.values():
            counts[check] = counts.get(check, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "passing": self.total - len(self.removed),
            "removed_by_check": self.removed_by_check(),
            "findings": [f.to_dict() for f in self.findings],
        }


def _example(pairs: Sequence[PreferencePair], index: int, detail: str = "") -> dict[str, Any]:
    pair = pairs[index]
    example = {"id": pair.id, "source": pair.source}
    if detail:
        example["detail"] = detail
    return example


def _preview(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _prompt_key(pair: PreferencePair) -> tuple:
    return (tuple(pair.prompt), pair.tools)


def _answer_key(pair: PreferencePair, which: str, stops: Sequence[str] = ()) -> tuple:
    """The answer as `template.answer_key` compares answers (text without the tokenizer's stop strings
    `stops` at its end, role, fields)."""
    answer = pair.answer(which)
    return answer_key(answer.role, answer.content, answer.fields, stops)


def _same_answers(pair: PreferencePair, stops: Sequence[str] = ()) -> bool:
    return _answer_key(pair, "chosen", stops) == _answer_key(pair, "rejected", stops)


def check_identical(pairs: Sequence[PreferencePair], stops: Sequence[str] = ()) -> tuple[Finding, list[int]]:
    """Pairs whose two answers are the same answer (`template.answer_key`; with a ChatML tokenizer's stop
    strings `stops`, "A" and "A<|im_end|>" are)."""
    flagged = [i for i, p in enumerate(pairs) if _same_answers(p, stops)]
    return Finding(
        "identical", "chosen identical to rejected", "error", len(flagged),
        "such pairs carry no preference (their loss gradient is zero); remove them or relabel",
        removes=True, examples=[_example(pairs, i, _preview(pairs[i].chosen)) for i in flagged[:MAX_EXAMPLES]],
    ), flagged


def check_formatting_only(pairs: Sequence[PreferencePair], stops: Sequence[str] = ()) -> tuple[Finding, list[int]]:
    flagged = [
        i for i, p in enumerate(pairs)
        if not _same_answers(p, stops) and p.chosen_fields == p.rejected_fields and p.chosen_role == p.rejected_role
        and formatting_key(p.chosen) == formatting_key(p.rejected)
    ]
    return Finding(
        "formatting_only", "chosen and rejected differ only in whitespace, case or punctuation", "warning", len(flagged),
        "DPO would learn formatting quirks, not content; remove them or make sure the formatting is the point",
        removes=True,
        examples=[_example(pairs, i, f"{_preview(pairs[i].chosen, 40)} vs {_preview(pairs[i].rejected, 40)}") for i in flagged[:MAX_EXAMPLES]],
    ), flagged


def check_empty(pairs: Sequence[PreferencePair], stops: Sequence[str] = ()) -> tuple[Finding, list[int]]:
    """Pairs with an empty answer (`template.is_empty_answer`, the encoder's definition: whitespace or
    the tokenizer's stop strings `stops` only, and no tool call) or an empty last prompt turn."""
    flagged, details = [], []
    for i, p in enumerate(pairs):
        empty = [name for name in ("chosen", "rejected")
                 if is_empty_answer(getattr(p, name), getattr(p, f"{name}_fields"), stops)]
        if is_empty_prompt(p):
            empty.append("last prompt turn")
        if empty:
            flagged.append(i)
            details.append(" and ".join(empty) + " empty")
    return Finding(
        "empty", "empty or whitespace-only text", "error", len(flagged),
        "an empty answer or question teaches nothing useful; fill it in or remove the pair",
        removes=True, examples=[_example(pairs, i, d) for i, d in list(zip(flagged, details))[:MAX_EXAMPLES]],
    ), flagged


def check_duplicates(pairs: Sequence[PreferencePair], stops: Sequence[str] = ()) -> tuple[Finding, list[int]]:
    """Exact duplicate pairs beyond the first copy; the copies dataset_info's num_samples adds on purpose
    (`schema.is_repeat`, said in the load summary) are not duplicates in the data and are not flagged."""
    first: dict[tuple, int] = {}
    flagged = []
    for i, p in enumerate(pairs):
        if is_repeat(p):
            continue
        j = first.setdefault((_prompt_key(p), _answer_key(p, "chosen", stops), _answer_key(p, "rejected", stops)), i)
        if j != i:
            flagged.append((i, j))
    return Finding(
        "duplicate", "exact duplicate pairs (beyond the first copy)", "warning", len(flagged),
        "duplicates over-weight a few pairs; --write-clean keeps the first copy",
        removes=True,
        examples=[_example(pairs, i, f"same as {pairs[j].id}") for i, j in flagged[:MAX_EXAMPLES]],
    ), [i for i, _ in flagged]


def check_contradictions(pairs: Sequence[PreferencePair], stops: Sequence[str] = ()) -> tuple[Finding, list[int]]:
    by_prompt: dict[tuple, dict[tuple[tuple, tuple], list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, p in enumerate(pairs):
        if not _same_answers(p, stops):
            by_prompt[_prompt_key(p)][(_answer_key(p, "chosen", stops), _answer_key(p, "rejected", stops))].append(i)
    flagged: list[int] = []
    examples = []
    for orders in by_prompt.values():
        for (a, b), indices in orders.items():
            if a < b and (b, a) in orders:
                reverse = orders[(b, a)]
                flagged += indices + reverse
                if len(examples) < MAX_EXAMPLES:
                    examples.append(_example(pairs, indices[0], f"reversed by {pairs[reverse[0]].id}"))
    flagged.sort()
    return Finding(
        "contradiction", "same prompt with contradicting preferences (A>B and B>A)", "warning", len(flagged),
        "the two labels cancel out; resolve the disagreement (e.g. majority vote) or drop both; --write-clean drops both",
        removes=True, examples=examples,
    ), flagged


def check_duplicate_ids(pairs: Sequence[PreferencePair]) -> Finding:
    seen: dict[str, int] = {}
    repeated = []
    for i, p in enumerate(pairs):
        if p.id is not None and seen.setdefault(p.id, i) != i:
            repeated.append(i)
    return Finding(
        "duplicate_ids", "pair ids used more than once", "warning", len(repeated),
        "ids name pairs in logs, caches and reports; give every pair a unique id",
        examples=[_example(pairs, i) for i in repeated[:MAX_EXAMPLES]],
    )


def check_length_bias(pairs: Sequence[PreferencePair], share_threshold: float = LENGTH_BIAS_SHARE,
                      ratio_threshold: float = LENGTH_BIAS_RATIO, min_pairs: int = LENGTH_BIAS_MIN_PAIRS) -> Finding:
    """Share of pairs whose chosen is longer (characters) and the mean chosen/rejected length ratio."""
    longer = shorter = 0
    ratios = []
    for p in pairs:
        c, r = len(p.chosen.strip()), len(p.rejected.strip())
        if not c or not r or _same_answers(p):
            continue
        longer += c > r
        shorter += c < r
        ratios.append(c / r)
    n = len(ratios)
    stats: dict[str, Any] = {"pairs": n}
    biased = False
    if n:
        share = longer / n
        mean_ratio = statistics.fmean(ratios)
        stats.update(share_chosen_longer=round(share, 4), share_chosen_shorter=round(shorter / n, 4),
                     mean_length_ratio=round(mean_ratio, 4), median_length_ratio=round(statistics.median(ratios), 4))
        biased = n >= min_pairs and (share > share_threshold or mean_ratio > ratio_threshold)
    note = f"chosen is longer in {stats.get('share_chosen_longer', 0):.0%} of pairs, {stats.get('mean_length_ratio', 0):.2f}x as long on average"
    if n < min_pairs:
        note += f" (under {min_pairs} pairs: too few to judge)"
    return Finding(
        "length_bias", "length bias: chosen answers systematically longer", "warning", longer if biased else 0,
        f"{note}. DPO learns verbosity from such data (warning above {share_threshold:.0%} or a ratio of {ratio_threshold}); "
        "add pairs where the shorter answer wins, or use a length-normalised loss (e.g. simpo, ipo) or length-controlled eval",
        stats=stats,
    )


def check_off_topic(pairs: Sequence[PreferencePair], least: int = MAX_EXAMPLES, min_words: int = OFF_TOPIC_MIN_WORDS) -> Finding:
    """Cheap lexical relatedness of each response to its prompt; flags responses sharing no content word."""
    scored = []
    zero = 0
    for i, p in enumerate(pairs):
        prompt_words = content_words(" ".join(m.content for m in p.turns))
        if _word_count(prompt_words) < min_words:
            continue
        scores = []
        for name, text in (("chosen", p.chosen), ("rejected", p.rejected)):
            words = content_words(text)
            if _word_count(words) >= min_words:
                score = overlap_score(prompt_words, words)
                scores.append((score, name, text))
                zero += score == 0.0
        if scores:
            scored.append((min(scores)[0], i, min(scores)))
    scored.sort(key=lambda item: item[:2])
    least_related = [_example(pairs, i, f"{name} overlap {s:.2f}: {_preview(text, 50)}") for s, i, (_, name, text) in scored[:least]]
    return Finding(
        "off_topic", "possibly off-topic: responses sharing no content word with their prompt", "info", zero,
        "a cheap lexical heuristic (a good answer may use other words): review the least related pairs listed; "
        "answers about something else teach the model to drift",
        examples=least_related,
        stats={"pairs_scored": len(scored), "responses_with_zero_overlap": zero},
    )


REMOVING_CHECKS = (check_identical, check_empty, check_formatting_only, check_duplicates, check_contradictions)


def run_quality_checks(pairs: Sequence[PreferencePair], length_share_threshold: float = LENGTH_BIAS_SHARE,
                       length_ratio_threshold: float = LENGTH_BIAS_RATIO, stops: Sequence[str] = ()) -> QualityReport:
    """All checks; a pair flagged by several removing checks is attributed to the first. `stops`: the stop
    strings of the tokenizer the data is for (`ChatTemplate.stop_strings`), which the encoder removes from
    the end of answers; without a tokenizer nothing is removed ("A</s>" and "A" are different answers)."""
    findings = []
    removed: dict[int, str] = {}
    for check in REMOVING_CHECKS:
        finding, flagged = check(pairs, stops)
        findings.append(finding)
        for i in flagged:
            removed.setdefault(i, finding.check)
    findings.append(check_duplicate_ids(pairs))
    findings.append(check_length_bias(pairs, length_share_threshold, length_ratio_threshold))
    findings.append(check_off_topic(pairs))
    return QualityReport(findings=findings, removed=removed, total=len(pairs))
