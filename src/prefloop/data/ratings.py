"""`prefloop data pairs-from-ratings`: records with several rated responses per prompt -> preference pairs.

Readers (auto-detected per record, or `--format`):
- `ultrafeedback`: {"instruction": ..., "completions": [{"response": ..., "annotations": {aspect:
  {"Rating": "4", ...}}}]} (UltraFeedback, Cui et al. 2023; a rating of "N/A" is no rating);
- `helpsteer`: one response per row, {"prompt": ..., "response": ..., aspect: score, ...}, rows with the
  same prompt grouped (HelpSteer / HelpSteer2, Wang et al. 2023/2024; every numeric column is an aspect);
- `responses`: {"prompt": text or [{"role", "content"}], "responses": [{"response": ..., "ratings": {aspect: score}}]}.

Each response gets a weighted score s = sum_k w_k * rating_k (`--weights`, default 1 for every aspect
present). Pairs (`--pairing`): `all` = every pair of responses of a prompt, ordered by s (the UltraFeedback
recipe of the issue); `best_worst` = highest vs lowest s; `best_vs_rest` = the highest against each other.
|s_a - s_b| <= `--tie-threshold` is a tie: dropped (`--ties drop`, default) or written in the
records' order with "tie": true (`--ties keep`). A response without a rating for a weighted aspect
is left out of the pairing (counted). Each pair carries `dimensions` {aspect: {"chosen", "rejected"}}
for multi-objective training (`pref_dimensions`, data/dimensions.py).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.data.formats import write_seed_jsonl
from prefloop.data.schema import Message, PreferencePair
from prefloop.errors import ConfigError, DataError
from prefloop.data.words import count

PAIRINGS = ("all", "best_worst", "best_vs_rest")
FORMATS = ("auto", "ultrafeedback", "helpsteer", "responses")
_HELPSTEER_TEXT = ("prompt", "response")


@dataclass
class Rated:
    """One response with its ratings (aspect -> number; unrated aspects absent)."""

    text: str
    ratings: dict[str, float]
    where: str  # file:line for reports


@dataclass
class Group:
    prompt: list[Message]
    responses: list[Rated]
    where: str


@dataclass
class RatingsReport:
    records: int = 0
    prompts: int = 0
    responses: int = 0
    unrated: Counter = field(default_factory=Counter)  # aspect -> responses left out for lacking it
    too_few: int = 0  # prompts with fewer than 2 usable responses
    pairs: int = 0
    ties_dropped: int = 0
    ties_kept: int = 0
    formats: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = (f"{count(self.records, 'record')} ({', '.join(f'{k} {v}' for k, v in self.formats.items())}), {count(self.prompts, 'prompt')}, "
                f"{count(self.responses, 'response')} -> {count(self.pairs, 'pair')}; ties: {self.ties_dropped} dropped, "
                f"{self.ties_kept} kept")
        if self.unrated:
            text += "; responses left out for a missing rating: " + ", ".join(
                f"{n} ({aspect})" for aspect, n in sorted(self.unrated.items()))
        if self.too_few:
            text += f"; {count(self.too_few, 'prompt')} with fewer than 2 usable responses"
        return text


def _rating(value: Any, where: str, field_name: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "NA", "")):
        return None
    if isinstance(value, dict):  # UltraFeedback: {"Rating": "4", "Rationale": ...}
        return _rating(value.get("Rating", value.get("rating")), where, f"{field_name}.Rating")
    if isinstance(value, bool):
        raise DataError(f"{where}: field '{field_name}': {value!r} is not a rating -> write a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field '{field_name}': {value!r} is not a rating -> write a number "
                        f"(or \"N/A\" for no rating)") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: field '{field_name}': {value!r} is not a finite rating")
    return number


def _prompt(value: Any, where: str, field_name: str) -> list[Message]:
    if isinstance(value, str) and value.strip():
        return [Message("user", value)]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [Message(m["role"], m["content"]) for m in value]
    raise DataError(f"{where}: field '{field_name}': expected the prompt as text or a list of "
                    f"{{\"role\", \"content\"}} messages, got {type(value).__name__}")


def detect(record: dict) -> str | None:
    if "completions" in record and "instruction" in record:
        return "ultrafeedback"
    if "responses" in record and "prompt" in record:
        return "responses"
    if "prompt" in record and "response" in record:
        return "helpsteer"
    return None


def read_groups(path: str, fmt: str = "auto") -> tuple[list[Group], RatingsReport]:
    """Prompts with their rated responses, in file order. Raises DataError with file:line and field."""
    from prefloop.candidates import read_records  # the one reader of "several responses per prompt" files

    report = RatingsReport()
    groups: list[Group] = []
    helpsteer: dict[str, Group] = {}
    for where, record in read_records(path):
        found = detect(record) if fmt == "auto" else fmt
        if found is None or (fmt != "auto" and detect(record) != fmt):
            raise DataError(f"{where}: not a ratings record ({'keys: ' + ', '.join(sorted(record))}) -> expected "
                            f"UltraFeedback (instruction + completions), HelpSteer (prompt + response + aspect "
                            f"scores) or responses (prompt + responses with ratings)"
                            + (f"; --format {fmt} was given" if fmt != "auto" else ""))
        report.records += 1
        report.formats[found] += 1
        if found == "ultrafeedback":
            completions = record["completions"]
            if not isinstance(completions, list):
                raise DataError(f"{where}: field 'completions': expected a list of responses")
            rated = []
            for i, c in enumerate(completions):
                if not isinstance(c, dict) or not isinstance(c.get("response"), str):
                    raise DataError(f"{where}: field 'completions[{i}].response': expected the response text")
                annotations = c.get("annotations") or {}
                ratings = {a: _rating(v, where, f"completions[{i}].annotations.{a}") for a, v in annotations.items()}
                rated.append(Rated(c["response"], {a: v for a, v in ratings.items() if v is not None}, where))
            groups.append(Group(_prompt(record["instruction"], where, "instruction"), rated, where))
        elif found == "responses":
            rated = []
            if not isinstance(record["responses"], list):
                raise DataError(f"{where}: field 'responses': expected a list of rated responses")
            for i, r in enumerate(record["responses"]):
                text = r.get("response", r.get("text", r.get("content"))) if isinstance(r, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{where}: field 'responses[{i}].response': expected the response text")
                raw = r.get("ratings", r.get("scores")) or {}
                if not isinstance(raw, dict):
                    raise DataError(f"{where}: field 'responses[{i}].ratings': expected {{aspect: score}}")
                ratings = {a: _rating(v, where, f"responses[{i}].ratings.{a}") for a, v in raw.items()}
                rated.append(Rated(text, {a: v for a, v in ratings.items() if v is not None}, where))
            groups.append(Group(_prompt(record["prompt"], where, "prompt"), rated, where))
        else:  # helpsteer: one response per row, grouped by prompt text
            if not isinstance(record["response"], str):
                raise DataError(f"{where}: field 'response': expected the response text")
            ratings = {k: _rating(v, where, k) for k, v in record.items()
                       if k not in _HELPSTEER_TEXT and isinstance(v, (int, float)) and not isinstance(v, bool)}
            key = record["prompt"] if isinstance(record["prompt"], str) else repr(record["prompt"])
            if key not in helpsteer:
                helpsteer[key] = Group(_prompt(record["prompt"], where, "prompt"), [], where)
                groups.append(helpsteer[key])
            helpsteer[key].responses.append(Rated(record["response"], {a: v for a, v in ratings.items() if v is not None}, where))
    return groups, report


def _score(r: Rated, weights: dict[str, float]) -> float:
    return sum(w * r.ratings[a] for a, w in weights.items())


def make_pairs(groups: list[Group], weights: dict[str, float] | None, pairing: str = "all", ties: str = "drop",
               tie_threshold: float = 0.0, report: RatingsReport | None = None,
               id_prefix: str = "ratings") -> tuple[list[PreferencePair], RatingsReport]:
    """Pairs from rated groups (module docstring); `weights` None = 1 for every aspect in the data."""
    if pairing not in PAIRINGS:
        raise ConfigError(f"--pairing {pairing!r}: choose one of {', '.join(PAIRINGS)}")
    if ties not in ("drop", "keep"):
        raise ConfigError(f"--ties {ties!r}: choose drop or keep")
    if tie_threshold < 0:
        raise ConfigError(f"--tie-threshold must be >= 0, got {tie_threshold}")
    report = report or RatingsReport()
    if weights is None:
        weights = {a: 1.0 for a in sorted({a for g in groups for r in g.responses for a in r.ratings})}
    if not weights:
        raise DataError("no ratings found in the data: nothing to order the responses by")
    pairs: list[PreferencePair] = []
    for gi, group in enumerate(groups):
        report.prompts += 1
        report.responses += len(group.responses)
        usable = []
        for index, r in enumerate(group.responses):
            missing = [a for a in weights if a not in r.ratings]
            if missing:
                report.unrated[missing[0]] += 1
            else:
                usable.append((index, r, _score(r, weights)))
        if len(usable) < 2:
            report.too_few += 1
            continue
        ranked = sorted(usable, key=lambda t: (-t[2], t[0]))  # stable: equal scores keep file order
        if pairing == "all":
            candidates = list(itertools.combinations(sorted(usable, key=lambda t: t[0]), 2))
        elif pairing == "best_worst":
            candidates = [(ranked[0], ranked[-1])]
        else:
            candidates = [(ranked[0], other) for other in ranked[1:]]
        for a, b in candidates:
            gap = a[2] - b[2]
            tie = abs(gap) <= tie_threshold
            if tie and ties == "drop":
                report.ties_dropped += 1
                continue
            if tie:
                report.ties_kept += 1
                first, second = (a, b) if a[0] < b[0] else (b, a)
            else:
                first, second = (a, b) if gap > 0 else (b, a)
            aspects = [k for k in first[1].ratings if k in second[1].ratings]
            dims = {k: {"chosen": first[1].ratings[k], "rejected": second[1].ratings[k]} for k in aspects}
            pairs.append(PreferencePair(
                prompt=list(group.prompt), chosen=first[1].text, rejected=second[1].text,
                id=f"{id_prefix}:{gi + 1}:{first[0]}>{second[0]}", dimensions=dims, source=group.where,
                extra={"tie": True} if tie else {}))
            report.pairs += 1
    return pairs, report


def parse_weights(text: str | None, option: str = "--weights") -> dict[str, float] | None:
    """"helpfulness=1,honesty=0.5" -> {"helpfulness": 1.0, "honesty": 0.5}; None when not given.
    Raises ConfigError naming `option` for a malformed item or a negative weight."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise ConfigError(f"{option}: {item!r} is not name=number (e.g. helpfulness=1,honesty=0.5)") from None
        if not name.strip() or out[name.strip()] < 0:
            raise ConfigError(f"{option}: {item!r}: give a name and a weight >= 0")
    return out


def pairs_from_ratings_command(ratings: str, out: str, format: str = "auto", weights: str | None = None,
                               pairing: str = "all", ties: str = "drop", tie_threshold: float = 0.0) -> int:
    """`prefloop data pairs-from-ratings`: write pairs (seed format, with `dimensions`) and print the counts."""
    groups, report = read_groups(ratings, format)
    pairs, report = make_pairs(groups, parse_weights(weights), pairing, ties, tie_threshold, report,
                               id_prefix=Path(ratings).stem)
    from prefloop.output_files import refuse_empty_replace, write_atomically

    pairs = list(pairs)
    refuse_empty_replace(out, len(pairs), "--out", f"{ratings}: {report.summary()}")
    write_atomically(out, lambda tmp: write_seed_jsonl(pairs, tmp))
    written = len(pairs)
    print(f"{ratings}: {report.summary()}")
    print(f"Wrote {count(written, 'pair')} to {out} (pairing {pairing}, ties {ties}).")
    return 0 if written else 1
