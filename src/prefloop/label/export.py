"""Store -> training pairs in the seed's format: majority vote per item, with every left-out item counted.

The file is written whole or not at all (a temporary file renamed over OUT) and holds the whole store's
resolved votes each time: exporting twice gives the same file, never pairs appended twice.

Per item, each annotator's latest active vote counts (a skip judges nothing; a vote sent twice counts once). The majority verdict wins; a tie for
the top verdict is a conflict without majority and is left out. `agreement` is the majority's share
of the item's votes; items below `--min-agreement` are left out. An item whose verdict is "tie" is
written only with `--include-ties` (marked `"tie": true`, chosen = stored A); "both bad" and skip-only
items are never training pairs. Items where annotators disagreed are reported as conflicts. Items that
ask for the same comparison (the same prompt and responses, stored in either order) are one item, their
votes mapped onto its order. Held-out eval items (`prefloop eval winrate --human-db`), forgotten ones
and items whose two responses are the same text are no training data: left out and counted.

Each pair carries provenance: `annotators`, `votes` (verdict counts relative to the written
chosen/rejected), `agreement`, `label_item`, the sources of chosen and rejected; and `dimensions`
({dimension: {"chosen": mean rating, "rejected": mean rating}}) when annotators rated.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.data.formats import write_seed_jsonl
from prefloop.data.schema import Message, PreferencePair
from prefloop.errors import ConfigError
from prefloop.label.stats import canonical_votes, judgments
from prefloop.output_files import refuse_empty_replace, write_atomically
from prefloop.store import FORGOTTEN, Store


@dataclass
class ExportReport:
    items: int = 0
    written: int = 0
    ties_written: int = 0
    left_out: Counter = field(default_factory=Counter)  # reason -> items
    conflicts: list[dict] = field(default_factory=list)  # items where annotators disagreed
    merged: dict[int, int] = field(default_factory=dict)  # item -> the item asking the same comparison it joined

    def summary(self) -> str:
        out = [f"{self.items} voted items -> {self.written} pairs written"
               + (f" ({self.ties_written} ties)" if self.ties_written else "")]
        if self.left_out:
            out.append("left out: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items())))
        if self.conflicts:
            resolved = sum(1 for c in self.conflicts if c["resolved"])
            out.append(f"conflicts: {len(self.conflicts)} items with disagreeing annotators "
                       f"({resolved} resolved by majority, {len(self.conflicts) - resolved} without majority)")
            for c in self.conflicts[:10]:
                out.append(f"  item {c['item_id']}: " + ", ".join(f"{a}={v}" for a, v in sorted(c["votes"].items()))
                           + (f" -> {c['resolved']}" if c["resolved"] else " -> no majority, left out"))
            if len(self.conflicts) > 10:
                out.append(f"  ... and {len(self.conflicts) - 10} more")
        return "\n".join(out)


EVAL_ORIGIN_PREFIX = "eval-winrate:"  # = prefloop.evaluate.winrate.ORIGIN_PREFIX (not imported: label knows no eval)

# Items whose votes are no training data, each left out and counted under its reason.
_NOT_TRAINING_DATA = (
    ("held-out eval items (prefloop eval winrate --human-db)",
     lambda v: str(v.get("origin") or "").startswith(EVAL_ORIGIN_PREFIX)),
    ("forgotten on request", lambda v: FORGOTTEN in (v.get("response_a"), v.get("response_b"))),
    ("identical responses", lambda v: v.get("response_a") is not None and v.get("response_a") == v.get("response_b")),
)


def _mean_ratings(votes: list[dict], chosen_side: str) -> dict | None:
    """{dim: {"chosen": mean, "rejected": mean}} over the item's rated votes (None when nobody rated)."""
    other = "b" if chosen_side == "a" else "a"
    sums: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"chosen": [], "rejected": []})
    for vote in votes:
        for dim, by_side in (vote.get("ratings") or {}).items():
            if chosen_side in by_side:
                sums[dim]["chosen"].append(by_side[chosen_side])
            if other in by_side:
                sums[dim]["rejected"].append(by_side[other])
    dims = {dim: {k: round(sum(v) / len(v), 4) for k, v in sides.items() if v} for dim, sides in sums.items()}
    return {d: v for d, v in dims.items() if v} or None


def resolve(votes: list[dict], min_agreement: float = 0.0,
            include_ties: bool = False) -> tuple[list[PreferencePair], ExportReport]:
    """Majority resolution of active votes into pairs; the report counts everything left out."""
    report = ExportReport()
    votes = [v for v in votes if not v.get("retracted") and not v.get("superseded")]  # undone or replaced: no vote
    for reason, test in _NOT_TRAINING_DATA:
        left = {v["item_id"] for v in votes if test(v)}
        if left:
            report.left_out[reason] += len(left)
        votes = [v for v in votes if v["item_id"] not in left]
    votes = canonical_votes(votes)  # the same comparison stored twice (X-vs-Y and Y-vs-X) is one item
    report.merged = {v["merged_from"]: v["item_id"] for v in votes if "merged_from" in v}
    merged = set(report.merged)
    if merged:
        report.left_out["merged into an item asking the same comparison (their votes count there)"] += len(merged)
    by_item: dict[int, list[dict]] = defaultdict(list)
    for vote in votes:
        by_item[vote["item_id"]].append(vote)
    table = judgments(votes)
    pairs = []
    report.items = sum(report.left_out.values())  # the items left out above were voted items too
    for item_id in sorted(by_item):
        report.items += 1
        item_votes = by_item[item_id]
        judged = table.get(item_id, {})
        if not judged:
            report.left_out["skipped only"] += 1
            continue
        counts = Counter(judged.values())
        ranked = counts.most_common()
        top, top_count = ranked[0]
        no_majority = len(ranked) > 1 and ranked[1][1] == top_count
        if len(counts) > 1:
            report.conflicts.append({"item_id": item_id, "votes": dict(judged),
                                     "resolved": None if no_majority else top})
        if no_majority:
            report.left_out["without majority"] += 1
            continue
        agreement = top_count / sum(counts.values())
        if agreement < min_agreement:
            report.left_out[f"below agreement {min_agreement:g}"] += 1
            continue
        if top == "both_bad":
            report.left_out["both bad"] += 1
            continue
        if top == "tie" and not include_ties:
            report.left_out["ties"] += 1
            continue
        item = item_votes[0]
        chosen_side = "b" if top == "b" else "a"
        rejected_side = "a" if chosen_side == "b" else "b"
        counted = [v for v in item_votes if judged.get(v["annotator"]) == v["verdict"] and v["verdict"] != "skip"]
        relative = {"a": "chosen" if chosen_side == "a" else "rejected",
                    "b": "chosen" if chosen_side == "b" else "rejected", "tie": "tie", "both_bad": "both_bad"}
        extra = {"annotators": sorted(judged), "votes": dict(Counter(relative[v] for v in judged.values())),
                 "agreement": round(agreement, 4), "label_item": item_id,
                 "chosen_source": item[f"source_{chosen_side}"], "rejected_source": item[f"source_{rejected_side}"]}
        if top == "tie":
            extra["tie"] = True
            report.ties_written += 1
        pairs.append(PreferencePair(
            prompt=[Message.from_dict(m) for m in item["prompt"]],  # tool calls, names, reasoning kept
            chosen=item[f"response_{chosen_side}"], rejected=item[f"response_{rejected_side}"],
            id=f"label-{item_id}", source=f"prefloop label item {item_id}" + (f" ({item['origin']})"
                                                                            if item.get("origin") else ""),
            dimensions=_mean_ratings(counted, chosen_side), extra=extra))
        report.written += 1
    return pairs, report


def export_command(db: str, out: str, min_agreement: float = 0.0, include_ties: bool = False,
                   interactions: bool = False, scrub_pii: bool = False) -> int:
    """`prefloop export`: write the resolved pairs as seed-format JSONL and print what was left out
    (`interactions`: the pairs user feedback on served answers gives instead, see loop/feedback_pairs.py)."""
    if interactions:
        from prefloop.loop.feedback_pairs import export_interactions

        return export_interactions(db, out, scrub_pii)
    if scrub_pii:
        raise ConfigError("--scrub-pii applies to --interactions (votes come from the label app's own items)")
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"--min-agreement must be between 0 and 1, got {min_agreement}")
    if not Path(db).exists():
        raise ConfigError(f"{db}: no such store; label some items first (prefloop label --db {db})")
    with Store(db) as store:
        votes = store.active_votes()
    pairs, report = resolve(votes, min_agreement=min_agreement, include_ties=include_ties)
    if not pairs:  # never swap data for an empty file
        left = f"; left out: {', '.join(f'{n} {r}' for r, n in sorted(report.left_out.items()))}" if report.left_out \
            else ""
        try:
            refuse_empty_replace(out, 0, "--out", f"nothing to export ({report.items} voted items in {db}{left}); "
                                 "label some items first (prefloop label)")
        except ConfigError:
            print(report.summary())
            raise
    try:
        write_atomically(out, lambda tmp: write_seed_jsonl(pairs, tmp))
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write it ({err.strerror or err}); nothing was written. Give a file "
                          "path in a writable folder") from err
    print(report.summary())
    print(f"wrote {out} (the whole store's resolved votes; exporting again replaces the file, it never appends)")
    return 0
