"""API keys go only where they are meant to (issue 12, item 9): $OPENAI_API_KEY to the OpenAI API's own
host, other endpoints only a key named for them (--api-key-env VAR, --api-key-file PATH), and never a key
given on the command line. Checked through the real `openai` client against a server that records headers."""

import json

import pytest
from fastapi import FastAPI, Request

from prefloop.cli import main
from prefloop.endpoint import endpoint_api_key, is_openai_api
from prefloop.errors import ConfigError
from prefloop.generate import generate_command
from prefloop.judge.run import judge_command
from prefloop.serve.background import BackgroundServer

SECRET = "sk-env-secret-do-not-send"


def recording_app():
    """An OpenAI-compatible endpoint that answers "[[A]]" and records every request's headers."""
    app, headers = FastAPI(), []

    @app.get("/v1/models")
    async def models(request: Request):
        headers.append(dict(request.headers))
        return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        headers.append(dict(request.headers))
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "[[A]]"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app, headers


@pytest.fixture
def openai_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret")


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    return str(path)


def _sent(headers):
    """What the endpoint was told: the Authorization values and whether any OpenAI identity reached it."""
    auth = {h.get("authorization") for h in headers}
    leaked = [v for h in headers for v in h.values() if "secret" in v]
    return auth, leaked


@pytest.mark.parametrize("url, sent", [
    ("https://api.openai.com/v1", SECRET),
    ("https://API.OpenAI.com", SECRET),
    ("http://api.openai.com/v1", None),  # plain http: not the API
    ("https://api.openai.com.example.net/v1", None),
    ("https://proxy.example.net/api.openai.com/v1", None),
    ("http://127.0.0.1:8000", None),
    ("http://localhost:11434/v1", None),
])
def test_openai_key_goes_only_to_the_openai_api(openai_env, url, sent):
    assert endpoint_api_key(url) == sent
    assert is_openai_api(url) == (sent is not None)


def test_generate_sends_no_key_to_another_endpoint_unless_named(openai_env, monkeypatch, tmp_path):
    app, headers = recording_app()
    monkeypatch.setenv("MY_ENDPOINT_KEY", "k-named-env")
    with BackgroundServer(app) as server:
        assert generate_command(model=server.url, prompts=_prompts(tmp_path), out=str(tmp_path / "a.jsonl"), n=1) == 0
        assert _sent(headers) == ({"Bearer none"}, [])
        headers.clear()
        assert generate_command(model=server.url, prompts=_prompts(tmp_path), out=str(tmp_path / "b.jsonl"), n=1,
                                api_key_env="MY_ENDPOINT_KEY") == 0
        assert _sent(headers) == ({"Bearer k-named-env"}, [])


def test_judge_sends_the_key_from_a_key_file(openai_env, tmp_path):
    app, headers = recording_app()
    key_file = tmp_path / "judge.key"
    key_file.write_text("k-from-file\n")
    cands = tmp_path / "cands.jsonl"
    cands.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}], "candidates": ["one", "two"]}) + "\n")
    with BackgroundServer(app) as server:
        judge_command(candidates=str(cands), out=str(tmp_path / "prefs.jsonl"), judge=server.url,
                      api_key_file=str(key_file))
    auth, leaked = _sent(headers)
    assert auth == {"Bearer k-from-file"} and leaked == [] and len(headers) >= 2


@pytest.mark.parametrize("env, file_text, both, message", [
    ("UNSET_PREFLOOP_KEY", None, False, r"--api-key-env UNSET_PREFLOOP_KEY: the environment variable .* is not set"),
    (None, "", False, r"--api-key-file .*: the file is empty"),
    (None, None, False, r"--api-key-file .*: cannot read the key file"),
    ("MY_ENDPOINT_KEY", "k", True, r"one way: --api-key-env VAR or --api-key-file PATH, not both"),
])
def test_a_named_key_that_is_missing_is_a_clear_error(monkeypatch, tmp_path, env, file_text, both, message):
    monkeypatch.delenv("UNSET_PREFLOOP_KEY", raising=False)
    monkeypatch.setenv("MY_ENDPOINT_KEY", "k")
    path = tmp_path / "key"
    if file_text is not None:
        path.write_text(file_text)
    with pytest.raises(ConfigError, match=message):
        endpoint_api_key("http://127.0.0.1:1", env, str(path) if (file_text is not None or env is None) else None)


@pytest.mark.parametrize("command", ["generate", "judge"])
def test_a_key_on_the_command_line_is_refused(command, tmp_path, capsys):
    args = {"generate": ["generate", "--model", "http://127.0.0.1:1", "--prompts", "p.jsonl", "--out", "o.jsonl"],
            "judge": ["judge", "--candidates", "c.jsonl", "--judge", "http://127.0.0.1:1", "--out", "o.jsonl"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--api-key", "sk-visible-in-ps"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "visible to every user" in err and "--api-key-env VAR" in err and "--api-key-file PATH" in err


def reasoning_model_app():
    """An endpoint that answers as the OpenAI API does for its reasoning models: `max_tokens` and a
    temperature other than 1 are refused with a 400 naming the field."""
    from prefloop.testing import reasoning_model_refusal

    app, bodies = FastAPI(), []

    def refuse(message, param, code):
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}}, status_code=400)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        refused = reasoning_model_refusal(body)
        if refused is not None:
            return refused
        if body["messages"][0]["content"] == "bad":
            return refuse("'messages' is malformed", "messages", None)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "o-test",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "[[A]]"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app, bodies


def test_an_endpoint_refusing_max_tokens_and_temperature_is_asked_as_it_asks():
    """OpenAI's reasoning models refuse `max_tokens` ("Use 'max_completion_tokens' instead") and temperature 0:
    every generate/judge request to them failed. They are sent again without what was refused, once."""
    import openai

    from prefloop.chat_clients import ChatCall, EndpointChatClient
    from prefloop.sampling import SamplingParams

    app, bodies = reasoning_model_app()
    with BackgroundServer(app) as server:
        client = EndpointChatClient(openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0), "o-test")
        calls = [ChatCall([{"role": "user", "content": "q"}], 1, SamplingParams(64, temperature=0.0))] * 2
        results = dict(client.complete_many(calls[:1]))
        assert results[0].texts == ["[[A]]"]
        assert client.adaptations == {"max_tokens": "max_completion_tokens", "temperature": "left out"}
        assert bodies[-1]["max_completion_tokens"] == 64 and "temperature" not in bodies[-1]
        before = len(bodies)
        assert dict(client.complete_many(calls))[1].texts == ["[[A]]"] and len(bodies) == before + 2  # no more 400s
        bad = dict(client.complete_many([ChatCall([{"role": "user", "content": "bad"}], 1, SamplingParams(8))]))
        assert isinstance(bad[0], openai.BadRequestError)  # any other 400 stays that call's error
