"""AlpacaEval runner: a tiny local model against the shipped reference outputs, judged by a scripted judge
endpoint (the landed server helper) that prefers the longer answer; outcomes, win rate and LC win rate are
checked against the lengths and `prefloop.stats` on the same outcomes."""

import json
from pathlib import Path

import pytest
from test_judge import prefers_longer, scripted_judge_app

from prefloop import stats
from prefloop.cli import main
from prefloop.serve.background import BackgroundServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "eval"


def test_alpaca_eval_win_rate_against_reference_outputs(tmp_path, tiny_model_dir):
    app, requests = scripted_judge_app(prefers_longer)
    out = tmp_path / "alpaca"
    argv = ["eval", "bench", "alpaca_eval", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "alpaca_eval.json"),
            "--out", str(out), "--max-new-tokens", "6"]
    with BackgroundServer(app) as server:
        assert main(argv + ["--judge", server.url]) == 0
        paid = len(requests)
        assert main(argv + ["--judge", server.url]) == 0  # a rerun: answers and judgments from the caches
        assert len(requests) == paid == 10  # five instructions, both orders
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "bench" and results["benchmark"] == "alpaca_eval"
    rows = results["details"]["per_prompt"]
    expected = ["win" if r["after_chars"] > r["before_chars"] else "loss" if r["after_chars"] < r["before_chars"]
                else "tie" for r in rows]
    assert [r["outcome"] for r in rows] == expected
    m = results["metrics"]
    wr = stats.win_rate(expected)
    lc = stats.lc_win_rate(stats.outcome_scores(expected), [r["after_chars"] for r in rows],
                           [r["before_chars"] for r in rows])
    assert (m["alpaca_eval/wins"], m["alpaca_eval/ties"], m["alpaca_eval/losses"]) == (wr.wins, wr.ties, wr.losses)
    assert m["alpaca_eval/win_rate"] == pytest.approx(wr.win_rate)
    assert m["alpaca_eval/lc_win_rate"] == pytest.approx(lc.lc_win_rate)
    assert m["alpaca_eval/win_rate_ci_low"] <= m["alpaca_eval/win_rate"] <= m["alpaca_eval/win_rate_ci_high"]
    assert results["details"]["reference_generators"] == ["reference"]
    assert "AlpacaEval" in (out / "report.html").read_text()


def test_alpaca_eval_records_what_a_reasoning_judge_endpoint_refused(tmp_path, tiny_model_dir, capsys):
    """A judge that refuses temperature 0 (OpenAI's reasoning models) sampled at its default: results.json
    says so (endpoint_adaptations; temperature null, not 0.0), and so do the report and the summary."""
    from test_eval_winrate import REFUSED, reasoning_model_app

    app, _, answered = reasoning_model_app(prefers_longer, name="o-judge")
    out = tmp_path / "alpaca"
    with BackgroundServer(app) as server:
        assert main(["eval", "bench", "alpaca_eval", "--model", str(tiny_model_dir), "--data",
                     str(EXAMPLES / "alpaca_eval.json"), "--out", str(out), "--max-new-tokens", "6", "--judge",
                     server.url]) == 0
    assert len(answered) == 10 and all("temperature" not in b for b in answered)
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["endpoint_adaptations"] == REFUSED and results["judge"]["temperature"] is None
    assert results["models"]["model"]["endpoint_adaptations"] == {}
    assert "no temperature was sent" in (out / "report.md").read_text()
    assert "judge endpoint (o-judge) refused" in capsys.readouterr().out


def test_alpaca_eval_needs_a_judge(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", "bench", "alpaca_eval", "--model", str(tiny_model_dir), "--data",
                 str(EXAMPLES / "alpaca_eval.json"), "--out", str(tmp_path)]) == 2
    assert "alpaca_eval needs a judge" in capsys.readouterr().err


def test_alpaca_summary_counts_agree_with_their_number():
    """summary_lines writes "1 instruction", "1 win", "0 losses", never "instruction(s)"."""
    from prefloop.evaluate.bench.alpaca_eval import summary_lines

    m = {f"alpaca_eval/{k}": v for k, v in {
        "win_rate": 1.0, "win_rate_ci_low": 1.0, "win_rate_ci_high": 1.0, "raw_win_rate": 1.0, "lc_win_rate": None,
        "lc_win_rate_se": None, "n_prompts": 1, "wins": 1, "ties": 0, "losses": 0, "n_failed_judgments": 1,
        "n_excluded_prompts": 0, "n_duplicate_instructions": 1, "n_outputs_without_instruction": 2}.items()}
    lines = summary_lines({"metrics": m})
    assert ("over 1 instruction (1 win, 0 ties, 0 losses; 1 failed or unparseable judgment; 0 instructions "
            "without a verdict left out)") in lines[0]
    assert "  warning: 1 instruction given again with the same reference output, judged once" in lines
    assert "  warning: 2 model outputs with no instruction read, not judged" in lines
