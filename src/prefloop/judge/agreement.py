"""`prefloop judge-agreement`: how often a judge agrees with people on the same comparisons.

Items are matched by content: the same conversation and the same two answers (in any order).
Each active human vote (skips excluded; "both bad" counts as a tie) is compared with the judge's
outcome for that item: the chosen answer from PREFS.jsonl, or a tie from PREFS.ties.jsonl when
`prefloop judge --keep-ties` wrote one next to it. Reported: agreement rate, agreement on votes
where both sides picked a winner, Cohen's kappa (agreement corrected for chance), and the
confusion table. A team checks a judge this way before trusting its pairs.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from prefloop.data.formats import RecordError, record_to_pair
from prefloop.errors import DataError, json_error_text
from prefloop.judge.run import sibling
from prefloop.prompts import prompt_key
from prefloop.stats import cohen_kappa



def _item(messages: list[dict], answer_1: str, answer_2: str) -> tuple[str, str, str]:
    first, second = sorted((answer_1, answer_2))
    return prompt_key(messages), first, second


def _label(item: tuple[str, str, str], winner: str | None) -> str:
    if winner is None:
        return "tie"
    return "first" if winner == item[1] else "second"


def _json_lines(path: Path, what: str):
    """(line number, record) of a JSON Lines file; a line that is not a JSON object is a located DataError."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason}); {what}") from err
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: {json_error_text(err, with_line=False)}; {what}") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}; {what}")
        yield lineno, record


def read_judge_outcomes(path: Path) -> dict[tuple[str, str, str], str]:
    """item -> "first" | "second" | "tie" from a judge output file (and its ties file, if present).

    Raises DataError naming file, line and field for a line that is not what `prefloop judge` writes.
    """
    if not path.is_file():
        raise DataError(f"judge output {path} does not exist; write it with prefloop judge")
    outcomes: dict[tuple[str, str, str], str] = {}
    refused: list[tuple[int, list[str]]] = []
    for lineno, record in _json_lines(path, "--judge must be a PREFS.jsonl written by prefloop judge"):
        try:
            _, pair = record_to_pair(record)
        except RecordError as err:
            field = f"field '{err.field}': " if err.field else ""
            raise DataError(f"{path}:{lineno}: not a preference pair: {field}{err.message}; --judge must be a "
                            "PREFS.jsonl written by prefloop judge") from err
        extras = pair.answer_extras()
        if extras:  # label items are text-only answers: matching by text would take A+tool call for A
            refused.append((lineno, extras))
            continue
        item = _item(pair.prompt_messages(), pair.chosen, pair.rejected)
        outcomes[item] = _label(item, pair.chosen)
    if refused:
        lineno, extras = refused[0]
        print(f"prefloop judge-agreement: {len(refused)} judge pair(s) in {path} left out: their answers carry tool "
              f"calls, reasoning, names or a function-call role, and human votes are on text-only answers, so "
              f"matching by text could pair them with the wrong item; first at {path}:{lineno}: field(s) "
              f"{', '.join(extras)}", file=sys.stderr)
    ties = sibling(path, ".ties.jsonl")
    if ties.is_file():
        what = f"{ties} is read as the ties file of {path}; remove or regenerate it with prefloop judge --keep-ties"
        for lineno, record in _json_lines(ties, what):
            if record.get("outcome") != "tie":
                continue
            messages, a, b = record.get("messages"), record.get("response_a"), record.get("response_b")
            bad = [k for k, v in (("messages", messages), ("response_a", a), ("response_b", b))
                   if not isinstance(v, list if k == "messages" else str)]
            if bad or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
                field = bad[0] if bad else "messages"
                raise DataError(f"{ties}:{lineno}: field '{field}' is missing or malformed; {what}")
            outcomes[_item(messages, a, b)] = "tie"
    return outcomes


def agreement_report(votes: list[dict], outcomes: dict) -> dict:
    compared: list[tuple[str, str]] = []
    unmatched, skipped = 0, 0
    items = set()
    for vote in votes:
        if vote["verdict"] == "skip":
            skipped += 1
            continue
        item = _item(vote["prompt"], vote["response_a"], vote["response_b"])
        if item not in outcomes:
            unmatched += 1
            continue
        winner = {"a": vote["response_a"], "b": vote["response_b"]}.get(vote["verdict"])
        compared.append((_label(item, winner), outcomes[item]))
        items.add(item)
    decisive = [(h, j) for h, j in compared if h != "tie" and j != "tie"]
    confusion = Counter(f"human {h} / judge {j}" for h, j in compared)
    return {
        "votes": len(votes), "skipped_votes": skipped, "votes_without_judge_outcome": unmatched,
        "votes_compared": len(compared), "items_compared": len(items),
        "agreement": sum(h == j for h, j in compared) / len(compared) if compared else None,
        "agreement_without_ties": sum(h == j for h, j in decisive) / len(decisive) if decisive else None,
        "decisive_votes": len(decisive), "cohens_kappa": cohen_kappa([h for h, _ in compared], [j for _, j in compared]), "confusion": dict(confusion),
    }


def judge_agreement_command(human, judge) -> int:
    from prefloop.store import Store

    if not Path(human).is_file():
        raise DataError(f"store {human} does not exist; point --human at the prefloop SQLite file with the votes")
    with Store(human, option="--human") as store:
        votes = store.active_votes()
    report = agreement_report(votes, read_judge_outcomes(Path(judge)))
    print(json.dumps(report, indent=2))
    if not report["votes_compared"]:
        print(f"prefloop judge-agreement: none of the {report['votes']} human votes in {human} is on a comparison the "
              f"judge output {judge} holds (items match by conversation and both answers); judge the same "
              "candidates people labeled", file=sys.stderr)
        return 1

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(f"prefloop judge-agreement: {report['votes_compared']} votes on {report['items_compared']} items: agreement "
          f"{fmt(report['agreement'])}, without ties {fmt(report['agreement_without_ties'])} "
          f"({report['decisive_votes']} votes), Cohen's kappa {fmt(report['cohens_kappa'])}", file=sys.stderr)
    return 0
