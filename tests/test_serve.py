"""`prefloop serve` through the real `openai` client on a free 127.0.0.1 port with a tiny model."""

import json
import threading
import time

import httpx
import openai
import pytest

from prefloop.models import load_causal_lm, load_tokenizer
from prefloop.sampling import LocalGenerator, SamplingParams
from prefloop.serve.app import create_app
from prefloop.serve.background import BackgroundServer
from prefloop.serve.engine import GenerationEngine
from prefloop.store import Store

MODEL = "tiny"
KEY = "sk-test-123"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return LocalGenerator(load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def engine(generator):
    engine = GenerationEngine(generator, max_batch_rows=16)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("serve") / "prefloop.sqlite") as store:
        yield store


@pytest.fixture(scope="module")
def server(engine, store):
    with BackgroundServer(create_app(engine, MODEL, store=store, max_tokens_limit=64)) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_chat_completion_matches_the_model_greedy_output(client, generator):
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    choice = resp.choices[0]
    expected = generator.generate([(generator.encode_chat(HELLO), SamplingParams(12, temperature=0))])[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert resp.usage.prompt_tokens == len(generator.encode_chat(HELLO))
    assert resp.usage.completion_tokens == len(expected.token_ids)
    assert resp.model == MODEL and resp.object == "chat.completion"


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["logging"] is True


def test_streaming_gives_the_same_text_as_one_response(client):
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=16, temperature=0.9, seed=7)
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.finish_reason]
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_n_choices_are_seeded_and_differ(client):
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=10, temperature=1.0, n=3, seed=11)
    first = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    again = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    assert len(first) == 3 and first == again
    assert len(set(first)) > 1


def test_streaming_n_choices(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, n=2, stream=True,
                                                 temperature=0))
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts[0] == texts[1] != ""  # greedy: both choices equal


def test_logprobs(client):
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0, logprobs=True,
                                          top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy picks the top token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    assert "".join(e.token for e in content) == resp.choices[0].message.content


def test_stop_string_cuts_the_answer(client):
    full = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.find(stop)]


@pytest.mark.parametrize(
    "kwargs, error, param",
    [
        (dict(model="gpt-4"), openai.NotFoundError, "model"),
        (dict(messages=[]), openai.BadRequestError, "messages"),
        (dict(max_tokens=65), openai.BadRequestError, "max_tokens"),
        (dict(temperature=3.0), openai.BadRequestError, "temperature"),
        (dict(n=17), openai.BadRequestError, "n"),
        (dict(messages=[{"role": "wizard", "content": "hi"}]), openai.BadRequestError, "messages[0].role"),
    ],
)
def test_bad_requests_get_openai_errors(client, kwargs, error, param):
    request = dict(model=MODEL, messages=HELLO, max_tokens=4) | kwargs
    with pytest.raises(error) as info:
        client.chat.completions.create(**request)
    assert info.value.body["param"] == param
    assert info.value.body["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(server):
    resp = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "could not parse the JSON" in resp.json()["error"]["message"]


@pytest.mark.parametrize("body", [b"", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"model": "tiny",}'])
def test_every_unreadable_body_is_a_400_in_openai_shape(server, body):
    """Nesting deeper than the JSON parser recurses was a RecursionError: a 500 that closed the connection."""
    resp = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_api_key_is_enforced(engine):
    with BackgroundServer(create_app(engine, MODEL, api_key=KEY)) as server:
        good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.get(server.url + "/health").status_code == 200  # health stays open for probes


def test_concurrent_clients_are_batched_and_all_answered(client, engine):
    results, errors = {}, []
    batches_before = engine.batches_run

    def ask(i):
        try:
            resp = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Question number {i}?"}], max_tokens=24,
                temperature=0.7, seed=i)
            results[i] = resp.choices[0].message.content
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and sorted(results) == list(range(8))
    assert engine.largest_batch > 1  # requests that arrived together were decoded together
    assert engine.batches_run - batches_before < 8


def test_interactions_are_logged_and_feedback_recorded(client, server, store):
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, n=2, seed=3, logprobs=True,
                                          extra_body={"conversation_id": "conv-42"})
    ids = [c.model_extra["interaction_id"] for c in resp.choices]
    assert resp.model_extra["conversation_id"] == "conv-42"
    logged = {i["id"]: i for i in store.interactions()}
    for choice, iid in zip(resp.choices, ids):
        assert logged[iid]["response"] == choice.message.content
        assert logged[iid]["messages"] == HELLO and logged[iid]["conversation_id"] == "conv-42"
        assert logged[iid]["params"]["n"] == 2
        # each choice's own token count (one log-prob per token), and the two add up to the response's usage
        assert logged[iid]["usage"]["completion_tokens"] == len(choice.logprobs.content)
        assert logged[iid]["usage"]["prompt_tokens"] == resp.usage.prompt_tokens
    assert sum(logged[i]["usage"]["completion_tokens"] for i in ids) == resp.usage.completion_tokens

    thumbs = httpx.post(server.url + "/v1/feedback", json={"interaction_id": ids[0], "value": "up",
                                                           "annotator": "ana"})
    choice = httpx.post(server.url + "/v1/feedback", json={"interaction_id": ids[0], "other_interaction_id": ids[1],
                                                           "value": "other"})
    assert thumbs.status_code == 200 and choice.status_code == 200
    fb = store.feedback()[-2:]
    assert (fb[0]["kind"], fb[0]["value"], fb[0]["annotator"]) == ("thumbs", "up", "ana")
    assert (fb[1]["kind"], fb[1]["value"], fb[1]["other_interaction_id"]) == ("choice", "other", ids[1])

    missing = httpx.post(server.url + "/v1/feedback", json={"interaction_id": 999999, "value": "up"})
    assert missing.status_code == 404 and "no interaction" in missing.json()["error"]["message"]
    wrong = httpx.post(server.url + "/v1/feedback", json={"interaction_id": ids[0], "value": "meh"})
    assert wrong.status_code == 400


def test_streamed_interactions_are_logged(client, store):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, stream=True, seed=1))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].model_extra.get("interaction_id") for c in chunks if c.choices[0].finish_reason]
    assert store.interaction(finals[0])["response"] == text


def test_feedback_without_a_store_says_how_to_enable_it(engine):
    with BackgroundServer(create_app(engine, MODEL)) as server:
        resp = httpx.post(server.url + "/v1/feedback", json={"interaction_id": 1, "value": "up"})
    assert resp.status_code == 404 and "--db" in resp.json()["error"]["message"]


def test_serve_command_line_runs_the_server(tiny_model_dir, tmp_path):
    """The real CLI process: starts, answers, and logs to --db."""
    import subprocess
    import sys
    import time

    from prefloop.serve.background import free_port

    port, db = free_port(), tmp_path / "log.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "prefloop", "serve", str(tiny_model_dir), "--port", str(port),
                             "--db", str(db), "--model-name", "cli-tiny"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        resp = client.chat.completions.create(model="cli-tiny", messages=HELLO, max_tokens=3)
        assert resp.choices[0].model_extra["interaction_id"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert json.loads(json.dumps(Store(db).interactions()))[0]["model"] == "cli-tiny"


def test_adapter_changes_what_is_served(tiny_model_dir, tmp_path):
    """--adapter: a LoRA adapter (peft) is applied; its non-zero weights change the model's log-probs."""
    from peft import LoraConfig, get_peft_model

    from prefloop.testing import build_tiny_model

    peft_model = get_peft_model(build_tiny_model(load_tokenizer(str(tiny_model_dir))),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    params = SamplingParams(4, temperature=0, logprobs=True)
    base = LocalGenerator.load(str(tiny_model_dir))
    tuned = LocalGenerator.load(str(tiny_model_dir), adapter=str(tmp_path / "adapter"))
    prompt = base.encode_chat(HELLO)
    first_base = base.generate([(prompt, params)])[0].logprobs[0].logprob
    first_tuned = tuned.generate([(prompt, params)])[0].logprobs[0].logprob
    assert first_base != pytest.approx(first_tuned, abs=1e-6)


# --- every request field the openai client can send: honoured (with its right value) or refused by name ---

NO_STOP = {"0": -100, "2": -100}  # the tiny vocabulary's <|endoftext|> and <|im_end|>: the answer runs to its budget


@pytest.fixture(scope="module")
def short_context_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a 60-token context (its config says so, as a real model's does)."""
    import shutil

    path = tmp_path_factory.mktemp("short") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 60}))
    return path


@pytest.fixture(scope="module")
def short_client(short_context_dir):
    engine = GenerationEngine(LocalGenerator.load(str(short_context_dir)))
    with BackgroundServer(create_app(engine, MODEL)) as server:
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    engine.close()


def test_the_stop_ids_of_the_tiny_vocabulary(generator):
    assert generator.stop_ids == {int(t) for t in NO_STOP}


@pytest.mark.parametrize("limit", [{}, {"max_tokens": None}, {"max_completion_tokens": None}])
def test_no_max_tokens_means_what_the_context_leaves(short_client, limit):
    """Issue 12 item 4: no (or a null) max_tokens was a 400 'max_tokens asks for 2048 more'."""
    resp = short_client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, logit_bias=NO_STOP,
                                                **limit)
    assert resp.usage.prompt_tokens == 43
    assert resp.usage.completion_tokens == 60 - 43 and resp.choices[0].finish_reason == "length"


def test_max_tokens_beyond_the_context_and_prompts_longer_than_it(short_client):
    assert short_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=17, logit_bias=NO_STOP
                                                ).usage.completion_tokens == 17
    with pytest.raises(openai.BadRequestError) as info:
        short_client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=18)
    assert info.value.body["code"] == "context_length_exceeded" and "17 tokens left" in info.value.body["message"]
    long = [{"role": "user", "content": "word " * 80}]
    with pytest.raises(openai.BadRequestError) as info:
        short_client.chat.completions.create(model=MODEL, messages=long)
    assert info.value.body["param"] == "messages" and "no room for an answer" in info.value.body["message"]


def test_max_tokens_limit_caps_requests_without_max_tokens(engine):
    with BackgroundServer(create_app(engine, MODEL, max_tokens_limit=5)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        resp = client.chat.completions.create(model=MODEL, messages=HELLO, logit_bias=NO_STOP)
        assert resp.usage.completion_tokens == 5 and resp.choices[0].finish_reason == "length"
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=6)
        assert info.value.body["param"] == "max_completion_tokens"


def test_max_completion_tokens_is_honoured_and_must_agree_with_max_tokens(client):
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3, logit_bias=NO_STOP)
    assert resp.usage.completion_tokens == 3
    same = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3, max_tokens=3,
                                          logit_bias=NO_STOP)
    assert same.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3, max_tokens=4)
    assert info.value.body["param"] == "max_completion_tokens"


def test_stop_as_a_string(client):
    text = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0
                                          ).choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, temperature=0, stop=stop)
    assert cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_top_p_zero_and_temperature_zero_are_greedy(client, generator):
    greedy = generator.generate([(generator.encode_chat(HELLO), SamplingParams(10, temperature=0))])[0].text
    for kwargs in (dict(temperature=0), dict(temperature=0.0, top_p=0.0), dict(temperature=1.5, top_p=0, seed=5)):
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, **kwargs
                                              ).choices[0].message.content == greedy


def test_a_seed_repeats_and_another_seed_differs(client):
    def ask(seed):
        return client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, seed=seed,
                                              logit_bias=NO_STOP).choices[0].message.content

    assert ask(21) == ask(21) != ask(22)


def _reference_greedy(generator, prompt_ids, steps, frequency=0.0, presence=0.0, bias=None):
    """Greedy decoding written out plainly (whole sequence each step, no cache), penalties by
    OpenAI's formula: logit[j] - c[j] * frequency - (c[j] > 0) * presence + bias[j]."""
    import torch

    ids, out = list(prompt_ids), []
    with torch.no_grad():
        for _ in range(steps):
            logits = generator.model(torch.tensor([ids])).logits[0, -1].double()
            for token, b in (bias or {}).items():
                logits[int(token)] += b
            for token in set(out):
                logits[token] -= out.count(token) * frequency + presence
            token = int(logits.argmax())
            if token in generator.stop_ids:
                break
            ids.append(token)
            out.append(token)
    return generator.tokenizer.decode(out, skip_special_tokens=True)


# With token 196 far ahead the plain greedy answer repeats it and positive penalties break the repeat;
# without a bias the plain answer never repeats a token and a negative penalty makes it.
@pytest.mark.parametrize("frequency, presence, bias", [(0.0, 2.0, {"196": 1.5}), (1.5, 0.0, {"196": 1.5}),
                                                       (0.7, 0.6, {"196": 1.5}), (-2.0, 0.0, None)])
def test_frequency_and_presence_penalties(client, generator, frequency, presence, bias):
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=10, temperature=0, logit_bias=bias)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    got = client.chat.completions.create(**kwargs, frequency_penalty=frequency, presence_penalty=presence)
    expected = _reference_greedy(generator, generator.encode_chat(HELLO), 10, frequency, presence, bias)
    assert got.choices[0].message.content == expected
    assert plain == _reference_greedy(generator, generator.encode_chat(HELLO), 10, bias=bias)
    assert expected != plain  # the penalty changed the answer, so the comparison means something


def test_logit_bias_forces_and_bans_tokens(client, generator):
    forced = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, logit_bias={"300": 100},
                                            logprobs=True)
    assert [e.token for e in forced.choices[0].logprobs.content] == [generator.tokenizer.decode([300])] * 4
    greedy = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1, temperature=0, logprobs=True)
    first = greedy.choices[0].logprobs.content[0].token
    first_id = generator.tokenizer.convert_tokens_to_ids(generator.tokenizer.tokenize(first))[0]
    banned = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1, temperature=0, logprobs=True,
                                            logit_bias={str(first_id): -100})
    assert banned.choices[0].logprobs.content[0].token != first
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1, logit_bias={"999999": 5})
    assert info.value.body["param"] == "logit_bias" and "not a token id" in info.value.body["message"]


def test_stream_options_usage_and_obfuscation(client):
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True,
                                                                                         "include_obfuscation": True}))
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump() and chunks[-1].choices == []
    assert all(c.usage is None and c.obfuscation for c in chunks[:-1])
    plain = list(client.chat.completions.create(**kwargs, stream=True))
    assert all(c.choices and c.obfuscation is None for c in plain)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kwargs, stream_options={"include_usage": True})
    assert info.value.body["param"] == "stream_options"


def test_fields_that_change_nothing_here_are_accepted(client):
    """tool_choice none/auto with no tools, parallel_tool_calls, response_format text, modalities text,
    service_tier auto/default: the answer is the plain greedy one."""
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    for extra in (dict(tool_choice="none"), dict(tool_choice="auto", tools=[]), dict(parallel_tool_calls=False),
                  dict(response_format={"type": "text"}), dict(modalities=["text"]), dict(service_tier="default"),
                  dict(service_tier="auto")):
        assert client.chat.completions.create(**(kwargs | extra)).choices[0].message.content == plain, extra
    as_developer = [{"role": "developer", "content": "Be brief."}, *HELLO]
    as_system = [{"role": "system", "content": "Be brief."}, *HELLO]
    assert client.chat.completions.create(**(kwargs | {"messages": as_developer})).choices[0].message.content == \
        client.chat.completions.create(**(kwargs | {"messages": as_system})).choices[0].message.content


def test_user_metadata_and_safety_identifier_are_logged(client, store):
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, user="user-7",
                                          safety_identifier="hash-9", metadata={"app": "docs", "exp": "b"})
    logged = store.interaction(resp.choices[0].model_extra["interaction_id"])
    assert logged["params"]["user"] == "user-7" and logged["params"]["safety_identifier"] == "hash-9"
    assert logged["params"]["metadata"] == {"app": "docs", "exp": "b"}


def test_store_false_is_not_logged_and_store_true_needs_a_store(client, store, engine):
    before = len(store.interactions())
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, store=False)
    assert "interaction_id" not in resp.choices[0].model_extra and len(store.interactions()) == before
    streamed = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, store=False,
                                                   stream=True))
    assert streamed and len(store.interactions()) == before
    kept = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, store=True)
    kept_id = kept.choices[0].model_extra["interaction_id"]
    assert store.interaction(kept_id)["response"] == kept.choices[0].message.content
    with BackgroundServer(create_app(engine, MODEL)) as server:
        bare = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            bare.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, store=True)
        assert info.value.body["param"] == "store" and "--db" in info.value.body["message"]
        assert bare.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, store=False).choices


TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(tools=[TOOL]), "tools"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tool_choice={"type": "function", "function": {"name": "weather"}}), "tool_choice"),
        (dict(parallel_tool_calls="yes"), "parallel_tool_calls"),
        (dict(functions=[TOOL["function"]]), "functions"),
        (dict(function_call="auto"), "function_call"),
        (dict(response_format={"type": "json_object"}), "response_format"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), "response_format"),
        (dict(audio={"voice": "alloy", "format": "wav"}), "audio"),
        (dict(modalities=["text", "audio"]), "modalities"),
        (dict(prediction={"type": "content", "content": "Paris"}), "prediction"),
        (dict(reasoning_effort="low"), "reasoning_effort"),
        (dict(verbosity="low"), "verbosity"),
        (dict(web_search_options={}), "web_search_options"),
        (dict(moderation={"model": "omni-moderation-latest"}), "moderation"),
        (dict(prompt_cache_key="k"), "prompt_cache_key"),
        (dict(prompt_cache_retention="24h"), "prompt_cache_retention"),
        (dict(prompt_cache_options={"mode": "explicit"}), "prompt_cache_options"),
        (dict(service_tier="flex"), "service_tier"),
        (dict(logprobs="yes"), "logprobs"),
        (dict(top_logprobs=3), "top_logprobs"),
        (dict(top_logprobs=21, logprobs=True), "top_logprobs"),
        (dict(seed=1.5), "seed"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(frequency_penalty=2.5), "frequency_penalty"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(user=["u"]), "user"),
        (dict(metadata={"k": 1}), "metadata"),
        (dict(store="yes"), "store"),
        (dict(stream="yes"), "stream"),
        (dict(extra_body={"top_k": 5}), "top_k"),
        (dict(messages=[{"role": "user", "content": "hi", "name": "ana"}]), "messages[0].name"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]),
         "messages[0].content[0]"),
        (dict(messages=[{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}, *HELLO]),
         "messages[0].tool_calls"),
    ],
)
def test_fields_this_server_cannot_honour_are_refused_by_name(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**(dict(model=MODEL, messages=HELLO, max_tokens=4) | kwargs))
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"
    assert param.split("[")[0].split(".")[0] in info.value.body["message"]


def test_every_create_parameter_of_the_openai_client_is_handled():
    """A new openai release that adds a request field fails here until the server honours or refuses it."""
    import inspect

    from openai.resources.chat.completions import Completions

    from prefloop.serve.protocol import KNOWN_FIELDS

    sent = set(inspect.signature(Completions.create).parameters) - {"self", "extra_headers", "extra_query",
                                                                   "extra_body", "timeout"}
    assert sent - KNOWN_FIELDS == set()


def test_the_endpoint_client_sends_penalties_and_logit_bias(client, generator):
    """SamplingParams mean the same through an endpoint as on the local model."""
    from prefloop.chat_clients import ChatCall, EndpointChatClient

    params = SamplingParams(10, temperature=0, frequency_penalty=1.5, presence_penalty=0.5, logit_bias=((196, 1.5),))
    [(_, completion)] = list(EndpointChatClient(client, MODEL).complete_many([ChatCall(HELLO, 1, params)]))
    assert completion.texts == [generator.generate([(generator.encode_chat(HELLO), params)])[0].text]
    assert completion.texts[0] == _reference_greedy(generator, generator.encode_chat(HELLO), 10, 1.5, 0.5,
                                                    {"196": 1.5})


def test_message_names_reach_a_template_that_renders_them(tmp_path):
    """A field the model's chat template reads (here `name`) is passed on to it, not dropped."""
    from prefloop.testing import build_tiny_model, build_tiny_tokenizer

    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m['name'] %} ({{ m['name'] }}){% endif %}\n"
                "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% endif %}")
    tokenizer = build_tiny_tokenizer(chat_template=template)
    generator = LocalGenerator(build_tiny_model(tokenizer), tokenizer)
    engine = GenerationEngine(generator)
    named = [{"role": "user", "content": "Hi", "name": "ana"}]
    # chat templates run with trim_blocks (as in transformers): the newline after {% endif %} is dropped
    expected = len(tokenizer("<|im_start|>user (ana)Hi<|im_end|>\n<|im_start|>assistant\n",
                             add_special_tokens=False).input_ids)
    try:
        with BackgroundServer(create_app(engine, MODEL)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            with_name = client.chat.completions.create(model=MODEL, messages=named, max_tokens=1)
            without = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=1)
    finally:
        engine.close()
    assert with_name.usage.prompt_tokens == expected > without.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_stops_its_generation(engine, stream):
    """Without max_tokens an answer may run to the end of the context (4096 tokens here); when the client
    leaves, the engine stops decoding its row instead of finishing it for nobody."""
    before = engine.rows_cancelled
    with BackgroundServer(create_app(engine, MODEL)) as server:
        impatient = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=1.5)
        if stream:  # read a few chunks, then hang up
            response = impatient.chat.completions.create(model=MODEL, messages=HELLO, logit_bias=NO_STOP, stream=True)
            assert [next(response) for _ in range(3)]
            response.close()
        else:  # the client's timeout hangs up
            with pytest.raises(openai.APITimeoutError):
                impatient.chat.completions.create(model=MODEL, messages=HELLO, logit_bias=NO_STOP)
        deadline = time.monotonic() + 60
        while engine.rows_cancelled == before:
            assert time.monotonic() < deadline, "the row was not cancelled"
            time.sleep(0.1)
        assert engine.rows_cancelled == before + 1
        assert httpx.get(server.url + "/health").json()["rows_cancelled"] == before + 1


# --- faults the peers' servers had (vLLM, FastChat, llama.cpp, sglang bug reports), replayed here ---


def test_the_stream_is_server_sent_events_ending_with_done(server):
    """Raw SSE as the OpenAI API sends it: only `data: <json>` events, the role first, one finish_reason per
    choice, the usage chunk with empty choices last, then `data: [DONE]`."""
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 5, "temperature": 0, "n": 2, "stream": True,
            "stream_options": {"include_usage": True}}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = resp.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
    finishes = [(ch["index"], ch["finish_reason"]) for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_a_temperature_too_small_to_divide_by_is_greedy(client, generator):
    """temperature 1e-300 was an empty answer (logits / 0 in float32: NaN, argmax picked end of turn)."""
    greedy = generator.generate([(generator.encode_chat(HELLO), SamplingParams(10, temperature=0))])[0].text
    for temperature in (1e-300, 1e-45, 1e-6):
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=temperature,
                                              seed=1).choices[0].message.content == greedy


def test_seed_outside_64_bits_is_a_400_not_a_500(client):
    """A seed torch cannot take failed in the decode loop: a plain-text 500 for every request batched with it."""
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, seed=seed)
        assert info.value.body["param"] == "seed"
    for seed in (2**63 - 1, -(2**63), -5):
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, seed=seed, n=2).choices


def forced(first: int, second: int) -> dict:
    """Request fields under which the tiny model (its logits span about 1.2) answers `first`, `second`, `first`
    greedily on any CPU: logit_bias +100 and +98 (end of turn -100) and the largest penalties OpenAI allows
    (2 + 2 once a token occurred), so each of the three steps is decided by a margin of 2 (the fourth would
    be a tie). Sampled answers instead depended on float rounding, which differs between CPUs (AVX-512, AVX2)."""
    return dict(temperature=0, logit_bias={str(first): 100, str(second): 98, **NO_STOP}, frequency_penalty=2,
                presence_penalty=2)


def test_a_stop_string_that_is_a_special_token_stops_streamed_and_whole_answers(client, generator):
    start = generator.tokenizer.convert_tokens_to_ids("<|im_start|>")
    word = generator.tokenizer.decode([300])
    kwargs = dict(model=MODEL, messages=HELLO, max_tokens=3, **forced(300, start))
    free = client.chat.completions.create(**kwargs, logprobs=True).choices[0]
    assert [e.token for e in free.logprobs.content] == [word, "<|im_start|>", word] and free.finish_reason == "length"
    cut = client.chat.completions.create(**kwargs, stop="<|im_start|>", logprobs=True).choices[0]
    assert cut.finish_reason == "stop" and [e.token for e in cut.logprobs.content] == [word]
    assert cut.message.content == word
    chunks = list(client.chat.completions.create(**kwargs, stop=["<|im_start|>"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_logprob_bytes_are_each_tokens_own_bytes(client, generator):
    """A token holding part of a multi-byte character decodes to "\\ufffd" alone; its `bytes` were that
    replacement character's UTF-8 ([239, 191, 189]), so the bytes of the tokens did not join into the text.
    "é" is forced as its two byte-level tokens (0xC3, 0xA9), so the case occurs on any CPU."""
    first, second = (generator.tokenizer.convert_tokens_to_ids(c) for c in ("Ã", "©"))  # the bytes 0xC3, 0xA9
    choice = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, logprobs=True, top_logprobs=2,
                                            **forced(first, second)).choices[0]
    assert choice.message.content == "é"
    assert [(e.token, e.bytes) for e in choice.logprobs.content] == [("\ufffd", [0xC3]), ("\ufffd", [0xA9])]
    assert all(len(e.top_logprobs) == 2 and all(t.bytes for t in e.top_logprobs) for e in choice.logprobs.content)
    for seed in range(3):  # and sampled answers, whatever they hold: their bytes join into their text
        choice = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, seed=seed,
                                                logit_bias={"1": -100, **NO_STOP}, logprobs=True).choices[0]
        joined = b"".join(bytes(e.bytes) for e in choice.logprobs.content)
        assert joined.decode("utf-8", errors="replace") == choice.message.content


def _template_engine(template: str) -> GenerationEngine:
    from prefloop.testing import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(chat_template=template)
    return GenerationEngine(LocalGenerator(build_tiny_model(tokenizer), tokenizer))


# Gemma 2's kind of template: no system role, strict user/assistant alternation (raise_exception).
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_the_chat_template_refuses_is_a_400_naming_messages(stream):
    """A template's raise_exception ("System role not supported", Gemma on vLLM/sglang/mistral.rs) was a
    plain-text 500; it is a 400 with the template's own message, as vLLM answers it."""
    engine = _template_engine(NO_SYSTEM_TEMPLATE)
    try:
        with BackgroundServer(create_app(engine, MODEL)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
            for messages, said in (([{"role": "system", "content": "Be brief."}, *HELLO], "System role not supported"),
                                   ([*HELLO, *HELLO], "roles must alternate")):
                with pytest.raises(openai.BadRequestError) as info:
                    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2,
                                                              stream=stream)
                    list(response)
                assert info.value.body["param"] == "messages" and said in info.value.body["message"]
                assert info.value.body["type"] == "invalid_request_error"
            answer = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, stream=stream)
            assert list(answer) if stream else answer.choices
    finally:
        engine.close()


def test_prompt_tokens_are_the_templated_prompt_and_a_last_assistant_turn_gets_an_answer(client, generator):
    """usage.prompt_tokens counts what the model reads: transformers' apply_chat_template with the generation
    prompt (system turn, several turns, a conversation ending with the assistant: answered as a new turn)."""
    conversations = [
        HELLO,
        [{"role": "system", "content": "Answer in one word."}, *HELLO],
        [*HELLO, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Germany?"}],
        [*HELLO, {"role": "assistant", "content": "Paris."}],
    ]
    for messages in conversations:
        expected = generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0)
        assert resp.usage.prompt_tokens == len(generator.tokenizer(expected, add_special_tokens=False).input_ids)
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
        assert resp.choices[0].message.role == "assistant"


def test_unknown_paths_and_methods_get_openai_errors(server, client):
    """FastAPI's own 404/405 bodies were {"detail": ...}; every error has OpenAI's shape."""
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=2)  # the legacy endpoint: not served
    assert info.value.body["type"] == "invalid_request_error" and "/v1/chat/completions" in info.value.body["message"]
    resp = httpx.get(server.url + "/v1/chat/completions")
    assert resp.status_code == 405 and set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_a_generation_failure_is_a_500_in_openai_shape(tiny_model_dir):
    """An unexpected error (here the model fails) was a text/plain "Internal Server Error"."""
    generator = LocalGenerator(load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)))

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    generator.generate = broken
    engine = GenerationEngine(generator)
    try:
        with BackgroundServer(create_app(engine, MODEL)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
            assert info.value.body["type"] == "server_error" and "device-side assert" in info.value.body["message"]
            with pytest.raises(openai.APIError) as info:  # streamed: the error arrives as an event
                list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2, stream=True))
            assert "device-side assert" in str(info.value)
    finally:
        engine.close()
