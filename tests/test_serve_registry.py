"""`prefloop serve --registry`: the champion is served, a promote switches the answering version while
requests keep coming (real `openai` client), in-flight requests finish on the old weights."""

import threading
import time
from collections import Counter

import openai
import pytest

from prefloop.registry import aliases as al
from prefloop.registry.commands import register_model
from prefloop.registry.follow import ChampionFollower, load_generator
from prefloop.sampling import SamplingParams
from prefloop.serve.app import _follow_registry, create_app
from prefloop.serve.background import BackgroundServer
from prefloop.serve.engine import GenerationEngine
from prefloop.serve.holder import ModelHolder
from prefloop.store import Store
from prefloop.testing import save_tiny_model

HELLO = [{"role": "user", "content": "What is the capital of France?"}]
TOKENS = 6


@pytest.fixture
def registry(tmp_path):
    with Store(tmp_path / "prefloop.sqlite") as store:
        for seed in (0, 1):
            register_model(store, str(save_tiny_model(tmp_path / f"m{seed}", seed=seed)), "demo")
        al.promote(store, "v1")
        yield store


def _greedy(version):
    gen = load_generator(version)
    return gen.generate([(gen.encode_chat(HELLO), SamplingParams(TOKENS, temperature=0))])[0].text


def test_promote_during_a_stream_of_requests_switches_the_answering_version(registry):
    v1, v2 = registry.model_versions("demo")
    expected = {"demo:v1": _greedy(v1), "demo:v2": _greedy(v2)}
    assert expected["demo:v1"] != expected["demo:v2"]  # the two versions answer differently
    holder, follower = _follow_registry(registry, "demo", None, 16, poll_seconds=0.05)
    seen: dict[int, list[tuple[str, str]]] = {0: [], 1: [], 2: []}
    errors: list[Exception] = []
    stop = threading.Event()
    try:
        with BackgroundServer(create_app(None, None, store=registry, holder=holder)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            assert client.models.list().data[0].id == "demo"

            def ask(worker: int):
                while not stop.is_set():
                    try:
                        if worker == 2:  # a streaming client
                            chunks = list(client.chat.completions.create(model="demo", messages=HELLO,
                                                                         max_tokens=TOKENS, temperature=0, stream=True))
                            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                            seen[worker].append((chunks[-1].model, text))
                        else:
                            resp = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=TOKENS,
                                                                  temperature=0)
                            seen[worker].append((resp.model, resp.choices[0].message.content))
                    except Exception as err:  # noqa: BLE001 - every failure is a test failure, counted below
                        errors.append(err)
                        return

            threads = [threading.Thread(target=ask, args=(w,)) for w in seen]
            for t in threads:
                t.start()
            _wait(lambda: all(len(s) >= 2 for s in seen.values()) or errors)
            al.promote(registry, "v2")
            _wait(lambda: all(sum(m == "demo:v2" for m, _ in s) >= 2 for s in seen.values()) or errors)
            stop.set()
            for t in threads:
                t.join(60)
            card = client.models.list().data[0]
            assert (card.id, card.version, card.root) == ("demo", "v2", "demo:v2")
    finally:
        stop.set()
        follower.stop()
        holder.close()
    assert errors == []
    for answers in seen.values():
        models = [m for m, _ in answers]
        switch = models.index("demo:v2")
        assert set(models[:switch]) == {"demo:v1"} and set(models[switch:]) == {"demo:v2"}  # one switch, no going back
        assert all(text == expected[m] for m, text in answers)  # each answer came from the weights it names
    logged = Counter(i["model"] for i in registry.interactions())
    assert logged == Counter(m for answers in seen.values() for m, _ in answers)
    assert holder.swaps == 1


def _wait(condition, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def test_a_request_in_flight_keeps_the_old_engine_until_it_is_done(registry):
    v1, v2 = registry.model_versions("demo")
    old = GenerationEngine(load_generator(v1))
    holder = ModelHolder(old, "demo", "demo:v1", "v1")
    lease = holder.acquire()
    holder.swap(GenerationEngine(load_generator(v2)), "demo:v2", "v2")
    assert holder.current.answer_name == "demo:v2" and lease.answer_name == "demo:v1"
    gen = old.generator
    rows = [(gen.encode_chat(HELLO), SamplingParams(TOKENS, temperature=0))]
    assert old.submit(rows).result(60)[0].text == _greedy(v1)  # the old engine still works for its lease
    assert old._worker.is_alive()
    holder.release(lease)
    _wait(lambda: not old._worker.is_alive(), timeout=30)  # closed once its last request was done
    holder.close()


def test_a_champion_that_cannot_be_loaded_keeps_the_current_version(registry, tmp_path):
    v1, v2 = registry.model_versions("demo")
    holder = ModelHolder(GenerationEngine(load_generator(v1)), "demo", "demo:v1", "v1")
    messages = []
    follower = ChampionFollower(registry, "demo", holder, GenerationEngine, v1["id"], log=messages.append)
    al.promote(registry, "v2")
    (tmp_path / "prefloop.models" / "demo").joinpath(v2["path"].rsplit("/", 1)[-1], "config.json").unlink()
    assert follower.check_once() is False
    assert holder.current.answer_name == "demo:v1"
    assert "cannot load demo:v2" in messages[0] and "config.json is missing" in messages[0]
    assert follower.check_once() is False and len(messages) == 1  # reported once, not every poll
    holder.close()


def test_serve_needs_a_model_or_a_registry(tmp_path, capsys):
    from prefloop.cli import main

    assert main(["serve"]) == 2
    assert "give a MODEL to serve, or --registry NAME" in capsys.readouterr().err
    assert main(["serve", "--registry", "demo", "--db", str(tmp_path / "empty.sqlite")]) == 2
    assert "no model named 'demo' in" in (err := capsys.readouterr().err) and "holds no model yet" in err
