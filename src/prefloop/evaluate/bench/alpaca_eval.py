"""AlpacaEval: the model's answers against reference outputs, judged pairwise; win rate and LC win rate.

Format (AlpacaEval's JSON, e.g. its `alpaca_eval_gpt4_baseline.json`): a list of
{"instruction": str, "output": str (the reference answer), "generator": str (who wrote it)}.

Method: the model answers each instruction as a single user turn (greedy by default, `--max-new-tokens`,
generated through the one sampler and cached, `evaluate/answers.py`); the landed pairwise judge
(`judge/pairwise.py`, both orders, disagreement = tie) compares the answer with the reference output, exactly
as `eval winrate` compares an after-model with a before-model (the model is "after", the references
"before"). Metrics (Dubois et al. 2024, arXiv:2404.04475; `prefloop.stats`):
`alpaca_eval/win_rate` (the mean preference, ties as half, alpaca_eval's `win_rate`) with its paired-bootstrap
95% interval and `alpaca_eval/win_rate_se` (its `standard_error`), `alpaca_eval/raw_win_rate`,
`alpaca_eval/lc_win_rate` ± `alpaca_eval/lc_win_rate_se` (length in characters), and the judge diagnostics.
Differences from the alpaca_eval package: its default annotator (GPT-4 Turbo with logprob-weighted
preferences) judges one randomly ordered comparison per instruction; here every instruction is judged in
both orders by the judge you give, and the LC model leaves out the instruction-difficulty term that needs
the hub's annotations.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefloop.errors import ConfigError

NAME = "alpaca_eval"
FORMAT_HELP = ('the file is a JSON list of {"instruction": str, "output": str, "generator": str} '
               "(AlpacaEval's format: the reference outputs)")
MAX_NEW_TOKENS = 1024
JUDGE_MAX_TOKENS = 512
CRITERIA = "helpfulness,accuracy,clarity,safety"


def read_references(args):
    """(prompts, reference AnswerSet, generators) from the AlpacaEval file."""
    from prefloop.evaluate.answers import Answer, AnswerSet
    from prefloop.evaluate.bench.common import read_bench_records
    from prefloop.evaluate.bench.records import is_text
    from prefloop.prompts import Prompt, prompt_key

    def text_or_empty(value):
        return None if isinstance(value, str) else (f"expected text, got {value!r}"[:120], "write the output as a string")

    records = read_bench_records(args, {"instruction": is_text, "output": text_or_empty, "generator": is_text},
                                 NAME, FORMAT_HELP)
    prompts, references, generators = [], AnswerSet("reference", Path(args.data)), set()
    for i, r in enumerate(records):
        messages = [{"role": "user", "content": r.data["instruction"]}]
        prompt = Prompt(messages, str(r.data.get("id", i)), r.where)
        if prompt.key in references.by_key:
            print(f"prefloop eval bench {NAME}: {r.where}: the same instruction again; judged once", file=sys.stderr)
            continue
        prompts.append(prompt)
        references.by_key[prompt.key] = Answer(prompt.id, prompt_key(messages), messages, r.data["output"], None,
                                               len(r.data["output"]), "stop", r.data["generator"])
        generators.add(r.data["generator"])
    return prompts, references, sorted(generators)


def model_spec(args):
    from prefloop.evaluate.answers import ModelSpec

    if args.adapter:
        return ModelSpec(args.adapter, args.model_name, base=args.model, adapter=args.adapter)
    return ModelSpec.resolve(args.model, args.model_name, "--model")


def run(args) -> tuple[dict, object]:
    from prefloop.evaluate.answers import generate_answers
    from prefloop.evaluate.bench.common import bench_results
    from prefloop.evaluate.winrate import (judge_both_orders, judge_entry, open_judge, summarize, usable_judge_stats,
                                           winrate_report)

    if not args.judge:
        raise ConfigError(f"{NAME} needs a judge: pass --judge URL (an OpenAI-compatible endpoint, with --judge-model "
                          f"NAME when it serves several) or --judge PATH (a local model)")
    prompts, references, generators = read_references(args)
    out = Path(args.out)
    spec = model_spec(args)
    sampling = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens or MAX_NEW_TOKENS}
    answers = generate_answers("model", spec, prompts, out, sampling, args.seed, args.api_key, args.batch_size,
                               args.concurrency)
    judge_max_tokens = args.judge_max_tokens or JUDGE_MAX_TOKENS
    judge, judge_prompt = open_judge(args.judge, args.judge_model, CRITERIA, None, out, args.api_key,
                                     args.concurrency, judge_max_tokens, args.seed)
    rows = judge_both_orders(judge, prompts, answers, references, "model vs reference")
    js = usable_judge_stats(rows, args.judge, out)
    metrics, details = summarize(rows, answers, references, 1000, args.seed, js)
    details["reference_generators"] = generators
    # the judge's settings as sent: temperature null when its endpoint refused it (it sampled at its default)
    results = bench_results(args, NAME, len(prompts), {f"{NAME}/{k}": v for k, v in metrics.items()}, details,
                            judge=judge_entry(judge, judge_prompt, args.judge, judge_max_tokens, args.seed,
                                              template_text=False), config={"sampling": sampling, "resamples": 1000},
                            seeds={"generation": args.seed, "bootstrap": args.seed, "judge": args.seed},
                            model_name=spec.label())
    results["models"]["model"]["fingerprint"] = spec.fingerprint()
    results["models"]["model"]["endpoint_adaptations"] = answers.endpoint_adaptations()
    shaped = {**results, "models": {"after": results["models"]["model"],
                                    "before": {"name": "reference (" + ", ".join(generators) + ")"}},
              "metrics": metrics}
    report = winrate_report(shaped, prompts, answers, references)
    report.title = f"AlpacaEval: {spec.label()} vs reference outputs ({', '.join(generators)})"
    return results, report


def summary_lines(results: dict) -> list[str]:
    from prefloop.evaluate.report import endpoint_adaptation_notes

    m = results["metrics"]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return [f"AlpacaEval win rate {pct(m[f'{NAME}/win_rate'])} [95% CI {pct(m[f'{NAME}/win_rate_ci_low'])}, "
            f"{pct(m[f'{NAME}/win_rate_ci_high'])}], raw {pct(m[f'{NAME}/raw_win_rate'])}, LC "
            f"{pct(m[f'{NAME}/lc_win_rate'])} ± {pct(m[f'{NAME}/lc_win_rate_se'])} over {m[f'{NAME}/n_prompts']} "
            f"instructions ({m[f'{NAME}/wins']} wins, {m[f'{NAME}/ties']} ties, {m[f'{NAME}/losses']} losses; "
            f"{m[f'{NAME}/n_failed_judgments']} failed or unparseable judgments; "
            f"{m.get(f'{NAME}/n_excluded_prompts', 0)} instructions without a verdict left out)"] + [
        f"  warning: {note}" for note in endpoint_adaptation_notes(results)]
