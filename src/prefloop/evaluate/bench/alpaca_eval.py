"""AlpacaEval: the model's answers against reference outputs, judged pairwise; win rate and LC win rate.

Format (AlpacaEval's JSON, e.g. its `alpaca_eval_gpt4_baseline.json`): a list of
{"instruction": str, "output": str (the reference answer), "generator": str (who wrote it)}.

The model's outputs may come as AlpacaEval's `model_outputs.json` instead of a model: `--model FILE.json`
(the same records, `generator` optional, extra fields such as `dataset` ignored), matched to the reference
instructions by their text as alpaca_eval merges them; an instruction without an output is a located error,
outputs that answer no instruction read are counted (`alpaca_eval/n_outputs_without_instruction`). An
instruction given twice in the reference file is judged once and counted
(`alpaca_eval/n_duplicate_instructions`), or refused when the two reference outputs differ.

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

from prefloop.data.words import count, plural
from prefloop.errors import ConfigError

NAME = "alpaca_eval"
FORMAT_HELP = ('the file is a JSON list of {"instruction": str, "output": str, "generator": str} '
               "(AlpacaEval's format: the reference outputs)")
MAX_NEW_TOKENS = 1024
JUDGE_MAX_TOKENS = 512
CRITERIA = "helpfulness,accuracy,clarity,safety"


def _text_or_empty(value):
    return None if isinstance(value, str) else (f"expected text, got {value!r}"[:120], "write the output as a string")


def read_references(args):
    """(prompts, reference AnswerSet, generators, duplicates) from the AlpacaEval file: `duplicates` are the
    places of instructions given again with the same output (judged once, counted); the same instruction
    with another output is a located error (which reference would be judged is not for prefloop to pick)."""
    from prefloop.errors import DataError
    from prefloop.evaluate.answers import Answer, AnswerSet
    from prefloop.evaluate.bench.common import read_bench_records
    from prefloop.evaluate.bench.records import is_text
    from prefloop.prompts import Prompt, prompt_key

    records = read_bench_records(args, {"instruction": is_text, "output": _text_or_empty, "generator": is_text},
                                 NAME, FORMAT_HELP)
    prompts, references, generators = [], AnswerSet("reference", Path(args.data)), set()
    duplicates, conflicts, first_at = [], [], {}
    for i, r in enumerate(records):
        messages = [{"role": "user", "content": r.data["instruction"]}]
        prompt = Prompt(messages, str(r.data.get("id", i)), r.where)
        if prompt.key in references.by_key:
            if references.by_key[prompt.key].answer != r.data["output"]:
                conflicts.append(r.error("output", f"the instruction of {first_at[prompt.key]} again, with another "
                                                   f"reference output", "keep one reference output per instruction"))
            else:
                duplicates.append(r.where)
            continue
        first_at[prompt.key] = r.where
        prompts.append(prompt)
        references.by_key[prompt.key] = Answer(prompt.id, prompt_key(messages), messages, r.data["output"], None,
                                               len(r.data["output"]), "stop", r.data["generator"])
        generators.add(r.data["generator"])
    if conflicts:
        raise DataError(f"{count(len(conflicts), 'problem')} in {NAME} file {args.data}:\n"
                        + "\n".join(f"  {p}" for p in conflicts[:20]))
    if duplicates:
        print(f"prefloop eval bench {NAME}: {count(len(duplicates), 'instruction')} given again with the same output, judged "
              f"once (first: {duplicates[0]})", file=sys.stderr)
    return prompts, references, sorted(generators), duplicates


def is_outputs_file(target: str) -> bool:
    """Whether --model names a file of the model's outputs (AlpacaEval's model_outputs.json) instead of a model."""
    return Path(target).suffix.lower() in (".json", ".jsonl") and Path(target).is_file()


def read_model_outputs(path: str, prompts):
    """(AnswerSet of the model, its generator names, how many of its outputs answer no instruction of the
    reference file) from AlpacaEval's `model_outputs.json` ({"instruction", "output", "generator"}; `generator`
    optional), matched to the reference instructions by their text as alpaca_eval merges them. An
    instruction without an output, or one given twice with different outputs, is a located error."""
    from prefloop.errors import DataError
    from prefloop.evaluate.answers import Answer, AnswerSet
    from prefloop.evaluate.bench.records import is_text, read_records
    from prefloop.prompts import prompt_key

    records = read_records(path, {"instruction": is_text, "output": _text_or_empty}, f"{NAME} model outputs",
                           FORMAT_HELP.replace("reference outputs", "model's outputs, generator optional"))
    by_instruction, problems, generators = {}, [], set()
    for r in records:
        generator = r.data.get("generator")
        if generator is not None and (found := is_text(generator)) is not None:
            problems.append(r.error("generator", *found))
            continue
        seen = by_instruction.get(r.data["instruction"])
        if seen is not None and seen.data["output"] != r.data["output"]:
            problems.append(r.error("output", f"the instruction of {seen.where} again, with another output",
                                    "keep one output per instruction"))
            continue
        by_instruction.setdefault(r.data["instruction"], r)
    answers = AnswerSet("model", Path(path))
    missing = []
    for prompt in prompts:
        r = by_instruction.pop(prompt.messages[0]["content"], None)
        if r is None:
            missing.append(prompt.source)
            continue
        generator = r.data.get("generator") or Path(path).stem
        generators.add(generator)
        answers.by_key[prompt.key] = Answer(prompt.id, prompt_key(prompt.messages), prompt.messages, r.data["output"],
                                            None, len(r.data["output"]), "stop", generator)
    if missing:
        problems.append(f"{count(len(missing), 'instruction')} of the reference file {plural('has', len(missing))} no output in {path} (first: "
                        f"{', '.join(missing[:3])}) -> generate outputs for every instruction (or pass --limit N to "
                        f"use the first N)")
    if problems:
        raise DataError(f"{count(len(problems), 'problem')} in {NAME} model outputs {path}:\n"
                        + "\n".join(f"  {p}" for p in problems[:20]))
    return answers, sorted(generators), len(by_instruction)


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
    prompts, references, generators, duplicates = read_references(args)
    out = Path(args.out)
    from_file = is_outputs_file(args.model)
    if from_file:
        if args.adapter:
            raise ConfigError(f"--model {args.model} is a file of outputs; --adapter applies to a model directory")
        answers, model_generators, unmatched = read_model_outputs(args.model, prompts)
        spec, sampling = None, None
    else:
        spec = model_spec(args)
        sampling = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens or MAX_NEW_TOKENS}
        answers = generate_answers("model", spec, prompts, out, sampling, args.seed, args.api_key, args.batch_size,
                                   args.concurrency)
        model_generators, unmatched = None, 0
    judge_max_tokens = args.judge_max_tokens or JUDGE_MAX_TOKENS
    judge, judge_prompt = open_judge(args.judge, args.judge_model, CRITERIA, None, out, args.api_key,
                                     args.concurrency, judge_max_tokens, args.seed)
    rows = judge_both_orders(judge, prompts, answers, references, "model vs reference")
    js = usable_judge_stats(rows, args.judge, out)
    metrics, details = summarize(rows, answers, references, 1000, args.seed, js)
    details["reference_generators"] = generators
    details["duplicate_instructions"] = duplicates
    metrics["n_duplicate_instructions"] = len(duplicates)
    if from_file:
        details["model_outputs"] = {"path": args.model, "generators": model_generators,
                                    "outputs_without_instruction": unmatched}
        metrics["n_outputs_without_instruction"] = unmatched
    label = ", ".join(model_generators) if from_file else spec.label()
    # the judge's settings as sent: temperature null when its endpoint refused it (it sampled at its default)
    results = bench_results(args, NAME, len(prompts), {f"{NAME}/{k}": v for k, v in metrics.items()}, details,
                            judge=judge_entry(judge, judge_prompt, args.judge, judge_max_tokens, args.seed,
                                              template_text=False), config={"sampling": sampling, "resamples": 1000},
                            seeds={"generation": None if from_file else args.seed, "bootstrap": args.seed,
                                   "judge": args.seed},
                            model_name=label)
    if from_file:
        results["models"]["model"]["outputs_file"] = args.model
        results["models"]["model"]["fingerprint"] = _fingerprint(args.model)
    else:
        results["models"]["model"]["fingerprint"] = spec.fingerprint()
        results["models"]["model"]["endpoint_adaptations"] = answers.endpoint_adaptations()
    shaped = {**results, "models": {"after": results["models"]["model"],
                                    "before": {"name": "reference (" + ", ".join(generators) + ")"}},
              "metrics": metrics}
    report = winrate_report(shaped, prompts, answers, references)
    report.title = f"AlpacaEval: {label} vs reference outputs ({', '.join(generators)})"
    notes = []
    if duplicates:
        notes.append(f"{count(len(duplicates), 'instruction')} of {args.data} given again with the same reference output "
                     f"{plural('was', len(duplicates))} judged once (first: {duplicates[0]}).")
    if unmatched:
        notes.append(f"{count(unmatched, 'output')} of {args.model} {'answers' if unmatched == 1 else 'answer'} no instruction of {args.data} (read: "
                     f"{len(prompts)}); not judged.")
    if notes:
        section = report.section("Input notes")
        for note in notes:
            section.warning(note)
    return results, report


def _fingerprint(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def summary_lines(results: dict) -> list[str]:
    from prefloop.evaluate.report import endpoint_adaptation_notes
    from prefloop.evaluate.winrate import zero_width_note

    m = results["metrics"]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return [f"AlpacaEval win rate {pct(m[f'{NAME}/win_rate'])} [95% CI {pct(m[f'{NAME}/win_rate_ci_low'])}, "
            f"{pct(m[f'{NAME}/win_rate_ci_high'])}], raw {pct(m[f'{NAME}/raw_win_rate'])}, LC "
            f"{pct(m[f'{NAME}/lc_win_rate'])} ± {pct(m[f'{NAME}/lc_win_rate_se'])} over "
            f"{count(m[f'{NAME}/n_prompts'], 'instruction')} ({count(m[f'{NAME}/wins'], 'win')}, "
            f"{count(m[f'{NAME}/ties'], 'tie')}, {count(m[f'{NAME}/losses'], 'loss')}; "
            f"{count(m[f'{NAME}/n_failed_judgments'], 'failed or unparseable judgment')}; "
            f"{count(m.get(f'{NAME}/n_excluded_prompts', 0), 'instruction')} without a verdict left out)"] + [
        f"  warning: {count(m[k], noun)} {what}" for k, noun, what in (
            (f"{NAME}/n_duplicate_instructions", "instruction", "given again with the same reference output, judged once"),
            (f"{NAME}/n_outputs_without_instruction", "model output", "with no instruction read, not judged"))
        if m.get(k)] + [f"  warning: {note}" for note in [zero_width_note({k[len(NAME) + 1:]: v for k, v in m.items()})]
                        if note] + [
        f"  warning: {note}" for note in endpoint_adaptation_notes(results)]
