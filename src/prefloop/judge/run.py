"""`prefloop judge`: candidates -> preference pairs, by an LLM judge or a reward model.

Output: PREFS.jsonl in the seed's format (`to_seed_record`) with provenance, PREFS.report.json
(counts, judge consistency and position bias, token usage), and with --keep-ties PREFS.ties.jsonl
(comparisons that gave no preference, in a shape no trainer mistakes for pairs). Judgments are
cached (default PREFS.judge-cache.jsonl), so a rerun, or a run with another pairing, pays only
for comparisons it has not seen.
"""

from __future__ import annotations

import datetime
import json
import random
import sys
from collections import Counter
from pathlib import Path

from prefloop.data.formats import to_seed_record
from prefloop.data.schema import Message, PreferencePair
from prefloop.errors import ConfigError
from prefloop.candidates import CandidateSet, read_candidates
from prefloop.judge.pairing import PAIRINGS, best_and_worst, candidate_pairs, win_scores
from prefloop.judge.pairwise import Comparison, JudgeStats
from prefloop.output_files import refuse_empty_replace, write_atomically
from prefloop.prompts import prompt_key

CHUNK = 64  # comparisons per progress step (each is two judge calls)


def _rng(seed: int, s: CandidateSet) -> random.Random:
    return random.Random(f"{seed}:{prompt_key(s.messages)}")


def _pair(s: CandidateSet, chosen: int, rejected: int, margin: float | None = None) -> PreferencePair:
    low, high = sorted((chosen, rejected))
    return PreferencePair(prompt=[Message.from_dict(m) for m in s.messages], chosen=s.candidates[chosen],
                          rejected=s.candidates[rejected], id=f"{s.id}:{low}-{high}", margin=margin, source=s.source)


def _left_out(s: CandidateSet, x: int, y: int, outcome: str, **details) -> dict:
    return {"id": f"{s.id}:{x}-{y}", "messages": s.messages, "response_a": s.candidates[x],
            "response_b": s.candidates[y], "outcome": outcome, **details}


class Selection:
    """Pairs to write and comparisons left out, with a count per reason."""

    def __init__(self):
        self.pairs: list[dict] = []
        self.left_out: list[dict] = []
        self.reasons: Counter = Counter()

    def keep(self, record: dict) -> None:
        self.pairs.append(record)

    def drop(self, reason: str, record: dict) -> None:
        self.reasons[reason] += 1
        self.left_out.append(record)


# ------------------------------------------------------------------------------------------ LLM judge


def _llm_record(s: CandidateSet, c: Comparison, chosen: int, judge: str, pairing: str) -> dict:
    chosen_first, rejected_first = (c.first, c.second) if chosen == c.x else (c.second, c.first)
    soft = c.soft
    if soft is not None:
        win, lose = ("x", "y") if chosen == c.x else ("y", "x")
        soft = {"chosen": round(soft[win], 4), "rejected": round(soft[lose], 4), "tie": round(soft["tie"], 4)}
    rejected = c.y if chosen == c.x else c.x
    return to_seed_record(
        _pair(s, chosen, rejected), judge=judge, judge_kind="llm", pairing=pairing,
        judge_verdicts={"chosen_shown_first": chosen_first.verdict, "rejected_shown_first": rejected_first.verdict},
        judge_soft=soft, judge_reasoning=[chosen_first.text, rejected_first.text], candidate_model=s.model)


def _llm_left_out(s: CandidateSet, c: Comparison, outcome: str, judge: str) -> dict:
    return _left_out(s, c.x, c.y, outcome, judge=judge,
                     judge_verdicts={"a_shown_first": c.first and c.first.verdict,
                                     "b_shown_first": c.second and c.second.verdict},
                     errors=[j.error for j in (c.first, c.second) if j and j.error] or None)


def _select_llm(sets, comparisons, pairing, judge) -> Selection:
    sel = Selection()
    by_prompt: dict[int, list[Comparison]] = {}
    for c in comparisons:
        by_prompt.setdefault(c.prompt_index, []).append(c)
    for index, group in by_prompt.items():
        s = sets[index]
        if pairing != "max_min":
            for c in group:
                if c.outcome in ("x", "y"):
                    sel.keep(_llm_record(s, c, c.x if c.outcome == "x" else c.y, judge, pairing))
                else:
                    sel.drop(c.outcome, _llm_left_out(s, c, c.outcome, judge))
            continue
        outcomes = {c.outcome for c in group}
        if outcomes & {"failed", "no_verdict"} == outcomes or "failed" in outcomes:
            # No ranking without every comparison answered: a failed request is retried on the next run.
            reason = "failed" if "failed" in outcomes else "no_verdict"
            sel.drop(reason, _llm_left_out(s, group[0], reason, judge))
            continue
        ranked = best_and_worst(win_scores(len(s.candidates), {(c.x, c.y): c.outcome for c in group}))
        if ranked is None:
            sel.drop("no_clear_best", _llm_left_out(s, group[0], "no_clear_best", judge))
            continue
        best, worst = ranked
        c = next(c for c in group if {c.x, c.y} == {best, worst})
        winner = {"x": c.x, "y": c.y}.get(c.outcome)
        if winner == best:
            sel.keep(_llm_record(s, c, best, judge, pairing))
        else:
            reason = c.outcome if winner is None else "ranking_conflict"  # best lost to worst head-to-head
            sel.drop(reason, _llm_left_out(s, c, reason, judge))
    return sel


def _run_llm(sets, judge, judge_model, criteria, template_file, pairing, concurrency, cache_path, key: dict, seed,
             max_tokens, stats: JudgeStats):
    from tqdm import tqdm

    from prefloop.chat_clients import open_chat_client
    from prefloop.judge.cache import JudgmentCache
    from prefloop.judge.pairwise import PairwiseJudge
    from prefloop.judge.prompt import JudgePrompt

    prompt = JudgePrompt.from_options(criteria, template_file)
    client = open_chat_client(judge, judge_model, batch_size=concurrency, concurrency=concurrency,
                              option="--judge-model", **key)
    cache = JudgmentCache(cache_path, client=client)
    pj = PairwiseJudge(client, prompt, cache, max_tokens=max_tokens, seed=seed)
    comparisons = [Comparison(si, i, j) for si, s in enumerate(sets)
                   for i, j in candidate_pairs(len(s.candidates), pairing, _rng(seed, s))]
    with tqdm(total=len(comparisons), desc="comparisons", unit="pair", disable=None) as bar:
        for start in range(0, len(comparisons), CHUNK):
            chunk = comparisons[start : start + CHUNK]
            pj.judge(chunk, sets)
            bar.update(len(chunk))
    stats.add(comparisons)
    extra = {"judge": client.name, "judge_kind": "llm", "template": prompt.origin, "criteria": list(prompt.criteria),
             "usage": client.usage.to_dict(), "cache": str(cache.path), "soft_verdicts_requested": pj.logprobs,
             "endpoint_adaptations": cache.adaptations(), **stats.to_dict()}
    return _select_llm(sets, comparisons, pairing, client.name), extra


# ------------------------------------------------------------------------------------------ reward model


def _run_reward(sets, reward_model, pairing, min_margin, seed, batch_size, cache_path, options: dict):
    from prefloop.chat_clients import local_model_name
    from prefloop.judge.cache import JudgmentCache
    from prefloop.judge.reward import RewardModel

    rm = RewardModel(reward_model, batch_size=batch_size, **options)
    name = "reward:" + local_model_name(reward_model)
    cache = JudgmentCache(cache_path)
    before = len(cache)
    flat = rm.score([(s.messages, c) for s in sets for c in s.candidates], cache=cache)
    sel, start = Selection(), 0
    for s in sets:
        scores, start = flat[start : start + len(s.candidates)], start + len(s.candidates)
        if pairing == "max_min":
            ranked = best_and_worst(scores)
            pairs = [ranked] if ranked else []
            if ranked is None:
                sel.drop("tie", _left_out(s, 0, 1, "tie", judge=name, candidate_scores=scores))
        else:
            pairs = candidate_pairs(len(s.candidates), pairing, _rng(seed, s))
        for i, j in pairs:
            chosen, rejected = (i, j) if scores[i] >= scores[j] else (j, i)
            margin = scores[chosen] - scores[rejected]
            if margin == 0 or margin < min_margin:
                reason = "tie" if margin == 0 else "below_min_margin"
                sel.drop(reason, _left_out(s, i, j, reason, judge=name, candidate_scores=scores, margin=margin))
                continue
            sel.keep(to_seed_record(_pair(s, chosen, rejected, margin=round(margin, 6)), judge=name,
                                    judge_kind="reward_model", pairing=pairing,
                                    scores={"chosen": scores[chosen], "rejected": scores[rejected]},
                                    candidate_scores=scores, candidate_model=s.model))
    return sel, {"judge": name, "judge_kind": "reward_model", "min_margin": min_margin,
                 "scored_answers": len(flat), "scores_from_cache": len(flat) - (len(cache) - before),
                 "cache": str(cache.path), "device": rm.device, "precision": rm.precision,
                 "template_from": rm.template_from}


# ------------------------------------------------------------------------------------------ command


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def sibling(out: Path, suffix: str) -> Path:
    """PREFS.jsonl -> PREFS<suffix> (e.g. PREFS.ties.jsonl)."""
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + suffix)


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def judge_command(candidates, out, judge=None, judge_model=None, criteria="helpfulness,accuracy,clarity,safety",
                  template_file=None, pairing="max_min", reward_model=None, min_margin=0.0, keep_ties=False,
                  concurrency=8, cache=None, api_key_env=None, api_key_file=None, seed=0, max_tokens=1024,
                  reward_device="auto", reward_precision="auto", reward_template_from=None) -> int:
    """`prefloop judge`; the judge endpoint's key comes from `api_key_env` / `api_key_file` (see `endpoint`).

    `reward_device`, `reward_precision`, `reward_template_from`: where and in which precision the reward
    model runs and whose chat template renders the conversations (see `judge.reward.RewardModel`). Judgments (LLM) and scores (reward model) are cached in `cache`
    (default PREFS.judge-cache.jsonl / PREFS.score-cache.jsonl)."""
    if bool(judge) == bool(reward_model):
        raise ConfigError("give exactly one judge: --judge URL_OR_PATH (an LLM) or --reward-model PATH")
    if pairing not in PAIRINGS:
        raise ConfigError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if min_margin and not reward_model:
        raise ConfigError("--min-margin applies to reward-model scores; an LLM judge gives verdicts, not scores")
    if concurrency < 1 or max_tokens < 1:
        raise ConfigError(f"--concurrency and --max-tokens must be at least 1, got {concurrency} and {max_tokens}")
    read = read_candidates(candidates)
    print(f"prefloop judge: {read.summary()}", file=sys.stderr)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stats = JudgeStats()
    if reward_model:
        selection, report = _run_reward(read.sets, reward_model, pairing, min_margin, seed, batch_size=concurrency,
                                        cache_path=cache or sibling(out_path, ".score-cache.jsonl"),
                                        options={"device": reward_device, "precision": reward_precision,
                                                 "template_from": reward_template_from})
    else:
        cache_path = cache or sibling(out_path, ".judge-cache.jsonl")
        selection, report = _run_llm(read.sets, judge, judge_model, criteria, template_file, pairing, concurrency,
                                     cache_path, {"api_key_env": api_key_env, "api_key_file": api_key_file},
                                     seed, max_tokens, stats)
    left = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(selection.reasons.items()))
    ties_path = sibling(out_path, ".ties.jsonl")
    kept_earlier = not selection.pairs and out_path.is_file() and out_path.stat().st_size > 0  # refused below
    if kept_earlier and keep_ties and selection.left_out:
        # the ties found are written, but beside the earlier run's pairs and ties, never over its ties file
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        ties_path = sibling(out_path, f".ties.{stamp}.jsonl")
        _write_jsonl(ties_path, selection.left_out)
    refuse_empty_replace(out_path, len(selection.pairs), "--out",
                         f"{read.summary()}; left out: {left or 'nothing'}"
                         + (f" (written to {ties_path})" if keep_ties and selection.left_out else "")
                         + "; finished judgments are in the cache")
    _write_jsonl(out_path, selection.pairs)
    if keep_ties:
        _write_jsonl(ties_path, selection.left_out)
    report = {"candidates": str(candidates), "out": str(out_path), "pairing": pairing, "prompts": len(read.sets),
              "duplicate_answers": read.duplicate_answers, "prompts_with_too_few_answers": read.too_few,
              "pairs_written": len(selection.pairs), "left_out": dict(selection.reasons),
              "ties_file": str(ties_path) if keep_ties else None, **report}
    write_atomically(sibling(out_path, ".report.json"), json.dumps(report, indent=2) + "\n")
    _print_report(report)
    failed = selection.reasons.get("failed", 0)
    if failed:
        print(f"prefloop judge: {failed} comparison(s) failed (request errors); run the same command again: "
              "finished judgments come from the cache", file=sys.stderr)
        return 1
    return 0


def _print_report(r: dict) -> None:
    left = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(r["left_out"].items())) or "none"
    lines = [f"prefloop judge: {r['pairs_written']} pairs written to {r['out']} ({r['judge']}, pairing {r['pairing']})",
             f"  left out: {left}" + (f" (written to {r['ties_file']})" if r["ties_file"] else "")]
    if r["judge_kind"] == "llm":
        u = r["usage"]
        o = r["outcomes"]
        lines += [f"  comparisons: {r['comparisons']} ({o['x'] + o['y']} decided, {o['tie']} ties, {o['no_verdict']} "
                  f"without a verdict, {o['failed']} failed requests)",
                  f"  judge consistency across both orders: {_percent(r['consistency_rate'])}; "
                  f"first-position preference: {_percent(r['first_position_rate'])} (50% = no position bias); "
                  f"{r['ties_from_disagreement']} of {r['outcomes']['tie']} ties are the two orders disagreeing",
                  f"  judgments: {r['judgments']} ({r['from_cache']} from cache, {r['retried']} retried, "
                  f"{r['no_verdict_after_retry']} without a verdict); soft verdicts for {r['with_soft_verdict']} "
                  "comparisons",
                  f"  tokens: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion in {u['requests']} "
                  "requests"]
        if r.get("endpoint_adaptations"):  # e.g. a reasoning model that takes no temperature: not greedy
            lines.append("  the judge endpoint refused request fields, sent instead as: " + ", ".join(
                f"{k} -> {v}" for k, v in r["endpoint_adaptations"].items()))
    print("\n".join(lines), file=sys.stderr)
