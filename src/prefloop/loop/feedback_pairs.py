"""Preference pairs made directly from what users told `prefloop serve` (POST /v1/feedback).

Rules (each pair carries its provenance: feedback ids, interaction ids, annotators):
- a **choice** between two interactions (e.g. the two choices of an n=2 request): the preferred answer
  is chosen, the other rejected; both must answer the same prompt (else skipped: "different_prompts");
- **thumbs**: a thumbs-down answer is rejected against a thumbs-up answer to the same prompt
  (every down x up combination), or, when no answer to that prompt got a thumbs-up, against the
  judge's best candidate for it (`judged_best`, prompt key -> text), if the label step made one;
- a thumbs-down with nothing to pair against is skipped ("no_better_answer"); feedback whose
  interactions are missing or forgotten is skipped ("missing_interaction").
The same two texts with the same winner from several feedback rows are one pair ("duplicate"); the
same two texts with opposite winners are both dropped ("conflicting"). Nothing is dropped silently:
`skipped` counts every reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

from prefloop.prompts import prompt_key
from prefloop.store import preferred_interaction


def pair_key(messages: list[dict], chosen: str, rejected: str) -> str:
    """Content hash of a pair (prompt, chosen, rejected): the same pair from two sources is one pair."""
    blob = json.dumps([prompt_key(messages), chosen, rejected], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _record(messages: list[dict], chosen: str, rejected: str, provenance: dict) -> dict:
    """A pair in the seed's format (conversations + chosen + rejected) with its provenance."""
    turns = [{"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
             for m in messages]
    return {"id": pair_key(messages, chosen, rejected), "conversations": turns, "chosen": chosen,
            "rejected": rejected, "source": provenance["source"], "provenance": provenance}


def feedback_pairs(interactions: dict[int, dict], feedback: list[dict],
                   judged_best: dict[str, str] | None = None) -> tuple[list[dict], Counter]:
    """Pairs from feedback rows (as `Store.feedback()` gives them) over `interactions` (id -> interaction
    as `Store.interactions()` gives them). Returns (pair records in the seed format, skipped reason counts)."""
    judged_best = judged_best or {}
    skipped: Counter = Counter()
    found: dict[tuple, dict] = {}  # (prompt key, frozenset of texts) -> record

    def add(messages, chosen: str, rejected: str, provenance: dict) -> None:
        if chosen == rejected:
            skipped["identical_answers"] += 1
            return
        key = (prompt_key(messages), frozenset((chosen, rejected)))
        old = found.get(key)
        if old is None:
            found[key] = _record(messages, chosen, rejected, provenance)
        elif old.get("conflict"):
            skipped["conflicting"] += 1
        elif old["chosen"] == chosen:
            skipped["duplicate"] += 1
            old["provenance"]["feedback_ids"] = sorted(set(old["provenance"]["feedback_ids"]
                                                           + provenance["feedback_ids"]))
        else:
            old["conflict"] = True
            skipped["conflicting"] += 2

    ups: dict[str, list[tuple[dict, dict]]] = {}
    downs: list[tuple[dict, dict]] = []
    for fb in feedback:
        this = interactions.get(fb["interaction_id"])
        other = interactions.get(fb["other_interaction_id"]) if fb["other_interaction_id"] is not None else None
        if this is None or (fb["kind"] == "choice" and other is None):
            skipped["missing_interaction"] += 1
            continue
        if fb["kind"] == "thumbs":
            if fb["value"] == "up":
                ups.setdefault(prompt_key(this["messages"]), []).append((fb, this))
            else:
                downs.append((fb, this))
            continue
        if prompt_key(this["messages"]) != prompt_key(other["messages"]):
            skipped["different_prompts"] += 1
            continue
        winner = this if preferred_interaction(fb) == this["id"] else other  # "12" is interaction 12, not the other
        loser = other if winner is this else this
        add(this["messages"], winner["response"], loser["response"],
            {"source": "feedback:choice", "feedback_ids": [fb["id"]], "interaction_ids": [winner["id"], loser["id"]],
             "annotator": fb["annotator"]})
    for fb, down in downs:
        key = prompt_key(down["messages"])
        better = [(f, i) for f, i in ups.get(key, []) if i["response"] != down["response"]]
        if better:
            for up_fb, up in better:
                add(down["messages"], up["response"], down["response"],
                    {"source": "feedback:thumbs", "feedback_ids": [up_fb["id"], fb["id"]],
                     "interaction_ids": [up["id"], down["id"]], "annotator": fb["annotator"]})
        elif key in judged_best:
            add(down["messages"], judged_best[key], down["response"],
                {"source": "feedback:thumbs_down_vs_judged_best", "feedback_ids": [fb["id"]],
                 "interaction_ids": [down["id"]], "annotator": fb["annotator"]})
        else:
            skipped["no_better_answer"] += 1
    pairs = [r for r in found.values() if not r.pop("conflict", False)]
    return pairs, skipped


def export_interactions(db: str, out: str, scrub_pii: bool = False) -> int:
    """`prefloop export --interactions`: every pair user feedback in the store gives (forgotten conversations
    left out and counted), as seed-format JSONL with provenance, written atomically; prints the skip counts."""
    from pathlib import Path

    from prefloop.errors import ConfigError
    from prefloop.loop.scrub import Scrubber
    from prefloop.store import Store
    from prefloop.output_files import refuse_empty_replace, write_atomically

    if not Path(db).is_file():
        raise ConfigError(f"{db}: no such store; `prefloop serve MODEL --db {db}` logs interactions and feedback")
    scrub = Scrubber(scrub_pii)
    with Store(db) as store:
        forgotten = store.forgotten_conversations()
        rows = store.interactions()
        interactions = {i["id"]: {**i, "messages": scrub.messages(i["messages"]), "response": scrub.text(i["response"])}
                        for i in rows if i["conversation_id"] not in forgotten}
        feedback = store.feedback()
    pairs, skipped = feedback_pairs(interactions, feedback)
    if len(rows) > len(interactions):
        skipped["interactions_of_forgotten_conversations"] = len(rows) - len(interactions)
    left = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
    refuse_empty_replace(out, len(pairs), "--out", f"{len(feedback)} feedback rows on {len(rows)} interactions"
                         + (f"; left out: {left}" if left else ""))
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    try:  # a temporary file, flushed and renamed over `out` (the same write as `prefloop export`)
        write_atomically(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write it ({err.strerror or err}); nothing was written. Give a file "
                          "path in a writable folder") from err
    print(f"{len(feedback)} feedback rows on {len(rows)} interactions -> {len(pairs)} pairs"
          + (f"; left out: {', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))}" if skipped else "")
          + (f"; scrubbed {dict(scrub.counts)}" if scrub_pii else ""))
    print(f"wrote {out}")
    return 0
