"""Where label items come from: a file of prompts with two or more candidate responses each.

Accepted item files (.jsonl, .json list, .parquet), detected from the first record:
- candidates (e.g. `prefloop generate` output, read by `prefloop.candidates`): every unordered pair of a
  prompt's distinct candidates becomes one item (N candidates -> N*(N-1)/2 items);
- preference data in any format the data layer reads (`prefloop.data.loader.load_pairs`): each pair
  becomes one item of its two answers, sources "chosen"/"rejected" (hidden until after the vote).
Records are read by the data layer's `iter_records`, so a bad JSON line is reported with its number.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from prefloop.candidates import is_candidate_record, read_candidates, read_records
from prefloop.data.loader import load_pairs
from prefloop.errors import DataError
from prefloop.prompts import read_prompts


@dataclass
class Item:
    """One comparison to store: a prompt (role/content turns ending with a user turn) and two responses."""

    prompt: list[dict]
    response_a: str
    response_b: str
    source_a: str | None
    source_b: str | None
    origin: str


def items_from_candidates(records: list[tuple[str, dict]]) -> tuple[list[Item], int]:
    """Every unordered pair of each prompt's distinct candidates; returns (items, prompts with < 2 distinct)."""
    read = read_candidates("", records)
    items = []
    for found in read.sets:
        unique = zip(found.indices, found.candidates, found.sources)
        for (i, text_i, src_i), (j, text_j, src_j) in combinations(unique, 2):
            items.append(Item(found.messages, text_i, text_j, src_i, src_j, f"{found.id}#{i}-{j}"))
    return items, read.too_few


def items_from_pairs(path: str | Path) -> list[Item]:
    """Preference data in any accepted format: chosen vs rejected of each pair.

    A label item's responses are texts (shown, stored and exported as text), so a pair whose answers
    carry more than text (tool calls, reasoning, a name, a function-call role: `PreferencePair.answer_extras`)
    cannot be one without losing it: such pairs are left out, counted, and the first is named on stderr."""
    items, refused = [], []
    for index, pair in enumerate(load_pairs(str(path)).pairs):
        origin = pair.id or pair.source or f"{Path(path).name}#{index}"
        extras = pair.answer_extras()
        if extras:
            refused.append((pair.source or origin, extras))
            continue
        items.append(Item(pair.prompt_messages(), pair.chosen, pair.rejected, "chosen", "rejected", origin))
    if refused:
        where, extras = refused[0]
        print(f"prefloop label: {path}: {len(refused)} pair(s) left out: their answers carry tool calls, reasoning, "
              f"names or a function-call role, which a label item (two response texts) would drop; first at {where}: "
              f"field(s) {', '.join(extras)}; label text-only answers instead",
              file=sys.stderr)
    return items


def load_items(path: str | Path) -> tuple[list[Item], int]:
    """Items of a candidates file or of preference data; returns (items, prompts skipped)."""
    records = read_records(path)
    first = records[0][1]
    if is_candidate_record(first):
        items, skipped = items_from_candidates(records)
    elif "chosen" in first and "rejected" in first:
        items, skipped = items_from_pairs(path), 0
    else:
        raise DataError(f"{records[0][0]}: neither candidates nor preference data (keys: {sorted(first)[:10]}); "
                        "expected {'prompt'|'messages'|'conversations': ..., 'candidates': [...]} or a preference "
                        "pair with 'chosen' and 'rejected'")
    if not items:
        raise DataError(f"{path}: no prompt has two different responses to compare (pairs left out are reported above)")
    return items, skipped


def load_prompts(path: str | Path) -> list[list[dict]]:
    """Prompts for live mode, through the project's one prompt reader (`prefloop.prompts.read_prompts`)."""
    if not Path(path).exists():
        raise DataError(f"{path}: file not found; check the path")
    return [prompt.messages for prompt in read_prompts(str(path)).prompts]
