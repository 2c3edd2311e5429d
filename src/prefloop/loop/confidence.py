"""`sample.strategy: low_confidence`: choose for annotation the prompts the AI judge is least sure about.

For each prompt of the pool (the eligible prompts after de-duplication, the per-conversation cap and
scrubbing, newest first, at most `sample.pool`, default 4 x `sample.size`):

1. the champion answers it twice (`prefloop generate`, n=2, the loop's generation settings, seeded;
   locally, or through `generate.endpoint` like the generate step; `pool.candidates.jsonl`, resumed
   after a crash);
2. the judge compares the two answers in both orders (`judge.pairwise.PairwiseJudge`, cached in
   `pool.judge-cache.jsonl`, so a rerun pays for nothing twice);
3. confidence = |p - 0.5| x 2, in [0, 1], where p is the judge's order-averaged probability that the
   first answer is better, a tie counting half (p = P(x) + P(tie) / 2 from the verdict token's
   log-probs, `Comparison.soft`), when the endpoint gives log-probs; without them a decisive verdict in
   both orders counts as 1. Orders that disagree, a tie in both orders and a verdict the judge never gave
   count as 0: the judge cannot decide, so a person should.
   (The uncertainty-sampling rule of active learning, Lewis & Gale 1994, "A sequential algorithm for
   training text classifiers", applied to the judge's pairwise preference.)

The `size` least confident prompts are kept (equal confidence: pool order). A prompt whose two answers are
identical gives the judge nothing to compare: it gets no confidence (None) and comes after every judged
prompt. Natural with `label.mode: human` or `human_then_judge`: people get the prompts the judge cannot
decide.
"""

from __future__ import annotations


def confidence_of(comparison) -> tuple[float, float | None]:
    """(confidence in [0, 1], order-averaged P(first answer better) or None) of a judged Comparison."""
    outcome = comparison.outcome
    if outcome not in ("x", "y"):
        return 0.0, None
    soft = comparison.soft
    if soft is None:
        return 1.0, None
    p = soft["x"] + soft["tie"] / 2
    return abs(p - 0.5) * 2, p


def least_confident(it, pool: list[dict]) -> tuple[list[dict], dict]:
    """The `sample.size` prompts of `pool` (prompt records as prompts.jsonl holds them) the judge is least
    sure about, each with `judge_confidence`, `judge_p_first` and `judge_outcome` added, and a summary
    for the step's outputs. Raises LoopError when generation or judge requests failed (rerun resumes)."""
    from prefloop.candidates import read_candidates
    from prefloop.chat_clients import open_chat_client
    from prefloop.generate import generate_command
    from prefloop.judge.cache import JudgmentCache
    from prefloop.judge.pairwise import Comparison, PairwiseJudge
    from prefloop.judge.prompt import JudgePrompt
    from prefloop.loop.steps import LoopError, _write_jsonl

    s, g, lab = it.cfg.sample, it.cfg.generate, it.cfg.label
    judge, judge_model, template = ((lab["judge"], lab["judge_model"], lab["template_file"]) if lab["judge"] else
                                    (it.cfg.eval["judge"], it.cfg.eval["judge_model"], it.cfg.eval["template_file"]))
    summary = {"pool": len(pool), "judge": judge}
    if not pool:
        return [], summary
    prompts_file, answers_file = it.dir / "pool.prompts.jsonl", it.dir / "pool.candidates.jsonl"
    _write_jsonl(prompts_file, [{"id": p["id"], "messages": p["messages"]} for p in pool])
    champ = it.champion()
    target, endpoint = champ["path"], {}
    if g["endpoint"]:  # the same answerer as the generate step: the serving endpoint, checked to be the champion
        from prefloop.loop.served import drop_answers_of_others, endpoint_options

        target, endpoint = g["endpoint"], endpoint_options(it.cfg, champ)
    code = generate_command(target, str(prompts_file), str(answers_file), n=2, temperature=g["temperature"],
                            top_p=g["top_p"], max_new_tokens=g["max_new_tokens"], batch_size=g["batch_size"],
                            seed=s["seed"], **endpoint)
    if endpoint:
        drop_answers_of_others(it.cfg, answers_file, champ)
    if code != 0:
        raise LoopError(f"generating the pool's answers failed for some prompts (see above); rerun: finished "
                        f"prompts are kept in {answers_file}")
    sets = read_candidates(answers_file).sets
    client = open_chat_client(judge, judge_model, batch_size=lab["concurrency"], concurrency=lab["concurrency"],
                              option="label.judge_model")
    pj = PairwiseJudge(client, JudgePrompt.from_options(lab["criteria"], template),
                       JudgmentCache(it.dir / "pool.judge-cache.jsonl"), max_tokens=lab["max_tokens"],
                       seed=lab["seed"])
    comparisons = [Comparison(i, 0, 1) for i in range(len(sets))]
    pj.judge(comparisons, sets)
    failed = [c for c in comparisons if c.outcome == "failed"]
    if failed:
        raise LoopError(f"{len(failed)} judge request(s) for the pool failed (see the judge's log); rerun: "
                        "finished judgments come from the cache")
    judged = {}
    for c in comparisons:
        confidence, p = confidence_of(c)
        judged[sets[c.prompt_index].id] = {"judge_confidence": round(confidence, 6),
                                           "judge_p_first": None if p is None else round(p, 6),
                                           "judge_outcome": c.outcome}
    rows = [{**p, **judged.get(p["id"], {"judge_confidence": None, "judge_p_first": None,
                                          "judge_outcome": "identical_answers"})} for p in pool]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["judge_confidence"] is None,
                                                     rows[i]["judge_confidence"] or 0.0, i))
    kept = [rows[i] for i in sorted(order[: s["size"]])]
    _write_jsonl(it.dir / "pool.jsonl", rows)
    values = [r["judge_confidence"] for r in rows if r["judge_confidence"] is not None]
    summary.update({"judged": len(values), "identical_answers": len(rows) - len(values),
                    "with_log_probs": sum(r["judge_p_first"] is not None for r in rows),
                    "confidence_min": min(values, default=None), "confidence_max": max(values, default=None),
                    "confidence_mean": round(sum(values) / len(values), 6) if values else None,
                    "kept_confidence_max": max((r["judge_confidence"] for r in kept
                                                if r["judge_confidence"] is not None), default=None),
                    "file": str(it.dir / "pool.jsonl")})
    return kept, summary


def pool_size(sample: dict) -> int:
    """How many eligible prompts the low-confidence strategy judges: `sample.pool`, default 4 x `sample.size`."""
    return sample["pool"] or 4 * sample["size"]

