"""`prefloop eval winrate` / `eval compare` end to end: tiny models (a local directory, a LoRA adapter
directory, `prefloop serve`), a scripted judge endpoint on the landed server helpers, the real store."""

import json
import re

import pytest
from fastapi import FastAPI, Request

from prefloop.cli import main
from prefloop.evaluate.report import Report
from prefloop.evaluate.results import SCHEMA, read_results
from prefloop.errors import DataError
from prefloop.serve.background import BackgroundServer
from prefloop.store import Store
from test_judge import always_a, never_decides, prefers_longer, scripted_judge_app

PROMPTS = ["What is the capital of France?", "Explain gravity to a child.", "Write a haiku about rain.",
           "How do I reverse a list in Python?", "Name three prime numbers.", "Why is the sky blue?"]
GEN = ["--max-new-tokens", "12", "--temperature", "0.9", "--resamples", "200", "--batch-size", "6"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with random (non-zero) weights, so its answers differ from the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return out


def reasoning_model_app(policy, name="o-test"):
    """An endpoint that answers as the OpenAI API does for its reasoning models (prefloop.testing.reasoning_model_refusal's
    400s): `max_tokens` is refused ("Use 'max_completion_tokens'
    instead") and so is any temperature but 1; every other request is answered with `policy(messages)`.
    Returns the app, every request body and the bodies it answered."""
    from prefloop.testing import reasoning_model_refusal

    app, requests, answered = FastAPI(), [], []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        requests.append(body)
        refused = reasoning_model_refusal(body)
        if refused is not None:
            return refused
        answered.append(body)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": policy(body["messages"])},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}

    return app, requests, answered


REFUSED = {"max_tokens": "max_completion_tokens", "temperature": "left out"}


def answers(out, role):
    return {r["id"]: r for r in map(json.loads, (out / "answers" / f"{role}.jsonl").read_text().splitlines())}


def test_winrate_end_to_end_then_another_judge_generates_nothing(tiny_model_dir, adapter_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    app, requests = scripted_judge_app(prefers_longer)
    with BackgroundServer(app) as judge:
        code = main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(adapter_dir), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(out), *GEN])
    assert code == 0
    after, before = answers(out, "after"), answers(out, "before")
    assert set(after) == set(before) == {f"q{i}" for i in range(6)}
    assert after != before
    # the judge prefers the longer answer in both orders, so the expected table follows from the lengths
    expected = {k: "win" if after[k]["chars"] > before[k]["chars"] else
                "loss" if after[k]["chars"] < before[k]["chars"] else "tie" for k in after}
    results = read_results(out)
    m = results["metrics"]
    assert results["schema"] == SCHEMA and results["kind"] == "winrate"
    assert (m["wins"], m["ties"], m["losses"]) == tuple(list(expected.values()).count(o) for o in ("win", "tie", "loss"))
    assert m["n_prompts"] == 6 and m["win_rate"] == pytest.approx((m["wins"] + m["ties"] / 2) / 6)
    assert m["raw_win_rate"] == pytest.approx(m["wins"] / 6)
    assert m["win_rate_ci_low"] <= m["win_rate"] <= m["win_rate_ci_high"]
    assert m["judge_consistency"] == pytest.approx(1.0) and m["n_failed_judgments"] == 0
    assert m["mean_length_tokens/after"] > 0 and m["mean_length_tokens/before"] > 0
    assert {r["id"]: r["outcome"] for r in results["details"]["per_prompt"]} == expected
    assert results["models"]["after"]["adapter"] == str(adapter_dir)
    assert results["models"]["after"]["path"] == str(tiny_model_dir)
    identical = sum(after[k]["answer"] == before[k]["answer"] for k in after)  # a tie, the judge not asked
    assert m["n_identical_answers"] == identical and len(requests) == 2 * (6 - identical)  # both orders
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page
    assert 'src="http' not in page and 'href="http' not in page and "<link" not in page
    assert "| wins / ties / losses |" in (out / "report.md").read_text()

    # another judge on the same --out: answers come from the cache; the judge decides by position only
    cached = (out / "answers" / "after.jsonl").read_text()
    app2, requests2 = scripted_judge_app(always_a)
    with BackgroundServer(app2) as judge:
        code = main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(adapter_dir), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(tmp_path / "run"), *GEN])
    assert code == 0 and (out / "answers" / "after.jsonl").read_text() == cached and len(requests2) == 2 * (6 - identical)
    m2 = read_results(out)["metrics"]
    assert (m2["wins"], m2["ties"], m2["losses"]) == (0, 6, 0)  # A in both orders: disagreement = tie
    assert m2["judge_consistency"] == 0.0 and m2["first_position_rate"] == 1.0

    # compare prints both runs' differences; the first run's results were overwritten, so compare with a copy
    assert main(["eval", "compare", str(out), str(out / "results.json")]) == 0


def test_identical_answers_are_ties_the_judge_is_not_asked_about(tiny_model_dir, prompts_file, tmp_path):
    """Before and after answering with the same text (here: the same model, greedy): every prompt a tie without a
    judge request (alpaca_eval's PairwiseAnnotator sets equal outputs to 1.5); the judge used to be asked, and
    its noise between equal texts gave wins and losses."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(tiny_model_dir, twin)
    app, requests = scripted_judge_app(always_a)
    with BackgroundServer(app) as judge:
        assert main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(twin), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(tmp_path / "o"), "--max-new-tokens", "8",
                     "--temperature", "0", "--resamples", "50"]) == 0
    results = read_results(tmp_path / "o")
    m = results["metrics"]
    assert len(requests) == 0 and (m["wins"], m["ties"], m["losses"]) == (0, 6, 0) and m["win_rate"] == 0.5
    assert m["n_identical_answers"] == 6 and m["n_failed_judgments"] == 0
    assert all(r["identical_answers"] for r in results["details"]["per_prompt"])


def test_endpoint_models_and_a_refusing_endpoint(tiny_model_dir, prompts_file, tmp_path, capsys):
    from prefloop.sampling import LocalGenerator
    from prefloop.serve.app import create_app
    from prefloop.serve.engine import GenerationEngine

    engine = GenerationEngine(LocalGenerator.load(str(tiny_model_dir)))
    app, _ = scripted_judge_app(prefers_longer)
    refusing, _ = scripted_judge_app(lambda messages: 403, name="closed")
    try:
        with BackgroundServer(create_app(engine, "tiny", max_tokens_limit=64)) as served, \
                BackgroundServer(app) as judge, BackgroundServer(refusing) as closed:
            code = main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", served.url,
                         "--after-model-name", "tiny", "--prompts", str(prompts_file), "--judge", judge.url,
                         "--out", str(tmp_path / "ok"), *GEN])
            assert code == 0
            results = read_results(tmp_path / "ok")
            assert results["models"]["after"]["url"] == served.url and results["metrics"]["n_prompts"] == 6
            code = main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", closed.url, "--prompts",
                         str(prompts_file), "--judge", judge.url, "--out", str(tmp_path / "refused"), *GEN])
    finally:
        engine.close()
    err = capsys.readouterr().err
    assert code == 2
    assert "6 of 6 answer request(s) for after failed at the endpoint" in err and "HTTP status 403" in err
    assert len(answers(tmp_path / "refused", "before")) == 6  # kept: a rerun generates only what is missing


def test_fields_a_reasoning_endpoint_refused_are_recorded_and_no_temperature_is_claimed(tiny_model_dir, prompts_file,
                                                                                        tmp_path, capsys):
    """The judge and a model at endpoints that refuse `max_tokens` and temperature (OpenAI's reasoning models):
    the requests go out without them, and results.json says so in both entries (the judge's temperature is
    null, not the 0.0 it sampled without), so does the report; a rerun from the caches still says so."""
    model_app, model_requests, model_answered = reasoning_model_app(lambda messages: "An answer of some length. " * (
        1 + len(messages[-1]["content"]) % 3), name="o-model")
    judge_app, judge_requests, judge_answered = reasoning_model_app(prefers_longer, name="o-judge")
    out = tmp_path / "o"
    with BackgroundServer(model_app) as model, BackgroundServer(judge_app) as judge:
        argv = ["eval", "winrate", "--before", str(tiny_model_dir), "--after", model.url, "--prompts",
                str(prompts_file), "--judge", judge.url, "--out", str(out), *GEN]
        assert main(argv) == 0
        first = capsys.readouterr().err
        paid = len(model_requests), len(judge_requests)
        assert len(model_answered) == 6 and len(judge_answered) == 12
        assert all("temperature" not in b and b["max_completion_tokens"] == 12 for b in model_answered)
        assert all("temperature" not in b and b["max_completion_tokens"] == 512 for b in judge_answered)
        for rerun in (False, True):
            results = read_results(out)
            assert results["judge"]["endpoint_adaptations"] == REFUSED
            assert results["judge"]["temperature"] is None  # not sent: the judge sampled at its default
            assert results["models"]["after"]["endpoint_adaptations"] == REFUSED
            assert results["models"]["before"]["endpoint_adaptations"] == {}  # a local model
            report = (out / "report.md").read_text()
            assert "judge endpoint" in report and "model 'after'" in report and "no temperature was sent" in report
            if not rerun:
                assert main(argv) == 0  # everything from the caches: the clients learn nothing this time
                assert (len(model_requests), len(judge_requests)) == paid
        second = capsys.readouterr().err
        for err in (first, second):
            assert "judge endpoint (o-judge) refused" in err and "temperature left out" in err


def test_bad_inputs_are_located_errors(tiny_model_dir, adapter_dir, prompts_file, tmp_path, capsys):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": \n{"text": "no prompt field"}\n')
    app, _ = scripted_judge_app(never_decides)
    with BackgroundServer(app) as judge:
        assert main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(tiny_model_dir), "--prompts",
                     str(broken), "--judge", judge.url, "--out", str(tmp_path / "a"), *GEN]) == 2
        err = capsys.readouterr().err
        assert "prefloop eval winrate: error" in err
        assert "broken.jsonl:2: malformed JSON" in err and "broken.jsonl:3: no prompt field" in err

        out = tmp_path / "b"  # an adapter: answers that differ, so the judge is asked
        assert main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(adapter_dir), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(out), *GEN]) == 2
        err = capsys.readouterr().err
        assert re.search(r"gave no usable verdict in any of its \d+ judgments", err)  # identical answers: not asked
        assert len(answers(out, "after")) == 6  # partial results kept

        # the answers cache of another run (other sampling settings) is refused, with file, line and field
        assert main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(adapter_dir), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(out), *GEN, "--seed", "5"]) == 2
        err = capsys.readouterr().err
        assert "before.jsonl:1: field spec" in err and "seed=0 here, 5 now" in err

        # an answer whose id names a prompt of this run but whose prompt differs
        path = out / "answers" / "before.jsonl"
        lines = path.read_text().splitlines()
        record = json.loads(lines[2])
        record["key"] = "0" * 32
        lines[2] = json.dumps(record)
        path.write_text("\n".join(lines) + "\n")
        assert main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(adapter_dir), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(out), *GEN]) == 2
        assert "before.jsonl:3: field id" in capsys.readouterr().err

    assert main(["eval", "winrate", "--after", str(tiny_model_dir), "--prompts", str(prompts_file),
                 "--judge", "http://x", "--out", str(tmp_path / "c")]) == 2
    assert "give --before and --after" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"schema": "prefloop.eval/1",\n "kind": }')
    with pytest.raises(DataError, match=r"bad.json:2: not valid JSON"):
        read_results(tmp_path / "bad.json")


def test_human_votes_round_trip(tiny_model_dir, adapter_dir, prompts_file, tmp_path, capsys):
    db = tmp_path / "votes.sqlite"
    out = tmp_path / "human"
    assert main(["eval", "winrate", "--before", str(tiny_model_dir), "--after", str(adapter_dir), "--prompts",
                 str(prompts_file), "--human-db", str(db), "--out", str(out), *GEN]) == 0
    after = answers(out, "after")
    with Store(db) as store:
        items = store.label_items()
        assert len(items) == 6 and all(i["origin"].startswith("eval-winrate:") for i in items)
        by_answer = {i["response_a"]: i["id"] for i in items}
        ids = [by_answer[after[f"q{k}"]["answer"]] for k in range(6)]
        # q0, q1: after wins (one voter each); q2: tie; q3: loss; q4: two voters split -> tie; q5: skipped only
        store.add_vote(ids[0], "ann", "a", "ab")
        store.add_vote(ids[1], "ann", "a", "ba")
        store.add_vote(ids[2], "ann", "tie", "ab")
        store.add_vote(ids[3], "ann", "b", "ab")
        store.add_vote(ids[4], "ann", "a", "ab")
        store.add_vote(ids[4], "bob", "b", "ab")
        store.add_vote(ids[5], "ann", "skip", "ab")
    assert main(["eval", "winrate", "--from-db", str(db), "--out", str(tmp_path / "from-db")]) == 0
    m = read_results(tmp_path / "from-db")["metrics"]
    assert (m["wins"], m["ties"], m["losses"], m["n_prompts"]) == (2, 2, 1, 5)
    assert m["win_rate"] == pytest.approx(3 / 5) and m["n_excluded_prompts"] == 1
    # decisive votes and the side shown on the left: q0 a/ab left won; q1 a/ba right won; q3 b/ab right won;
    # q4 a/ab left won, b/ab right won -> 2 of 5
    assert m["first_position_rate"] == pytest.approx(2 / 5)


def test_leaderboard_orders_models_by_what_the_judge_prefers(tiny_model_dir, adapter_dir, prompts_file, tmp_path):
    app, _ = scripted_judge_app(prefers_longer)
    with BackgroundServer(app) as judge:
        assert main(["eval", "winrate", "--models", f"{adapter_dir}", "--baseline", str(tiny_model_dir), "--prompts",
                     str(prompts_file), "--judge", judge.url, "--out", str(tmp_path / "lb"), *GEN]) == 0
    results = read_results(tmp_path / "lb")
    assert results["kind"] == "leaderboard"
    assert results["judge"]["endpoint_adaptations"] == {}
    assert all(entry["endpoint_adaptations"] == {} for entry in results["models"].values())
    board = results["details"]["leaderboard"]
    assert board["model"]["rating"] == pytest.approx(1000.0)  # the tiny model directory's name is "model"
    wr = results["metrics"]["win_rate/adapter"]
    rating = results["metrics"]["rating/adapter"]
    assert (rating > 1000) == (wr > 0.5) and (rating < 1000) == (wr < 0.5)
    assert "Bradley" in (tmp_path / "lb" / "report.md").read_text()


def test_report_escapes_model_text_and_needs_nothing_remote(tmp_path):
    r = Report("t <b>", "sub")
    s = r.section("s", "text & more")
    s.table(["a|b", "c"], [["<script>alert(1)</script>", 0.5]])
    s.details("answer", "<img src=http://evil>\n```code```")
    paths = r.write(tmp_path)
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "<img src=http" not in page
    md = paths["markdown"].read_text()
    assert "a\\|b" in md and "````text" in md


def test_config_gives_the_held_out_prompts_and_both_models(tiny_model_dir, adapter_dir, tmp_path):
    from pathlib import Path

    from prefloop.data.loader import load_pairs, split_validation
    from prefloop.prompts import prompt_key

    data = Path(__file__).resolve().parents[1] / "examples" / "data" / "demo_preferences.jsonl"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"model_name_or_path: {tiny_model_dir}\noutput_dir: {adapter_dir}\ndataset: {data}\n"
                   "max_samples: 40\nval_size: 0.1\nseed: 3\nstage: dpo\nfinetuning_type: lora\n")
    app, _ = scripted_judge_app(prefers_longer)
    with BackgroundServer(app) as judge:
        assert main(["eval", "winrate", "--config", str(cfg), "--judge", judge.url, "--out", str(tmp_path / "o"),
                     *GEN]) == 0
    results = read_results(tmp_path / "o")
    _, held_out = split_validation(load_pairs(str(data), max_samples=40).pairs, 0.1, 3)
    assert results["metrics"]["n_prompts"] == len({prompt_key(p.prompt_messages()) for p in held_out}) == 4
    assert {a["key"] for a in answers(tmp_path / "o", "after").values()} == \
        {prompt_key(p.prompt_messages()) for p in held_out}
    assert results["models"]["after"]["adapter"] == str(adapter_dir)
    assert results["models"]["before"]["path"] == str(tiny_model_dir)


def test_compare_lists_metric_differences_and_changed_settings(tmp_path, capsys):
    from prefloop.evaluate.compare import compare_results
    from prefloop.evaluate.results import model_entry, new_results, write_results

    a = new_results("winrate", models={"after": model_entry(path="m1")}, judge={"name": "j1"},
                    metrics={"win_rate": 0.5, "wins": 3, "lc_win_rate": None})
    b = new_results("winrate", models={"after": model_entry(path="m2")}, judge={"name": "j1"},
                    metrics={"win_rate": 0.625, "wins": 5, "raw_win_rate": 0.5})
    diff = compare_results(a, b)
    rows = {m["name"]: m for m in diff["metrics"]}
    assert rows["win_rate"]["diff"] == pytest.approx(0.125) and rows["wins"]["diff"] == 2
    assert rows["lc_win_rate"]["diff"] is None and rows["raw_win_rate"]["a"] is None
    assert diff["settings"] == [{"name": "models.after.path", "a": "m1", "b": "m2"}]
    write_results(tmp_path / "a", a)
    write_results(tmp_path / "b", b)
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "+0.1250" in out and "models.after.path: A='m1'  B='m2'" in out
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "no such results file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="kind"):
        write_results(tmp_path / "c", {**a, "kind": "nonsense"})


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """`prefloop eval compare A B --json | head -1`: the closed pipe ends the command quietly (no BrokenPipeError
    traceback), exit 1 as Python itself exits on EPIPE."""
    import subprocess
    import sys

    from prefloop.evaluate.results import new_results, write_results

    for name, wins in (("a", 1), ("b", 2)):
        write_results(tmp_path / name, new_results("winrate", metrics={f"m{i}": wins * i for i in range(20000)}))
    proc = subprocess.Popen([sys.executable, "-m", "prefloop", "eval", "compare", str(tmp_path / "a"),
                             str(tmp_path / "b"), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_every_models_entry_records_endpoint_adaptations():
    """`eval prefs` builds its models entry by hand: it lacked endpoint_adaptations (its local model has none)."""
    from prefloop.evaluate.results import model_entry, new_results

    prefs = new_results("prefs", models={"model": {"path": "m", "adapter": None, "url": None, "name": "m",
                                                   "fingerprint": None}})
    assert prefs["models"]["model"]["endpoint_adaptations"] == {}
    assert model_entry(path="m")["endpoint_adaptations"] == {}
    assert model_entry(url="http://x", endpoint_adaptations={"temperature": "left out"})["endpoint_adaptations"] == {
        "temperature": "left out"}


def test_an_old_results_file_s_lc_length_weight_is_read_in_today_s_orientation(tmp_path):
    """The LC length weight changed sign on 2026-12-01 (Δlen = before − after, alpaca_eval's std_delta_len;
    before: after − before). A file written before reads back flipped and marked, a new one as written, so
    comparing the two shows the same fit; new files name their orientation."""
    from prefloop.evaluate.compare import compare_results
    from prefloop.evaluate.results import LC_ORIENTATION, model_entry, new_results, write_results
    from prefloop.evaluate.winrate import summarize

    fit = {"lc_win_rate": 0.55, "lc_win_rate_se": 0.05, "win_rate": 0.6, "C": 1.0, "n": 40, "warning": None}
    old_lc = {**fit, "weights": {"tanh_std_delta_len": 0.8, "constant": 0.2}}  # no n_missing: before the flip
    new_lc = {**fit, "weights": {"tanh_std_delta_len": -0.8, "constant": 0.2}, "n_missing": 0}
    common = dict(models={"after": model_entry(path="m")}, metrics={"lc_win_rate": 0.55})
    for name, lc, board in (("old", old_lc, {"m": {"lc": dict(old_lc)}}), ("new", new_lc, {"m": {"lc": dict(new_lc)}})):
        write_results(tmp_path / name, new_results("winrate", details={"lc": lc}, **common))
        write_results(tmp_path / f"{name}-board", new_results("leaderboard", details={"per_model": board}, **common))
    old, new = read_results(tmp_path / "old"), read_results(tmp_path / "new")
    assert old["details"]["lc"]["weights"] == new["details"]["lc"]["weights"] == {"tanh_std_delta_len": -0.8,
                                                                                   "constant": 0.2}
    assert old["details"]["lc"]["delta_len"] == new["details"]["lc"]["delta_len"] == LC_ORIENTATION
    assert "flipped" in old["details"]["lc"]["converted_on_read"] and "converted_on_read" not in new["details"]["lc"]
    board = read_results(tmp_path / "old-board")["details"]["per_model"]["m"]["lc"]
    assert board["weights"]["tanh_std_delta_len"] == -0.8
    diff = compare_results(old, new)
    assert diff["settings"] == [] and all(m["diff"] == 0 for m in diff["metrics"])
    # what summarize writes today carries the orientation, so it is never converted again
    from prefloop.evaluate.answers import Answer, AnswerSet
    from pathlib import Path

    a, b = AnswerSet("after", Path("a")), AnswerSet("before", Path("b"))
    rows = []
    for i, outcome in enumerate(["win", "loss", "tie", "win"]):
        a.by_key[f"k{i}"] = Answer(str(i), f"k{i}", [], "x" * (5 + i), None, 5 + i, "stop", "a")
        b.by_key[f"k{i}"] = Answer(str(i), f"k{i}", [], "y" * 6, None, 6, "stop", "b")
        rows.append({"id": str(i), "key": f"k{i}", "outcome": outcome})
    _, details = summarize(rows, a, b, resamples=20, seed=0, judge_stats=None)
    assert details["lc"]["delta_len"] == LC_ORIENTATION


def test_answer_cache_whose_last_newline_a_crash_cut_off_is_ended_before_appending(tmp_path):
    from prefloop.evaluate.answers import read_answer_cache
    from prefloop.prompts import Prompt

    spec = {"target": "m", "temperature": 0.7}
    prompts = [Prompt([{"role": "user", "content": q}], f"p{i}", "x") for i, q in enumerate(("hi", "bye"))]
    record = {"id": "p0", "key": prompts[0].key, "messages": prompts[0].messages, "answer": "hello", "chars": 5,
              "spec": spec}
    path = tmp_path / "after.jsonl"
    path.write_text(json.dumps(record))  # whole, without its newline
    found, other = read_answer_cache(path, spec, prompts)
    assert list(found) == [prompts[0].key] and other == 0
    assert path.read_text() == json.dumps(record) + "\n"  # the next answer starts on its own line
    path.write_text(json.dumps(record) + "\n" + json.dumps(record)[:20])  # cut in the middle: dropped
    found, _ = read_answer_cache(path, spec, prompts)
    assert list(found) == [prompts[0].key] and path.read_text() == json.dumps(record) + "\n"


def test_summarize_takes_every_rate_from_the_same_preferences_and_counts_missing_verdicts():
    """Averaged human votes are soft preferences: the win rate is their mean (alpaca_eval's win_rate), the
    discrete win rate rounds each first, the interval and the LC fit use the same values; a prompt without
    a verdict is left out of all of them and counted."""
    import numpy as np

    from prefloop import stats
    from prefloop.evaluate.answers import Answer, AnswerSet
    from prefloop.evaluate.winrate import summarize

    from pathlib import Path

    after, before = AnswerSet("after", Path("after.jsonl")), AnswerSet("before", Path("before.jsonl"))
    prefs = [2 / 3, 1.0, 0.5, 0.0, 1 / 3, None]  # votes a,a,b / a / tie / b / a,b,b / none
    rows = []
    for i, p in enumerate(prefs):
        key = f"k{i}"
        after.by_key[key] = Answer(str(i), key, [], "x" * (10 + 7 * i), None, 10 + 7 * i, "stop", "after")
        before.by_key[key] = Answer(str(i), key, [], "y" * (40 - 3 * i), None, 40 - 3 * i, "stop", "before")
        outcome = None if p is None else "win" if p > 0.5 else "loss" if p < 0.5 else "tie"
        rows.append({"id": str(i), "key": key, "outcome": outcome, **({"preference": p} if p is not None else {})})
    m, d = summarize(rows, after, before, resamples=200, seed=0, judge_stats=None)
    judged = [2 / 3, 1.0, 0.5, 0.0, 1 / 3]
    assert m["win_rate"] == pytest.approx(2.5 / 5)                 # mean of the soft preferences
    assert m["discrete_win_rate"] == pytest.approx((2 + 0.5) / 5)  # 2 wins, 1 tie, 2 losses
    assert (m["wins"], m["ties"], m["losses"], m["n_prompts"], m["n_excluded_prompts"]) == (2, 1, 2, 5, 1)
    assert m["win_rate_se"] == pytest.approx(np.std(judged, ddof=1) / np.sqrt(5))
    assert d["interval"]["estimate"] == pytest.approx(m["win_rate"]) and d["interval"]["n"] == 5
    # the LC fits the five verdicts; Δlen is normalised over all six prompts (alpaca_eval's featurizer)
    lc = stats.lc_win_rate(prefs, [10 + 7 * i for i in range(6)], [40 - 3 * i for i in range(6)])
    assert m["lc_win_rate"] == pytest.approx(lc.lc_win_rate) and d["lc"]["win_rate"] == pytest.approx(m["win_rate"])
    assert d["lc"]["n"] == 5 and d["lc"]["n_missing"] == 1
