"""The label step's modes: candidates.jsonl (K answers per prompt) -> judged.jsonl (preference pairs).

- `judge`: `prefloop judge` with the LLM judge, every comparison in both orders.
- `reward_model`: `prefloop judge --reward-model`: each answer scored by a local sequence-classification
  reward model (its own chat template or the policy's), scores cached so a rerun recomputes nothing.
- `human` / `human_then_judge`: comparisons of two answers become label items in the store, loaded once;
  the votes (and, at the deadline with `human_then_judge`, the judge's verdicts on the items nobody voted
  on) give one outcome per compared pair, and the outcomes of a prompt give its pairs.

Which pairs (`label.pairing`, every mode): `best_worst` (the iterative DPO recipe: the best answer against
the worst) or `all` (every decisive comparison). With K answers, people see the comparisons of
`item_comparisons`: the cycle 0-1, 1-2, ..., (K-1)-0 first (every answer in two comparisons, all answers
connected), then the other pairs, up to `label.items_per_prompt` (default: all K(K-1)/2).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

PAIRINGS = {"best_worst": "max_min", "all": "all_pairs"}  # loop.yaml name -> `prefloop judge --pairing`


def item_comparisons(k: int, cap: int | None = None) -> list[tuple[int, int]]:
    """The (i, j) answer pairs (i < j) people compare for a prompt with k answers, in loading order.

    The cycle comes first, so a cap of k - 1 or more still connects every answer to every other through
    comparisons (a ranking exists); `cap=None` gives all k(k-1)/2 pairs."""
    if k < 2:
        return []
    cycle = [(i, i + 1) for i in range(k - 1)] + ([(0, k - 1)] if k > 2 else [])
    rest = [p for p in itertools.combinations(range(k), 2) if p not in cycle]
    pairs = cycle + rest
    return pairs[:cap] if cap else pairs


def win_shares(outcomes: dict[tuple[int, int], str]) -> dict[int, Fraction]:
    """Per answer that took part in a decided comparison: its share of comparisons won, a tie counting half
    (outcomes "x": i won, "y": j won, "tie"). Exact fractions, so equal shares compare equal on every machine.

    A share rather than a count, so an answer shown in fewer comparisons (a capped prompt) is not ranked
    low for that alone. Bradley–Terry (`prefloop.stats.bradley_terry`) is not used here: with a handful
    of comparisons per prompt its unpenalized fit has no finite optimum for an answer that wins them all."""
    won: Counter = Counter()
    played: Counter = Counter()
    for (i, j), outcome in outcomes.items():
        played[i] += 1
        played[j] += 1
        won[i] += {"x": Fraction(1), "tie": Fraction(1, 2)}.get(outcome, Fraction(0))
        won[j] += {"y": Fraction(1), "tie": Fraction(1, 2)}.get(outcome, Fraction(0))
    return {a: Fraction(won[a]) / played[a] for a in played}


def pairs_from_outcomes(s, outcomes: dict[tuple[int, int], tuple[str, dict | None]], pairing: str,
                        provenance: dict) -> tuple[list[dict], Counter]:
    """One prompt's pairs from its comparison outcomes.

    `s`: the prompt's CandidateSet; `outcomes`: (i, j) -> ("x" | "y" | "tie", the seed-format record of
    the decisive comparison, chosen first, or None for a tie). `pairing` "all": every decisive record;
    "best_worst": the answer with the highest win share against the one with the lowest (equal shares: the
    lower index); when the two were compared directly, that comparison's record (dropped as
    "ranking_conflict" when the worst won it, as "tie" when it was a tie); when they were not (a capped
    prompt), a pair inferred from the ranking, its provenance source "human:ranking", "judge:ranking" or
    "human+judge:ranking" (whose comparisons it rests on) with the shares. Returns (records, reasons for what gave no pair)."""
    from prefloop.data.formats import to_seed_record
    from prefloop.data.schema import Message, PreferencePair

    reasons: Counter = Counter()
    if pairing == "all":
        records = [rec for outcome, rec in outcomes.values() if outcome in ("x", "y")]
        ties = sum(outcome == "tie" for outcome, _ in outcomes.values())
        if ties:
            reasons["tie"] += ties
        return records, reasons
    shares = win_shares({ij: outcome for ij, (outcome, _) in outcomes.items()})
    if len(shares) < 2:
        reasons["no_comparison"] += 1
        return [], reasons
    best = max(shares, key=lambda a: (shares[a], -a))
    worst = min(shares, key=lambda a: (shares[a], a))
    if shares[best] == shares[worst]:
        reasons["no_clear_best"] += 1
        return [], reasons
    direct = outcomes.get((min(best, worst), max(best, worst)))
    if direct is not None:
        outcome, record = direct
        winner = {"x": min(best, worst), "y": max(best, worst)}.get(outcome)
        if winner == best:
            return [record], reasons
        reasons["tie" if winner is None else "ranking_conflict"] += 1
        return [], reasons
    pair = PreferencePair(prompt=[Message.from_dict(m) for m in s.messages], chosen=s.candidates[best],
                          rejected=s.candidates[worst], id=f"{s.id}:{min(best, worst)}-{max(best, worst)}")
    kinds = sorted({rec["provenance"]["source"].split(":")[0] for _, rec in outcomes.values() if rec})
    base = "+".join(kinds) or provenance["source"].split(":")[0]  # "human", "judge" or "human+judge"
    judged = sum(bool(rec) and rec["provenance"]["source"].startswith("judge") for _, rec in outcomes.values())
    shown = {f"candidate {a}": str(v) for a, v in sorted(shares.items())}
    return [to_seed_record(pair, source=base, provenance={
        **provenance, "source": f"{base}:ranking", "win_shares": shown, "comparisons": len(outcomes),
        "judged_comparisons": judged})], reasons


def machine_label(lab: dict, candidates: Path, out: Path, champion_path: str, mode: str | None = None,
                  pairing: str | None = None) -> tuple[int, dict]:
    """`prefloop judge` on a candidates file with the LLM judge (`mode` "judge") or the reward model
    ("reward_model"); writes `out` (seed-format records with a `provenance`: source, judge, and for the
    reward model the scores of chosen and rejected, the margin and every candidate's score) and returns
    (pairs written, left-out counts). Raises LoopError when judge requests failed (a rerun resumes from
    the cache)."""
    from prefloop.judge.run import judge_command, sibling
    from prefloop.loop.steps import LoopError, _read_jsonl, _write_jsonl

    mode, pairing = mode or lab["mode"], pairing or lab["pairing"]
    if mode == "reward_model":
        kwargs = dict(reward_model=lab["reward_model"], concurrency=lab["batch_size"], reward_device=lab["device"],
                      reward_precision=lab["precision"],
                      reward_template_from=champion_path if lab["reward_template"] == "policy" else None)
    else:
        kwargs = dict(judge=lab["judge"], judge_model=lab["judge_model"], criteria=lab["criteria"],
                      template_file=lab["template_file"], concurrency=lab["concurrency"], max_tokens=lab["max_tokens"])
    code = judge_command(str(candidates), str(out), pairing=PAIRINGS[pairing], seed=lab["seed"], keep_ties=True,
                         **kwargs)
    if code != 0:
        raise LoopError("some judge requests failed (see above); rerun: finished judgments come from the cache")
    report = json.loads(sibling(out, ".report.json").read_text())
    name = "best_vs_worst" if pairing == "best_worst" else "all"
    records = []
    for r in _read_jsonl(out):
        if mode == "reward_model":
            given = {"source": f"reward_model:{name}", "reward_model": r.get("judge"), "scores": r.get("scores"),
                     "margin": r.get("margin"), "candidate_scores": r.get("candidate_scores")}
        else:
            given = {"source": f"judge:{name}", "judge": r.get("judge")}
        records.append({**r, "provenance": given})
    _write_jsonl(out, records)
    return report["pairs_written"], report["left_out"]


def label_by_people(it, candidates: Path, out: Path) -> tuple[dict, dict]:
    """Human modes. Each prompt's comparisons (`item_comparisons`) become label items in the store, loaded
    once (recorded as the pseudo-step "label-loaded"; a rerun reads that record and loads nothing again).
    The step finishes when every item has `min_votes` non-skip votes or the deadline has passed, and until
    then raises LoopWaiting. Votes resolve by majority (`prefloop export`'s rule); at the deadline
    `human_then_judge` has the LLM judge decide the items nobody voted on (both orders, cached). Returns
    the step's (inputs, outputs)."""
    from datetime import datetime, timedelta, timezone

    from prefloop.candidates import read_candidates
    from prefloop.data.formats import to_seed_record
    from prefloop.label.export import resolve
    from prefloop.label.stats import content_key
    from prefloop.loop.steps import LoopWaiting, _read_jsonl, _write_jsonl

    lab, store = it.cfg.label, it.store
    sets = {s.id: s for s in read_candidates(candidates).sets}
    origin = f"loop:{it.cfg.name}:{it.row['number']}"
    loaded = it.done.get("label-loaded")
    if loaded is None:
        items = {}
        for s in sets.values():
            for i, j in item_comparisons(len(s.candidates), lab["items_per_prompt"]):
                items[f"{s.id}:{i}-{j}"] = store.add_label_item(s.messages, s.candidates[i], s.candidates[j],
                                                                f"candidate {i}", f"candidate {j}", origin)
        store.record_loop_step(it.row["id"], "label-loaded", {"origin": origin,
                                                              "items_per_prompt": lab["items_per_prompt"]},
                               {"items": items})
        loaded = it.done["label-loaded"]
    items: dict[str, int] = loaded["outputs"]["items"]
    deadline = datetime.fromisoformat(loaded["created_at"]) + timedelta(hours=lab["deadline_hours"])
    ids = set(items.values())
    # what the label app can still show: a forgotten item (or one with one text on both sides) is never shown,
    # so waiting for its votes would only wait until the deadline; it is counted as left out instead
    unlabelable = store.unlabelable_item_ids() & ids
    wanted = ids - unlabelable
    # votes count per comparison, as the label app assigns them: someone who judged the same comparison in
    # another item (another iteration or file, either order) is never shown this one, and that vote counts here
    key_of = {i["id"]: content_key(i["prompt"], i["response_a"], i["response_b"]) for i in store.label_items()}
    keys = {key_of[i] for i in wanted if i in key_of}
    votes = [v for v in store.active_votes()
             if content_key(v.get("prompt") or [], v["response_a"], v["response_b"]) in keys]
    # people who judged each comparison (a vote sent twice, or changed, is one person's one vote)
    counted = Counter(k for k, _ in {(content_key(v.get("prompt") or [], v["response_a"], v["response_b"]),
                                      v["annotator"]) for v in votes if v["verdict"] != "skip"})
    voted = {i for i in wanted if counted[key_of.get(i)] >= lab["min_votes"]}
    if voted != wanted and datetime.now(timezone.utc) < deadline:
        gone = f" ({len(unlabelable)} forgotten item(s) left out)" if unlabelable else ""
        raise LoopWaiting(f"iteration {it.row['number']}: {len(voted)} of {len(wanted)} items have {lab['min_votes']} "
                          f"vote(s){gone}; waiting until {deadline.isoformat(timespec='seconds')} (people vote in "
                          f"`prefloop label --db {it.cfg.store}`); run the loop again later")
    voted_keys = {key_of[i] for i in voted}
    resolved, report = resolve([v for v in votes if content_key(v.get("prompt") or [], v["response_a"],
                                                                v["response_b"]) in voted_keys],
                               min_agreement=0.0, include_ties=True)
    by_key = {key_of[p.extra["label_item"]]: p for p in resolved if p.extra.get("label_item") in key_of}
    human = {"source": "human:votes", "origin": origin}
    left_out: Counter = Counter({k: v for k, v in report.left_out.items() if v})
    outcomes: dict[str, dict[tuple[int, int], tuple[str, dict | None]]] = {sid: {} for sid in sets}
    unvoted: list[tuple[str, int, int]] = []
    for key, item_id in items.items():
        sid, ij = key.rsplit(":", 1)
        i, j = (int(x) for x in ij.split("-")) if "-" in ij else (0, 1)  # an iteration loaded before K > 2
        if sid not in sets:  # its prompt was removed from the candidates (a forgotten conversation)
            left_out["prompt no longer in the candidates"] += 1
            continue
        if item_id in unlabelable:
            left_out["forgotten on request (or the same text on both sides): nobody can judge it"] += 1
            continue
        if item_id not in voted:
            unvoted.append((sid, i, j))
            continue
        pair = by_key.get(key_of[item_id])  # the same comparison in several items: one comparison, one outcome
        if pair is None:  # skipped only, no majority or both bad: counted in the report, no preference
            outcomes[sid][(i, j)] = ("tie", None)
        elif pair.extra.get("tie"):
            outcomes[sid][(i, j)] = ("tie", None)
        else:
            won = "x" if pair.chosen == sets[sid].candidates[i] else "y"  # a prompt's candidates are distinct texts
            outcomes[sid][(i, j)] = (won, to_seed_record(pair, source="human", provenance=human))
    judged_items = 0
    if unvoted and lab["mode"] == "human_then_judge":
        rest_file, judged_file = it.dir / "candidates.unvoted.jsonl", it.dir / "judged.unvoted.jsonl"
        _write_jsonl(rest_file, [{"id": f"{sid}:{i}-{j}", "messages": sets[sid].messages,
                                  "candidates": [sets[sid].candidates[i], sets[sid].candidates[j]]}
                                 for sid, i, j in unvoted])
        _, judge_left = machine_label(lab, rest_file, judged_file, "", mode="judge", pairing="all")
        judged_items = len(unvoted)
        decided = {r["id"].rsplit(":", 1)[0]: r for r in _read_jsonl(judged_file)}
        for sid, i, j in unvoted:
            r = decided.get(f"{sid}:{i}-{j}")
            if r is not None:
                outcomes[sid][(i, j)] = ("x" if r["chosen"] == sets[sid].candidates[i] else "y", r)
            else:  # a tie or an unreadable verdict (counted under judge:...)
                outcomes[sid][(i, j)] = ("tie", None)
        left_out.update({f"judge:{k}": v for k, v in judge_left.items()})
    elif unvoted:
        left_out["not voted by the deadline"] += len(unvoted)
    records = []
    for sid, found in outcomes.items():
        if found:
            got, reasons = pairs_from_outcomes(sets[sid], found, lab["pairing"], human)
            records += got
            left_out.update({f"pairing:{k}": v for k, v in reasons.items()})
    judge_pairs = sum(r["provenance"]["source"].startswith("judge") for r in records)
    _write_jsonl(out, records)
    return ({"mode": lab["mode"], "items": len(ids), "deadline": deadline.isoformat(), "pairing": lab["pairing"]},
            {"file": str(out), "pairs": len(records), "voted_items": len(voted),
             "unlabelable_items": len(unlabelable), "judged_items": judged_items,
             "judge_pairs": judge_pairs, "left_out": dict(left_out)})
