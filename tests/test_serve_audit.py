"""Audit of `prefloop serve` against the real `openai` client: context limits, empty prompts, stop strings,
n > 1, logprob bounds, penalties and the end of a stream."""

import json

import openai
import pytest

from prefloop.sampling import LocalGenerator, SamplingParams
from prefloop.serve.app import create_app
from prefloop.serve.background import BackgroundServer
from prefloop.serve.engine import GenerationEngine

MODEL = "tiny"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
NO_STOP = {"0": -100, "2": -100}  # the tiny vocabulary's <|endoftext|> and <|im_end|>


@pytest.fixture(scope="module")
def short_generator(tiny_model_dir, tmp_path_factory):
    """The tiny model with a 60-token context."""
    import shutil

    path = tmp_path_factory.mktemp("short") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 60}))
    return LocalGenerator.load(str(path))


@pytest.fixture(scope="module")
def server(short_generator):
    engine = GenerationEngine(short_generator)
    with BackgroundServer(create_app(engine, MODEL)) as server:
        yield server
    engine.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def create(client, **kwargs):
    return client.chat.completions.create(**({"model": MODEL, "messages": HELLO, "max_tokens": 4} | kwargs))


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_context_length_exceeded(client, stream):
    """As OpenAI and vLLM: 400, invalid_request_error, param messages, code context_length_exceeded."""
    with pytest.raises(openai.BadRequestError) as info:
        create(client, messages=[{"role": "user", "content": "word " * 80}], stream=stream, max_tokens=None)
    body = info.value.body
    assert info.value.status_code == 400 and body["code"] == "context_length_exceeded"
    assert body["type"] == "invalid_request_error" and body["param"] == "messages"
    assert "maximum context length is 60 tokens" in body["message"] and "no room for an answer" in body["message"]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "Be brief."}],
    [{"role": "user", "content": [{"type": "text", "text": " "}]}],
])
def test_a_request_with_no_user_text_is_a_400_naming_messages(client, messages):
    with pytest.raises(openai.BadRequestError) as info:
        create(client, messages=messages)
    assert info.value.body["param"] == "messages" and "no user message holds any text" in info.value.body["message"]


def test_an_answer_reaching_the_context_ends_with_length_streamed_or_not(client, short_generator):
    prompt_tokens = len(short_generator.encode_chat(HELLO))
    whole = create(client, max_tokens=None, temperature=0, logit_bias=NO_STOP)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 60 - prompt_tokens
    chunks = list(create(client, max_tokens=None, temperature=0, logit_bias=NO_STOP, stream=True,
                         stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


def test_stop_as_a_string_or_a_list_cuts_at_the_earliest_stop(client):
    full = create(client, max_tokens=12, temperature=0, logit_bias=NO_STOP).choices[0].message.content
    first, later = full[2:4], full[6:8]
    assert full.find(first) < full.find(later)
    expected = full[: full.find(first)]
    for stop in (first, [first], [later, first]):
        for stream in (False, True):
            if stream:
                chunks = list(create(client, max_tokens=12, temperature=0, logit_bias=NO_STOP, stop=stop, stream=True))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            else:
                choice = create(client, max_tokens=12, temperature=0, logit_bias=NO_STOP, stop=stop).choices[0]
                text, reasons = choice.message.content, [choice.finish_reason]
            assert (text, reasons) == (expected, ["stop"]), (stop, stream)


def test_n_choices_streamed_end_each_with_a_finish_reason_then_one_usage_chunk(client):
    chunks = list(create(client, n=3, max_tokens=5, temperature=1.0, seed=5, logit_bias=NO_STOP, stream=True,
                         stream_options={"include_usage": True}))
    finished = sorted(ch.index for c in chunks for ch in c.choices if ch.finish_reason)
    assert finished == [0, 1, 2]
    # as OpenAI (vLLM #35705): the finish chunk has an empty delta, after the choice's last content
    assert all(not ch.delta.content and ch.delta.role is None for c in chunks for ch in c.choices if ch.finish_reason)
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 15
    assert last.usage.total_tokens == last.usage.prompt_tokens + 15
    whole = create(client, n=3, max_tokens=5, temperature=1.0, seed=5, logit_bias=NO_STOP)
    texts = {i: "" for i in range(3)}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole.choices]
    assert whole.usage.prompt_tokens == last.usage.prompt_tokens  # the prompt counts once, as OpenAI does


def test_top_logprobs_bounds_as_openai(client):
    resp = create(client, max_tokens=2, logprobs=True, top_logprobs=20)
    assert all(len(e.top_logprobs) == 20 for e in resp.choices[0].logprobs.content)
    for bad in (21, -1):
        with pytest.raises(openai.BadRequestError) as info:
            create(client, logprobs=True, top_logprobs=bad)
        assert info.value.body["param"] == "top_logprobs"
    assert create(client, max_tokens=2, logprobs=False).choices[0].logprobs is None


def test_max_tokens_zero_is_refused_by_name(client):
    for name in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as info:
            create(client, **{"max_tokens": None, name: 0})
        assert info.value.body["param"] == name


def test_penalties_are_honoured(client, short_generator):
    """frequency/presence penalties change the answer as the sampler's OpenAI formula says."""
    kwargs = dict(max_tokens=8, temperature=0, logit_bias=NO_STOP, frequency_penalty=2.0, presence_penalty=2.0)
    got = create(client, **kwargs).choices[0].message.content
    params = SamplingParams(8, temperature=0, frequency_penalty=2.0, presence_penalty=2.0,
                            logit_bias=tuple((int(t), float(b)) for t, b in NO_STOP.items()))
    expected = short_generator.generate([(short_generator.encode_chat(HELLO), params)])[0].text
    assert got == expected


def test_generate_from_an_endpoint_reports_refused_prompts_as_ones_to_fix_not_to_retry(server, tmp_path, capsys):
    """The endpoint's 400 (context_length_exceeded) fails that prompt alone, named by file:line;
    it is counted with the prompts that cannot be sent as they are (rerunning would not help), not to retry."""
    from prefloop.generate import generate_command

    prompts = tmp_path / "p.jsonl"
    records = [{"prompt": "word " * 80}, {"prompt": "Name a city."}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    assert generate_command(server.url, str(prompts), str(out), n=1, max_new_tokens=4) == 1
    err = capsys.readouterr().err
    assert f"failed {prompts}:1 (id p:1): BadRequestError" in err and "maximum context length is 60" in err
    assert "1 prompt cannot be sent to this model as written" in err and "retry" not in err
    assert len(out.read_text().splitlines()) == 1
