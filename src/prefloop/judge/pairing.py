"""Which candidate answers to compare, and which pair to keep.

- `all_pairs`: every pair of distinct answers.
- `random`: one random pair per prompt (seeded by --seed and the prompt, so reruns agree).
- `max_min`: best vs worst of N (the online iterative DPO recipe). With a reward model, by score;
  with an LLM judge, every pair is judged and answers are ranked by wins (a tie counts half).
"""

from __future__ import annotations

import itertools
import random

PAIRINGS = ("max_min", "all_pairs", "random")


def candidate_pairs(n: int, pairing: str, rng: random.Random) -> list[tuple[int, int]]:
    """Index pairs (i < j) to compare; max_min compares all of them to rank the answers."""
    if pairing == "random":
        return [tuple(sorted(rng.sample(range(n), 2)))]
    return list(itertools.combinations(range(n), 2))


def best_and_worst(scores: list[float]) -> tuple[int, int] | None:
    """(index of the highest score, index of the lowest); None when all scores are equal.
    Equal scores resolve to the earliest index, so the choice is deterministic."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return None if scores[best] == scores[worst] else (best, worst)


def win_scores(n: int, outcomes: dict[tuple[int, int], str]) -> list[float]:
    """Per answer: 1 per comparison won, 0.5 per tie (judged pairs only)."""
    scores = [0.0] * n
    for (x, y), outcome in outcomes.items():
        if outcome == "x":
            scores[x] += 1
        elif outcome == "y":
            scores[y] += 1
        elif outcome == "tie":
            scores[x] += 0.5
            scores[y] += 0.5
    return scores
