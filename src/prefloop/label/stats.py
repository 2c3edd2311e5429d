"""Labeling statistics: votes per annotator, tie / both-bad / skip rates, position bias, agreement.

Pure functions over the store's vote rows (verdicts relative to the stored a/b, plus the
`shown_order`); undone and replaced votes are counted apart and judged nowhere. Agreement uses the
judged categories a / b / tie / both_bad (skips are not judgments); when an annotator has several
active votes on an item, the latest counts.

- Position bias: of the decisive votes (a or b), the share won by the response shown on the LEFT
  (as "A"). 0.5 is unbiased.
- Cohen's kappa per pair of annotators on the items both judged, Fleiss' kappa over all items with 2+
  raters: both from `prefloop.stats` (formulas and sources there).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from itertools import combinations

from prefloop.stats import cohen_kappa, fleiss_kappa
from prefloop.store import Store

CATEGORIES = ("a", "b", "tie", "both_bad")
_SWAP = {"a": "b", "b": "a", "ab": "ba", "ba": "ab"}


def content_key(prompt: list[dict], response_a: str, response_b: str) -> str:
    """The comparison an item asks for, whatever order its two responses are stored in: the same prompt and
    the same two responses (as X-vs-Y or Y-vs-X, from any file or source) give the same key."""
    blob = json.dumps([prompt, sorted([response_a, response_b])], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_votes(votes: list[dict]) -> list[dict]:
    """Votes on items that ask for the same comparison (`content_key`) as votes on one item: the lowest item
    id, in its stored orientation. A vote on a flipped duplicate has its verdict (a <-> b), shown order and
    ratings flipped with it, so "the left response won" and "response X won" stay true; the item's own id
    is kept as `merged_from`. Rows without item texts (hand-made tables) are returned as they are."""
    first: dict[str, dict] = {}
    for v in sorted(votes, key=lambda v: v["item_id"]):
        if v.get("response_a") is not None and v.get("response_b") is not None:
            first.setdefault(content_key(v.get("prompt") or [], v["response_a"], v["response_b"]), v)
    out = []
    for v in votes:
        if v.get("response_a") is None or v.get("response_b") is None:
            out.append(v)
            continue
        c = first[content_key(v.get("prompt") or [], v["response_a"], v["response_b"])]
        if c["item_id"] == v["item_id"]:
            out.append(v)
            continue
        moved = {**v, "merged_from": v["item_id"], **{k: c.get(k) for k in ("item_id", "prompt", "response_a",
                                                                            "response_b", "source_a", "source_b",
                                                                            "origin")}}
        if v["response_a"] != c["response_a"]:  # stored the other way round
            moved["verdict"] = _SWAP.get(v["verdict"], v["verdict"])
            moved["shown_order"] = _SWAP.get(v["shown_order"], v["shown_order"])
            moved["ratings"] = {dim: {_SWAP[side]: x for side, x in by_side.items()}
                                for dim, by_side in (v.get("ratings") or {}).items()}
        out.append(moved)
    return out


def judgments(votes: list[dict]) -> dict[int, dict[str, str]]:
    """item id -> annotator -> verdict: each annotator's latest active vote on the item, unless it is a skip
    (a skip after a judgment withdraws it; undone and replaced rows are ignored)."""
    latest: dict[tuple[int, str], str] = {}
    for vote in sorted(votes, key=lambda v: (v.get("created_at") or "", v.get("vote_id") or 0)):
        if not vote.get("retracted") and not vote.get("superseded"):
            latest[(vote["item_id"], vote["annotator"])] = vote["verdict"]
    table: dict[int, dict[str, str]] = defaultdict(dict)
    for (item_id, annotator), verdict in latest.items():
        if verdict != "skip":
            table[item_id][annotator] = verdict
    return dict(table)


def position_bias(votes: list[dict]) -> dict:
    """How often the response shown on the left ("A") wins among decisive votes."""
    decisive = [v for v in votes if v["verdict"] in ("a", "b")]
    left_wins = sum(1 for v in decisive if (v["verdict"] == "a") == (v["shown_order"] == "ab"))
    return {"decisive_votes": len(decisive), "left_wins": left_wins,
            "left_win_rate": left_wins / len(decisive) if decisive else None}


def agreement(votes: list[dict]) -> dict:
    """Cohen's kappa for each pair of annotators with shared items, Fleiss' kappa over all items."""
    table = judgments(votes)
    annotators = sorted({a for by in table.values() for a in by})
    pairwise = []
    for x, y in combinations(annotators, 2):
        shared = [item for item, by in table.items() if x in by and y in by]
        if shared:
            kappa = cohen_kappa([table[i][x] for i in shared], [table[i][y] for i in shared])
            pairwise.append({"annotators": [x, y], "items": len(shared), "cohen_kappa": kappa})
    rows = [dict(Counter(by.values())) for by in table.values()]
    multi = [r for r in rows if sum(r.values()) >= 2]
    result = {"annotators": len(annotators), "items_with_2plus": len(multi),
              "fleiss_kappa": fleiss_kappa(rows), "pairwise_cohen": pairwise,
              "cohen_kappa": pairwise[0]["cohen_kappa"] if len(annotators) == 2 and pairwise else None}
    return result


def label_stats(votes: list[dict]) -> dict:
    """The whole report over the votes that count. `votes` may be every row of `Store.votes()`: undone
    (`retracted`) and replaced (`superseded`, the same annotator voting again on an item) rows are counted
    under "undone" and "replaced" and left out of everything else."""
    undone = sum(1 for v in votes if v.get("retracted"))
    replaced = sum(1 for v in votes if v.get("superseded") and not v.get("retracted"))
    votes = canonical_votes([v for v in votes if not v.get("retracted") and not v.get("superseded")])
    total = len(votes)
    verdicts = Counter(v["verdict"] for v in votes)
    per_annotator: dict[str, Counter] = defaultdict(Counter)
    for v in votes:
        per_annotator[v["annotator"]][v["verdict"]] += 1

    def rate(key: str) -> float | None:
        return verdicts[key] / total if total else None

    return {
        "votes": total,
        "items_voted": len({v["item_id"] for v in votes}),
        "verdicts": {k: verdicts[k] for k in (*CATEGORIES, "skip")},
        "undone": undone, "replaced": replaced,
        "tie_rate": rate("tie"), "both_bad_rate": rate("both_bad"), "skip_rate": rate("skip"),
        "per_annotator": {a: {"votes": sum(c.values()), **{k: c[k] for k in (*CATEGORIES, "skip")}}
                          for a, c in sorted(per_annotator.items())},
        "position_bias": position_bias(votes),
        "agreement": agreement(votes),
    }


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(stats: dict, name=str) -> str:
    """Markdown-friendly text of `label_stats` (used by the CLI and the page's statistics panel).
    `name` formats annotator names (the page passes `prefloop.render.escape_markdown`)."""
    lines = [f"votes: {stats['votes']} on {stats['items_voted']} items "
             f"(A/B decisive {stats['verdicts']['a'] + stats['verdicts']['b']}, tie {stats['verdicts']['tie']}, "
             f"both bad {stats['verdicts']['both_bad']}, skip {stats['verdicts']['skip']})",
             f"tie rate {_num(stats['tie_rate'])} · both-bad rate {_num(stats['both_bad_rate'])} · "
             f"skip rate {_num(stats['skip_rate'])}"]
    if stats.get("undone") or stats.get("replaced"):
        lines.append(f"not counted: {stats.get('undone', 0)} undone votes, {stats.get('replaced', 0)} replaced by the "
                     "same annotator's later vote on the item")
    bias = stats["position_bias"]
    lines.append(f"position bias: the left (A) response won {bias['left_wins']} of {bias['decisive_votes']} "
                 f"decisive votes (rate {_num(bias['left_win_rate'])}; 0.5 = no bias)")
    lines = [line for summary in lines for line in (summary, "")]  # blank lines: separate paragraphs in markdown
    lines.append("votes per annotator (a/b: the stored responses, whatever side they were shown on)")
    lines.append("")
    lines.append("| annotator | votes | a | b | tie | both bad | skip |")
    lines.append("|---|---|---|---|---|---|---|")
    for annotator, c in stats["per_annotator"].items():
        lines.append(f"| {name(annotator)} | {c['votes']} | {c['a']} | {c['b']} | {c['tie']} | {c['both_bad']} | {c['skip']} |")
    agree = stats["agreement"]
    lines.append("")
    lines.append(f"agreement: {agree['annotators']} annotators, {agree['items_with_2plus']} items judged by 2+; "
                 f"Fleiss' kappa {_num(agree['fleiss_kappa'])}"
                 + (f", Cohen's kappa {_num(agree['cohen_kappa'])}" if agree["annotators"] == 2 else ""))
    for pair in agree["pairwise_cohen"]:
        lines.append(f"- Cohen's kappa {name(pair['annotators'][0])} vs {name(pair['annotators'][1])}: "
                     f"{_num(pair['cohen_kappa'])} on {pair['items']} shared items")
    return "\n".join(lines)


def label_stats_command(db: str, json: bool = False) -> int:  # noqa: A002 - named like the CLI flag
    """`prefloop label-stats`: print the report (or JSON) for the votes in the store."""
    from pathlib import Path

    from prefloop.errors import ConfigError

    if not Path(db).exists():
        raise ConfigError(f"{db}: no such store; label some items first (prefloop label --db {db})")
    with Store(db) as store:
        stats = label_stats(store.votes())  # undone and replaced votes are counted apart
    print(_json_dumps(stats) if json else format_report(stats))
    return 0


def _json_dumps(value: dict) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
