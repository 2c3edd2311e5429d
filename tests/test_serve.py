"""`prefloop serve` through the real `openai` client on a free 127.0.0.1 port with a tiny model."""

import json
import threading

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
    resp = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, n=2, seed=3,
                                          extra_body={"conversation_id": "conv-42"})
    ids = [c.model_extra["interaction_id"] for c in resp.choices]
    assert resp.model_extra["conversation_id"] == "conv-42"
    logged = {i["id"]: i for i in store.interactions()}
    for choice, iid in zip(resp.choices, ids):
        assert logged[iid]["response"] == choice.message.content
        assert logged[iid]["messages"] == HELLO and logged[iid]["conversation_id"] == "conv-42"
        assert logged[iid]["params"]["n"] == 2 and logged[iid]["usage"]["completion_tokens"] >= 0

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
