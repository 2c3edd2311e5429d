"""Multi-objective preference data: per-dimension scores combined into one direction per pair.

A pair may carry `dimensions`, one score per response and dimension (the labeling app's ratings,
`prefloop data pairs-from-ratings`, or the data itself):

    {"helpfulness": {"chosen": 5, "rejected": 3}, "safety": {"chosen": 5, "rejected": 4}}

With weights w (`pref_dimensions`), the pair's combined score gap is

    d = sum_k w_k * (s_k(chosen) - s_k(rejected))

(a dimension the pair has no score for adds 0 and is counted). d > 0 agrees with the data's label;
d < 0 contradicts it and `dimension_conflicts` decides: `flip` swaps chosen and rejected, `drop`
removes the pair, `keep` trains it as labeled. d = 0 is a tie: kept as labeled under `flip` and
`keep`, removed under `drop`. `dimension_weighting` then scales the pair by |d|: `weight` multiplies
its loss weight by |d| / mean |d| (mean over the pairs kept, so the average weight stays 1),
`margin` sets its target reward margin to |d| (in the units of the weighted scores: choose the
weights to set the scale). Every flip, drop, tie and missing score is counted in `DimensionReport`.

Per-dimension agreement (for training metrics and `data check`): dimension k agrees with a pair when
s_k(chosen) > s_k(rejected) (after any flip), disagrees when <, and says nothing when = or absent.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from prefloop.data.schema import PreferencePair, not_a_number
from prefloop.errors import ConfigError, DataError
from prefloop.data.words import count, plural

AGREES, DISAGREES, NO_SIGNAL = 1, 0, -1
CONTRADICTION_WARN = 0.5  # warn when two dimensions disagree on more than this share of the pairs both decide


def _where(pair: PreferencePair) -> str:
    return pair.source or pair.id or "a pair"


def is_comparative(entry) -> bool:
    """True for {"chosen": score, "rejected": score}; a single score for the pair ({"accuracy": 5}) is not."""
    return isinstance(entry, dict) and "chosen" in entry and "rejected" in entry


def dimension_problem(name: str, entry: object) -> tuple[str, str, str] | None:
    """What is wrong with one `dimensions` entry, as (field, message, suggestion), or None when it is
    usable: one number for the pair ({"accuracy": 5}), {"chosen": number, "rejected": number}, or one side
    only ({"chosen": 4}: one answer rated, as `prefloop export` writes it; it gives no direction and counts
    as a missing score).

    The one check of dimension scores: the readers run it per row (a bad entry is a bad row with its
    file:line, counted under skip_bad_rows), so `data check` and training treat it identically."""
    where = f"dimensions.{name}"
    if isinstance(entry, dict):
        missing = [side for side in ("chosen", "rejected") if side not in entry]
        if len(missing) == 2:
            return (where, f"an object without 'chosen' and 'rejected' scores (keys: {sorted(entry)})",
                    'write {"chosen": 5, "rejected": 3}, or one number for the pair')
        others = sorted(k for k in entry if k not in ("chosen", "rejected"))
        if others:
            return (where, f"{plural('unknown key', len(others))} {', '.join(repr(k) for k in others)} (only 'chosen' and 'rejected' are read)",
                    "remove them, or move them to a field of their own")
        for side in ("chosen", "rejected"):
            if side not in entry:  # one answer rated (the labeling app's export): no direction, counted as missing
                continue
            problem = not_a_number(entry[side])
            if problem:
                return f"{where}.{side}", problem, "write the score as a number"
        return None
    problem = not_a_number(entry)
    if problem:
        return where, problem, 'write the score as a number, or {"chosen": number, "rejected": number}'
    return None


def score_gap(pair: PreferencePair, name: str, strict: bool = True) -> float | None:
    """s(chosen) - s(rejected) of dimension `name`, None when the pair has no score for it or only one answer's
    (or, with strict=False, only one score for the pair rather than one per response).

    Raises DataError (with the pair's file:line) when the entry is not {"chosen": number, "rejected": number}
    (strict), or when a score is not a number (`dimension_problem`; pairs read by the loader were checked).
    """
    entry = (pair.dimensions or {}).get(name)
    if entry is None or (not strict and not is_comparative(entry)) or (isinstance(entry, dict) and not is_comparative(entry)):
        return None  # no score, a single score (not strict), or one answer rated only: no direction
    if not is_comparative(entry):
        raise DataError(f"{_where(pair)}: field 'dimensions.{name}': expected {{\"chosen\": score, \"rejected\": "
                        f"score}}, got {entry!r} -> give both responses' scores for every dimension")
    problem = dimension_problem(name, entry)
    if problem:
        field_name, message, suggestion = problem
        raise DataError(f"{_where(pair)}: field '{field_name}': {message} -> {suggestion}")
    return float(entry["chosen"]) - float(entry["rejected"])


def dimension_names(pairs: Sequence[PreferencePair]) -> list[str]:
    """Every dimension the data scores per response ({"chosen", "rejected"}), sorted."""
    return sorted({name for p in pairs for name, entry in (p.dimensions or {}).items() if is_comparative(entry)})


def single_score_names(pairs: Sequence[PreferencePair]) -> dict[str, int]:
    """Dimensions given as one score for the whole pair ({"accuracy": 5}): name -> pairs. They carry no
    direction, so they take no part in agreement or weighting."""
    counts = Counter(name for p in pairs for name, entry in (p.dimensions or {}).items() if not isinstance(entry, dict))
    return dict(sorted(counts.items()))


def combined_gap(pair: PreferencePair, weights: dict[str, float]) -> tuple[float, list[str]]:
    """(d = sum_k w_k * gap_k, the weighted dimensions the pair has no score for)."""
    total, missing = 0.0, []
    for name, weight in weights.items():
        gap = score_gap(pair, name)
        if gap is None:
            missing.append(name)
        else:
            total += float(weight) * gap
    return total, missing


def swap(pair: PreferencePair) -> PreferencePair:
    """The pair with chosen and rejected exchanged (their answer turns' fields and dimension scores too)."""
    dims = {name: ({"chosen": v["rejected"], "rejected": v["chosen"]} if isinstance(v, dict) else v)
            for name, v in (pair.dimensions or {}).items()} if pair.dimensions is not None else None
    return dataclasses.replace(pair.swapped(), dimensions=dims)


@dataclass
class DimensionReport:
    """What combining dimensions did to a dataset; every count is over input pairs."""

    pairs: int = 0
    agree: int = 0  # d > 0
    conflicts: int = 0  # d < 0
    flipped: int = 0
    dropped: int = 0  # conflicts dropped (drop)
    ties_dropped: int = 0  # ties dropped (drop)
    kept_against: int = 0  # conflicts trained as labeled (keep)
    ties: int = 0  # d == 0
    without_dimensions: int = 0  # pairs with no scores at all: kept unchanged
    missing: Counter = field(default_factory=Counter)  # dimension -> pairs scored on others but not on it

    def summary(self) -> str:
        text = (f"dimensions: {count(self.pairs, 'pair')}, {self.agree} agree with the weighted scores, {self.conflicts} "
                f"contradict them ({self.flipped} flipped, {self.dropped} dropped, {self.kept_against} kept as "
                f"labeled), {count(self.ties, 'tie')} ({self.ties_dropped} dropped)")
        if self.without_dimensions:
            text += f", {self.without_dimensions} without dimension scores (kept as labeled)"
        if self.missing:
            text += "; missing scores (counted as 0): " + ", ".join(f"{n} {k}" for k, n in sorted(self.missing.items()))
        return text

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in ("pairs", "agree", "conflicts", "flipped", "dropped", "kept_against",
                                                 "ties", "ties_dropped", "without_dimensions")}, "missing": dict(self.missing)}


def check_weight_names(pairs: Sequence[PreferencePair], weights: dict[str, float] | None, option: str) -> None:
    """Every weighted dimension must be scored in at least one pair: a name no pair has is a typo, and
    weighting by it would silently combine the other dimensions alone. Raises ConfigError naming `option`
    (with the closest name the data has). No check when no pair has dimensions (the callers report that).
    Used by `data check --dimension-weights`; training counts a weighted dimension a pair lacks per pair
    (`DimensionReport.missing`, in the data summary), since one round's data may lack a dimension."""
    present = {name for p in pairs for name in (p.dimensions or {})}
    if not weights or not present:
        return
    unknown = [name for name in weights if name not in present]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(present), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{option}: no pair has a dimension {unknown[0]!r}{hint}; the data's dimensions are "
                          f"{', '.join(sorted(present))}")


def apply_dimensions(pairs: Sequence[PreferencePair], weights: dict[str, float], conflicts: str = "flip",
                     weighting: str = "none") -> tuple[list[PreferencePair], DimensionReport]:
    """Direct, drop and scale `pairs` by their weighted dimension scores (module docstring).

    `conflicts`: flip | drop | keep; `weighting`: none | weight | margin. Returns new pairs (inputs are
    not modified) and the counts. Raises DataError on malformed scores, and when `weighting: margin`
    meets a pair that already has its own margin (one of the two would be lost).
    """
    if conflicts not in ("flip", "drop", "keep"):
        raise ValueError(f"dimension_conflicts must be flip, drop or keep, got {conflicts!r}")
    if weighting not in ("none", "weight", "margin"):
        raise ValueError(f"dimension_weighting must be none, weight or margin, got {weighting!r}")
    report = DimensionReport(pairs=len(pairs))
    kept: list[tuple[PreferencePair, float | None]] = []
    for pair in pairs:
        if not pair.dimensions:
            report.without_dimensions += 1
            kept.append((pair, None))
            continue
        gap, missing = combined_gap(pair, weights)
        report.missing.update(missing)
        if gap > 0:
            report.agree += 1
        elif gap == 0:
            report.ties += 1
            if conflicts == "drop":
                report.ties_dropped += 1
                continue
        else:
            report.conflicts += 1
            if conflicts == "drop":
                report.dropped += 1
                continue
            if conflicts == "flip":
                report.flipped += 1
                pair = swap(pair)
            else:
                report.kept_against += 1
        kept.append((pair, abs(gap)))
    gaps = [g for _, g in kept if g is not None]
    mean_gap = sum(gaps) / len(gaps) if gaps else 0.0
    out = []
    for pair, gap in kept:
        if gap is not None and weighting == "weight":
            scale = gap / mean_gap if mean_gap > 0 else 1.0
            pair = dataclasses.replace(pair, weight=(1.0 if pair.weight is None else pair.weight) * scale)
        elif gap is not None and weighting == "margin":
            if pair.margin is not None:
                raise DataError(f"{_where(pair)}: field 'margin': the pair has its own margin and "
                                f"dimension_weighting: margin would replace it -> remove one of the two")
            pair = dataclasses.replace(pair, margin=gap)
        out.append(pair)
    return out, report


def agreement(pair: PreferencePair, names: Sequence[str]) -> list[int]:
    """Per dimension: AGREES (chosen scored higher), DISAGREES (lower) or NO_SIGNAL (equal or no score)."""
    out = []
    for name in names:
        gap = score_gap(pair, name, strict=False)
        out.append(NO_SIGNAL if gap is None or gap == 0 else AGREES if gap > 0 else DISAGREES)
    return out


def dimension_accuracy(margins: Sequence[float], agree: Sequence[Sequence[int]], names: Sequence[str]) -> dict:
    """Per dimension: reward accuracy over the pairs whose dimension agrees with the pair's direction.

    `margins`: one implicit reward margin per pair (beta * [(pi_c - ref_c) - (pi_r - ref_r)]); `agree`:
    each pair's `agreement` vector over `names`. A margin of 0 counts as half right (a tie), as the
    trainer's `rewards/accuracies` does. Returns {name: {"accuracy" (None without agreeing pairs),
    "pairs" (agreeing pairs), "agreement" (share of pairs scored on it that agree)}}.
    """
    out = {}
    for k, name in enumerate(names):
        agreeing = [m for m, a in zip(margins, agree) if a[k] == AGREES]
        scored = sum(1 for a in agree if a[k] != NO_SIGNAL)
        correct = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in agreeing)
        out[name] = {"accuracy": correct / len(agreeing) if agreeing else None, "pairs": len(agreeing),
                     "agreement": len(agreeing) / scored if scored else None}
    return out


def attach_agreement(features: list[dict], pairs: Sequence[PreferencePair], names: Sequence[str]) -> None:
    """Put each feature's per-dimension agreement ([K] ints) under "dimension_agree". `pairs[i]` is the pair
    behind `features[i]` (matched by position: ids come from the data and may repeat)."""
    for f, pair in zip(features, pairs, strict=True):
        f["dimension_agree"] = agreement(pair, names)


def agreement_report(pairs: Sequence[PreferencePair], weights: dict[str, float] | None = None) -> dict:
    """`data check`'s per-dimension view: how often each dimension agrees with the combined preference
    (the data's label, or the weighted scores' direction when `weights` is given), and pairs of
    dimensions that contradict each other in most of the pairs where both decide."""
    names, single = dimension_names(pairs), single_score_names(pairs)
    if not names:
        return {"single_scores": single} if single else {}
    directed = [swap(p) if weights and combined_gap(p, weights)[0] < 0 else p for p in pairs if p.dimensions]
    per_dim = {}
    for k, name in enumerate(names):
        votes = Counter(agreement(p, [name])[0] for p in directed if is_comparative((p.dimensions or {}).get(name)))
        scored = sum(votes.values())
        decided = votes[AGREES] + votes[DISAGREES]
        per_dim[name] = {"scored": scored, "agree": votes[AGREES], "disagree": votes[DISAGREES],
                         "ties": votes[NO_SIGNAL], "agreement": round(votes[AGREES] / decided, 4) if decided else None}
    contradictions = []
    for a, b in itertools.combinations(names, 2):
        both = [(agreement(p, [a])[0], agreement(p, [b])[0]) for p in directed]
        both = [(x, y) for x, y in both if x != NO_SIGNAL and y != NO_SIGNAL]
        if not both:
            continue
        share = sum(1 for x, y in both if x != y) / len(both)
        entry = {"dimensions": [a, b], "pairs": len(both), "contradict": round(share, 4)}
        contradictions.append(entry)
    warnings = [f"{c['dimensions'][0]} and {c['dimensions'][1]} contradict each other in {100 * c['contradict']:.0f}% "
                f"of the {c['pairs']} pairs both decide: training on their sum pulls in opposite directions; "
                f"consider pref_loss: modpo (one objective as the data, the other as a margin model) or separate rounds"
                for c in contradictions if c["contradict"] > CONTRADICTION_WARN]
    return {"combined": "weighted scores" if weights else "the data's chosen/rejected label", "weights": weights,
            "pairs_with_dimensions": len(directed), "per_dimension": per_dim, "contradictions": contradictions,
            "warnings": warnings, "single_scores": single}
