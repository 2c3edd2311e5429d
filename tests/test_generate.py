"""`prefloop generate`: prompts in every accepted shape, a local model, an endpoint, resuming."""

import json

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from prefloop.errors import DataError
from prefloop.generate import generate_command
from prefloop.prompts import read_prompts
from prefloop.sampling import LocalGenerator
from prefloop.serve.app import create_app
from prefloop.serve.background import BackgroundServer
from prefloop.serve.engine import GenerationEngine


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


PLAIN = [
    {"prompt": "Name a city in France."},
    {"id": "conv", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello!"}]},
    {"conversations": [{"from": "human", "value": "What is two plus two?"}], "system": "You count."},
    {"instruction": "Translate", "input": "bonjour"},
    {"prompt": [{"role": "user", "content": "Tell me about the sun"}]},
    {"prompt": "Name a city in France."},
]


def read_out(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_read_prompts_accepts_every_plain_shape(tmp_path):
    result = read_prompts(str(write_jsonl(tmp_path / "p.jsonl", PLAIN)))
    messages = [p.messages for p in result.prompts]
    assert messages == [
        [{"role": "user", "content": "Name a city in France."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "You count."}, {"role": "user", "content": "What is two plus two?"}],
        [{"role": "user", "content": "Translate\nbonjour"}],
        [{"role": "user", "content": "Tell me about the sun"}],
    ]
    assert [p.id for p in result.prompts][:2] == ["p:1", "conv"]
    assert result.duplicates == 1 and result.trailing_answers_dropped == 1


def test_read_prompts_from_preference_data(tmp_path):
    pairs = [{"conversations": [{"from": "human", "value": f"Question {i}?"}], "chosen": "yes", "rejected": "no"}
             for i in range(3)]
    result = read_prompts(str(write_jsonl(tmp_path / "prefs.jsonl", pairs)))
    assert result.kind == "preference pairs"
    assert [p.messages[-1]["content"] for p in result.prompts] == ["Question 0?", "Question 1?", "Question 2?"]


def test_bad_prompt_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n{"messages": [{"role": "alien", "content": "x"}]}\n')
    with pytest.raises(DataError) as info:
        read_prompts(str(path))
    assert "bad.jsonl:2" in str(info.value) and "no prompt field" in str(info.value)
    assert "bad.jsonl:3" in str(info.value) and "alien" in str(info.value)
    assert len(read_prompts(str(path), skip_bad_rows=True).prompts) == 1


def test_blank_prompts_are_bad_rows_when_read(tmp_path):
    """An empty or blank prompt is a bad row of the prompt file (file:line, field), not a prompt sent to the model."""
    path = write_jsonl(tmp_path / "blank.jsonl", [
        {"prompt": "ok"}, {"prompt": ""}, {"prompt": "  \n"}, {"messages": [{"role": "user", "content": ""}]},
        {"instruction": "", "input": ""}, {"system": "be nice", "prompt": " "},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}]}])
    with pytest.raises(DataError) as info:
        read_prompts(str(path))
    message = str(info.value)
    assert "6 problems reading prompts" in message, message
    for line, field in [(2, "prompt"), (3, "prompt"), (4, "messages"), (5, "instruction"), (6, "prompt"), (7, "messages")]:
        assert f"blank.jsonl:{line}" in message and field in message
    assert "no text" in message
    result = read_prompts(str(path), skip_bad_rows=True)
    assert [p.messages[-1]["content"] for p in result.prompts] == ["ok"] and result.skipped.count == 6


def test_a_prompt_record_giving_a_key_twice_is_a_bad_row(tmp_path):
    """Every reader of records (here prompts and candidate files) refuses a key given twice, as the pair loader does."""
    from prefloop.candidates import read_records

    path = tmp_path / "dup.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "first", "prompt": "second"}\n')
    with pytest.raises(DataError, match=r"dup.jsonl:2.*prompt.*given twice"):
        read_prompts(str(path))
    with pytest.raises(DataError, match=r"dup.jsonl:2: field .prompt.: key .prompt. is given twice"):
        read_records(path)


def run(model, prompts, out, **kw):
    args = dict(model=str(model), prompts=str(prompts), out=str(out), n=3, max_new_tokens=6, batch_size=4, seed=1)
    return generate_command(**(args | kw))


def test_local_model_writes_n_candidates_per_prompt(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN)
    assert run(tiny_model_dir, prompts, tmp_path / "out.jsonl") == 0
    records = read_out(tmp_path / "out.jsonl")
    assert len(records) == 5
    for r in records:
        assert len(r["candidates"]) == 3 and all(isinstance(c, str) for c in r["candidates"])
        assert r["finish_reasons"] == ["length"] * 3 or "stop" in r["finish_reasons"]
        assert r["model"] == "model" and r["params"]["n"] == 3
    assert len(set(records[0]["candidates"])) > 1  # sampled, not greedy
    # The same seed gives the same samples, whatever the batch size.
    assert run(tiny_model_dir, prompts, tmp_path / "again.jsonl", batch_size=2) == 0
    by_id = {r["id"]: r["candidates"] for r in read_out(tmp_path / "again.jsonl")}
    assert {r["id"]: r["candidates"] for r in records} == by_id


def test_rerun_resumes_after_an_interrupted_run(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN[:2])
    out = tmp_path / "out.jsonl"
    assert run(tiny_model_dir, prompts, out) == 0
    first = read_out(out)
    with out.open("a") as f:
        f.write('{"id": "p:3", "messages": [{"role": "us')  # a crash mid-write
    write_jsonl(prompts, PLAIN)
    assert run(tiny_model_dir, prompts, out) == 0
    records = read_out(out)
    assert records[:2] == first
    assert len(records) == 5 and len({r["id"] for r in records}) == 5
    fresh = tmp_path / "fresh.jsonl"
    assert run(tiny_model_dir, prompts, fresh) == 0
    assert sorted(map(json.dumps, records)) == sorted(map(json.dumps, read_out(fresh)))


def test_rerun_after_a_crash_that_cut_off_only_the_newline(tiny_model_dir, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN[:2])
    out = tmp_path / "out.jsonl"
    assert run(tiny_model_dir, prompts, out) == 0
    out.write_bytes(out.read_bytes().rstrip(b"\n"))  # the last record is whole, its newline never written
    write_jsonl(prompts, PLAIN[:3])
    assert run(tiny_model_dir, prompts, out) == 0
    records = read_out(out)
    assert len(records) == 3 and len({r["id"] for r in records}) == 3


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    engine = GenerationEngine(LocalGenerator.load(str(tiny_model_dir)))
    with BackgroundServer(create_app(engine, "tiny")) as server:
        yield server
    engine.close()


def test_endpoint_generation_matches_across_runs(server, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN)
    assert run(server.url, prompts, tmp_path / "a.jsonl", n=2, concurrency=3) == 0
    assert run(server.url + "/v1", prompts, tmp_path / "b.jsonl", n=2, concurrency=1) == 0
    a, b = read_out(tmp_path / "a.jsonl"), read_out(tmp_path / "b.jsonl")
    assert len(a) == 5 and all(r["model"] == "tiny" and len(r["candidates"]) == 2 for r in a)
    assert {r["id"]: r["candidates"] for r in a} == {r["id"]: r["candidates"] for r in b}


def test_endpoint_rate_limits_are_retried(server, tmp_path):
    """A proxy that answers 429 and 503 before passing requests on to the real server."""
    failures = {"left": 3}
    proxy = FastAPI()

    @proxy.api_route("/v1/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request):
        if request.method == "POST" and failures["left"] > 0:
            failures["left"] -= 1
            status = 429 if failures["left"] % 2 else 503
            return Response('{"error": {"message": "slow down"}}', status, headers={"retry-after-ms": "10"})
        async with httpx.AsyncClient() as client:
            upstream = await client.request(request.method, f"{server.url}/v1/{path}", content=await request.body(),
                                            headers={"content-type": "application/json"}, timeout=60)
        return Response(upstream.content, upstream.status_code, media_type="application/json")

    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN[:2])
    with BackgroundServer(proxy) as flaky:
        assert run(flaky.url, prompts, tmp_path / "out.jsonl", model_name="tiny", n=1, concurrency=1) == 0
    assert failures["left"] == 0 and len(read_out(tmp_path / "out.jsonl")) == 2


def test_failed_prompts_are_reported_and_not_written(server, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN[:2])
    out = tmp_path / "out.jsonl"
    assert run(server.url, prompts, out, model_name="no-such-model") == 1
    assert "2 prompts failed" in capsys.readouterr().err
    assert not out.exists() or out.read_text() == ""


def test_a_prompt_the_chat_template_refuses_fails_alone(tmp_path, capsys):
    """A local model whose template raises on a system turn (Gemma 2's "System role not supported") took the
    whole run down with a jinja2 traceback; that prompt fails alone, reported, and the others are written."""
    from prefloop.testing import build_tiny_model, build_tiny_tokenizer

    template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = build_tiny_tokenizer(chat_template=template)
    model_dir = tmp_path / "no-system"
    build_tiny_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = write_jsonl(tmp_path / "p.jsonl", PLAIN[:2])  # the second one has a system turn
    out = tmp_path / "out.jsonl"
    assert run(model_dir, prompts, out, n=1) == 1
    err = capsys.readouterr().err
    assert "System role not supported" in err and "1 prompt cannot be sent to this model" in err
    assert [r["messages"] for r in read_out(out)] == [[{"role": "user", "content": "Name a city in France."}]]
