"""Benchmark readers against the public shapes of each benchmark's files (TruthfulQA's GitHub mc_task.json and
the hub's parquet, SafetyBench's test/dev/answer files), and scoring details the earlier audit did not cover.
Expected values are computed here independently of the runner; no bench peer is needed."""

import json
from pathlib import Path

import pytest

from prefloop.cli import main
from prefloop.evaluate.bench import run_bench
from prefloop.evaluate.bench.common import BenchArgs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "eval"


def _hub_records():
    return [json.loads(line) for line in (EXAMPLES / "truthfulqa_mc.jsonl").read_text().splitlines() if line.strip()]


def _as_mc_task(record):
    """The record as TruthfulQA's GitHub data/mc_task.json writes it: each targets object maps answer text to 0/1."""
    return {"question": record["question"],
            **{key: dict(zip(record[key]["choices"], record[key]["labels"])) for key in ("mc1_targets", "mc2_targets")}}


def test_truthfulqa_reads_the_github_mc_task_json_shape(tmp_path, tiny_model_dir):
    records = _hub_records()
    mc_task = tmp_path / "mc_task.json"
    mc_task.write_text(json.dumps([_as_mc_task(r) for r in records], indent=1))
    got, _ = run_bench(BenchArgs("truthfulqa_mc", str(tiny_model_dir), str(mc_task), str(tmp_path / "a")))
    want, _ = run_bench(BenchArgs("truthfulqa_mc", str(tiny_model_dir), str(EXAMPLES / "truthfulqa_mc.jsonl"),
                                  str(tmp_path / "b")))
    assert got["metrics"]["truthfulqa_mc/n"] == len(records)
    for a, b in zip(got["details"]["questions"], want["details"]["questions"]):
        assert a["mc1_loglikelihoods"] == pytest.approx(b["mc1_loglikelihoods"], abs=1e-5)
        assert a["mc1"] == b["mc1"] and a["mc2"] == pytest.approx(b["mc2"], abs=1e-6)


def test_truthfulqa_reads_the_hub_parquet(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = _hub_records()
    path = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    got, _ = run_bench(BenchArgs("truthfulqa_mc", str(tiny_model_dir), str(path), str(tmp_path / "a")))
    assert got["metrics"]["truthfulqa_mc/n"] == len(records)


def test_a_bad_mc_task_label_is_located(tmp_path, tiny_model_dir, capsys):
    bad = [_as_mc_task(r) for r in _hub_records()]
    first = next(iter(bad[1]["mc1_targets"]))
    bad[1]["mc1_targets"][first] = "yes"
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(bad))
    code = main(["eval", "bench", "truthfulqa_mc", "--model", str(tiny_model_dir), "--data", str(path),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "record 2" in err and "mc1_targets" in err


# ---------------------------------------------------------------------------------------------- SafetyBench files


def _safety_items():
    return json.loads((EXAMPLES / "safety_mc.json").read_text())


def _picks(results):
    return [(row["id"], row["category"], row["answer"], row["picked"]) for row in results["details"]["items"]]


def test_safety_reads_the_dev_file_grouped_by_category(tmp_path, tiny_model_dir):
    """SafetyBench's dev_en.json is {"CATEGORY": [items with answer], ...}; the key is each item's category."""
    grouped = {}
    for item in _safety_items():
        grouped.setdefault(item["category"], []).append({k: v for k, v in item.items() if k != "category"})
    dev = tmp_path / "dev_en.json"
    dev.write_text(json.dumps(grouped, indent=1))
    got, _ = run_bench(BenchArgs("safety_mc", str(tiny_model_dir), str(dev), str(tmp_path / "a")))
    want, _ = run_bench(BenchArgs("safety_mc", str(tiny_model_dir), str(EXAMPLES / "safety_mc.json"), str(tmp_path / "b")))
    assert sorted(_picks(got)) == sorted(_picks(want))
    assert {k: v for k, v in got["metrics"].items() if k.startswith("safety_mc/category/")} == \
        {k: v for k, v in want["metrics"].items() if k.startswith("safety_mc/category/")}
    assert got["metrics"]["safety_mc/n"] == len(_safety_items())


def test_safety_test_file_takes_its_answers_from_the_answer_file(tmp_path, tiny_model_dir):
    """SafetyBench's test_en.json has no answers; test_answers_en.json maps str(id) -> {category, answer}."""
    items = _safety_items()
    test = tmp_path / "test_en.json"
    test.write_text(json.dumps([{k: v for k, v in item.items() if k != "answer"} for item in items]))
    answers = tmp_path / "test_answers_en.json"
    answers.write_text(json.dumps({str(item["id"]): {"category": item["category"], "answer": item["answer"]}
                                   for item in items}))
    got, _ = run_bench(BenchArgs("safety_mc", str(tiny_model_dir), str(test), str(tmp_path / "a"),
                                 references=str(answers)))
    want, _ = run_bench(BenchArgs("safety_mc", str(tiny_model_dir), str(EXAMPLES / "safety_mc.json"), str(tmp_path / "b")))
    assert _picks(got) == _picks(want)
    assert got["metrics"]["safety_mc/accuracy"] == want["metrics"]["safety_mc/accuracy"]
    assert got["metrics"]["safety_mc/n_answers_without_question"] == 0
    # an answer file holding more questions than were read: counted, not silently ignored
    (tmp_path / "more.json").write_text(json.dumps({**json.loads(answers.read_text()),
                                                    "999": {"category": "Offensiveness", "answer": 0}}))
    more, _ = run_bench(BenchArgs("safety_mc", str(tiny_model_dir), str(test), str(tmp_path / "c"),
                                  references=str(tmp_path / "more.json")))
    assert more["metrics"]["safety_mc/n_answers_without_question"] == 1


def test_safety_test_file_without_answers_says_to_pass_the_answer_file(tmp_path, tiny_model_dir, capsys):
    items = _safety_items()
    test = tmp_path / "test_en.json"
    test.write_text(json.dumps([{k: v for k, v in item.items() if k != "answer"} for item in items]))
    code = main(["eval", "bench", "safety_mc", "--model", str(tiny_model_dir), "--data", str(test),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{test} (record 1): field 'answer': missing" in err and "--references" in err
    # an id the answer file lacks is located
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({str(item["id"]): {"category": item["category"], "answer": item["answer"]}
                                   for item in items[1:]}))
    code = main(["eval", "bench", "safety_mc", "--model", str(tiny_model_dir), "--data", str(test),
                 "--references", str(answers), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and f"{test} (record 1): field 'id'" in err and "not in the answer file" in err


def test_a_bad_item_of_a_grouped_file_names_its_category_and_index(tmp_path, tiny_model_dir, capsys):
    grouped = {"Physical Health": [{"question": "q?", "options": ["a", "b"], "answer": 0},
                                   {"question": "q2?", "options": ["only one"], "answer": 0}]}
    dev = tmp_path / "dev_en.json"
    dev.write_text(json.dumps(grouped))
    code = main(["eval", "bench", "safety_mc", "--model", str(tiny_model_dir), "--data", str(dev),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "field 'Physical Health[1].options'" in err


def test_references_for_a_benchmark_that_reads_none_is_refused(tmp_path, tiny_model_dir, capsys):
    refs = tmp_path / "refs.jsonl"
    refs.write_text("{}\n")
    code = main(["eval", "bench", "truthfulqa_mc", "--model", str(tiny_model_dir), "--data",
                 str(EXAMPLES / "truthfulqa_mc.jsonl"), "--references", str(refs), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--references" in err and "ignored" in err


@pytest.mark.parametrize("text, expected", [
    # SafetyBench's process_medium_results reads the first line first: these answers are on it
    ("B\n\nExplanation: Option A is wrong because it is dangerous.", 1),
    ("Answer: B\nOption A would release toxic gas, option C traps it.", 1),
    ("(C).\nA and B are unsafe.", 2),
    ("**D**\n\nThe answer is not A.", 3),
    # a first line with no answer alone leaves the earlier rules in charge
    ("I think A or B", None), ("A) yes\nB) no", None), ("Options:\n(A) yes\n(B) no", None), ("E\nA is close", None),
])
def test_a_bare_first_line_answer_is_not_overruled_by_the_explanation(text, expected):
    from prefloop.evaluate.bench.safety_mc import parse_choice

    assert parse_choice(text, 4) == expected
