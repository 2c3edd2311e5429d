"""`prefloop serve`: an OpenAI-compatible chat server for a local model (FastAPI + uvicorn).

`create_app` builds the web app around a `GenerationEngine`, so tests (and other programs) can
run it in-process; `serve_command` loads the model and runs it with uvicorn. With a store,
every completion choice is logged as an interaction (the raw material of the online loop) and
`POST /v1/feedback` records what the user thought of it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import threading
import time
import uuid
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefloop.errors import ConfigError, DataError
from prefloop.exposure import check_exposure
from prefloop.sampling import PromptTooLong, Sample
from prefloop.serve.engine import GenerationEngine
from prefloop.serve.feedback import record_feedback
from prefloop.serve.holder import ModelHolder
from prefloop.serve.protocol import (
    APIError,
    ChatRequest,
    budget,
    chunk_body,
    completion_body,
    completion_id,
    parse_chat_request,
    usage,
)

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


async def _json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise APIError(400, f"We could not parse the JSON body of your request ({err}). Send valid JSON with "
                            "'Content-Type: application/json'.") from err


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _BearerAuth:
    """Requires `Authorization: Bearer <api_key>` on /v1/ (not /health). A plain ASGI middleware: it
    leaves `receive` alone, so a request still sees its client disconnect (see `_answer`)."""

    def __init__(self, app, api_key: str):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = Request(scope).headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), self.api_key.encode()):
                err = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>' with the key "
                                    "given to prefloop serve --api-key.", code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Logger:
    """Writes interactions to the store (if any) off the event loop, under the name of the model that answered."""

    def __init__(self, store):
        self.store = store

    async def log(self, req: ChatRequest, sample: Sample, prompt_tokens: int, model_name: str) -> dict:
        if self.store is None or req.store is False:  # `store: false` in the request: not logged
            return {}
        interaction_id = await run_in_threadpool(
            self.store.log_interaction,
            req.conversation_id,
            model_name,
            req.messages,
            sample.text,
            params={**req.logged_params(), "finish_reason": sample.finish_reason},
            usage=usage(prompt_tokens, [sample]),
        )
        return {"interaction_id": interaction_id}


def create_app(engine: GenerationEngine | None, model_name: str | None, api_key: str | None = None, store=None,
               max_tokens_limit: int | None = None, holder: ModelHolder | None = None) -> FastAPI:
    """The FastAPI app: /v1/chat/completions, /v1/models, /v1/feedback (with a store), /health.

    It serves `engine` under `model_name`, or whatever `holder` holds at each request (a holder whose
    model is swapped while the app runs: `prefloop serve --registry`). `max_tokens_limit` caps a
    request's `max_tokens` (None: only the model's context does); a request without `max_tokens` may
    use what the context leaves after its prompt."""
    app = FastAPI(title="prefloop serve", docs_url=None, redoc_url=None, openapi_url=None)
    holder = holder or ModelHolder(engine, model_name)
    model_name = holder.name  # the id clients request; each answer names the version that answered it
    logger = _Logger(store)
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        """Unknown paths (404) and wrong methods (405) in OpenAI's error shape, as every other error."""
        if err.status_code == 404:
            message = (f"Unknown path {request.url.path}: this server serves POST /v1/chat/completions, "
                       "GET /v1/models, POST /v1/feedback and GET /health")
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(err.detail)
        body = APIError(err.status_code, message, code="not_found" if err.status_code == 404 else None).body()
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, err: Exception):
        """Anything else unexpected is a 500 in OpenAI's error shape (the traceback goes to the server log,
        which closes the connection; a failed generation is an APIError and keeps it, see `_answer`)."""
        return JSONResponse(APIError(500, f"the server failed on this request: {type(err).__name__}: {err}",
                                     type="server_error").body(), status_code=500)

    if api_key:
        app.add_middleware(_BearerAuth, api_key=api_key)

    def _model_card() -> dict:
        served = holder.current
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "prefloop"}
        if served.version is not None:  # served from the registry: which version answers now
            card.update({"version": served.version, "root": served.answer_name})
        return card

    @app.get("/health")
    async def health():
        served = holder.current
        return {"status": "ok", "model": served.answer_name, "batches_run": served.engine.batches_run,
                "largest_batch": served.engine.largest_batch, "rows_cancelled": served.engine.rows_cancelled,
                "logging": store is not None, "swaps": holder.swaps}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{model_name}`", "model",
                           "model_not_found")
        return _model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        served = holder.acquire()  # this request runs on this model to its end, even if another is swapped in
        try:
            response = await _chat(request, served)
        except BaseException:
            holder.release(served)
            raise
        if not isinstance(response, StreamingResponse):
            holder.release(served)
        return response

    async def _chat(request: Request, served):
        engine, answer_name = served.engine, served.answer_name
        req = parse_chat_request(await _json_body(request), model_name, max_tokens_limit,
                                 vocab_size=engine.vocab_size, template_fields=engine.template_fields)
        if req.store and store is None:
            raise APIError(400, "'store': true asks to keep this completion, but this server has no store: start "
                                "it with prefloop serve --db FILE, or leave 'store' out", "store")
        req.conversation_id = req.conversation_id or request.headers.get("x-conversation-id") or uuid.uuid4().hex
        try:
            prompt_ids = await run_in_threadpool(engine.encode_chat, req.messages)
        except PromptTooLong as err:  # as OpenAI and vLLM: a 400 with code context_length_exceeded
            message = str(err).removeprefix("messages: ")
            raise APIError(400, message[:1].upper() + message[1:], "messages", err.code) from err
        except DataError as err:  # no user text, turn contents (tool results, ...) the chat template would drop
            raise APIError(400, str(err), str(err).split(":")[0]) from err
        limit = budget(req, len(prompt_ids), engine.context_length, max_tokens_limit)
        req.params = replace(req.params, max_new_tokens=limit)
        rows = [(prompt_ids, req.params.for_sample(i)) for i in range(req.n)]
        headers = {"X-Conversation-Id": req.conversation_id}
        if req.stream:
            return StreamingResponse(_stream(req, rows, len(prompt_ids), served), media_type="text/event-stream",
                                     headers=headers)
        samples = await _answer(request, rows, engine)
        extras = [await logger.log(req, s, len(prompt_ids), answer_name) for s in samples]
        body = completion_body(completion_id(), answer_name, len(prompt_ids), samples, extras)
        body["conversation_id"] = req.conversation_id
        return JSONResponse(body, headers=headers)

    async def _answer(request: Request, rows, engine: GenerationEngine) -> list[Sample]:
        """The samples of `rows`; generation stops if the client goes away or the server shuts down."""
        cancel = threading.Event()
        future = asyncio.wrap_future(engine.submit(rows, cancel=cancel))
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if done:
                    try:
                        return future.result()
                    except Exception as err:  # the model failed: a 500 the client can read, like any error
                        raise APIError(500, f"generation failed: {type(err).__name__}: {err}",
                                       type="server_error") from err
                if await request.is_disconnected():
                    raise APIError(499, "the client closed the connection", code="client_closed_request")
        finally:
            cancel.set()

    async def _stream(req: ChatRequest, rows, prompt_tokens: int, served):
        try:
            async for event in _stream_events(req, rows, prompt_tokens, served.engine, served.answer_name):
                yield event
        finally:
            holder.release(served)  # at the stream's end, or when the client went away

    async def _stream_events(req: ChatRequest, rows, prompt_tokens: int, engine, model_name: str):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_update(index, delta, logprobs, finished):
            loop.call_soon_threadsafe(events.put_nowait, (index, delta, logprobs, finished))

        def on_done(future):
            if not future.cancelled() and future.exception() is not None:
                loop.call_soon_threadsafe(events.put_nowait, (None, future.exception(), None, None))

        def chunk(*args, top: dict | None = None, **kwargs) -> str:
            """One choice chunk; with include_usage it carries `usage: null` (only the last chunk counts),
            with include_obfuscation random padding in `obfuscation` (as the OpenAI API does)."""
            body = {**chunk_body(cid, model_name, created, *args, **kwargs), **(top or {})}
            if req.include_usage:
                body["usage"] = None
            if req.include_obfuscation:
                body["obfuscation"] = secrets.token_urlsafe(secrets.randbelow(24) + 1)
            return _sse(body)

        cid, created = completion_id(), int(time.time())
        cancel = threading.Event()  # set when the stream ends early (client gone, server stopping)
        engine.submit(rows, on_update, cancel).add_done_callback(on_done)
        try:
            for i in range(req.n):
                yield chunk(i, {"role": "assistant", "content": ""}, top={"conversation_id": req.conversation_id})
            finished: list[Sample] = []
            while len(finished) < req.n:
                index, delta, logprobs, sample = await events.get()
                if index is None:
                    yield _sse(APIError(500, f"generation failed: {delta}", type="server_error").body())
                    return
                wants_logprobs = req.params.logprobs and logprobs
                if delta or wants_logprobs:
                    yield chunk(index, {"content": delta}, logprobs=logprobs if req.params.logprobs else None)
                if sample is not None:
                    finished.append(sample)
                    extra = await logger.log(req, sample, prompt_tokens, model_name)
                    yield chunk(index, {}, sample.finish_reason, extra=extra)
            if req.include_usage:
                yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                            "choices": [], "usage": usage(prompt_tokens, finished)})
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        if store is None:
            raise APIError(404, "feedback needs an interaction log: start the server with prefloop serve --db FILE",
                           code="feedback_disabled")
        body = await _json_body(request)
        return await run_in_threadpool(record_feedback, store, body)

    return app


def serve_command(model=None, adapter=None, model_name=None, host="127.0.0.1", port=8000, db=None, api_key=None,
                  max_tokens_limit=None, max_batch_rows: int = 16, insecure: bool = False, registry=None,
                  poll_seconds: float = 2.0) -> int:
    """`prefloop serve`: check the options, load the model (or NAME@champion), serve until Ctrl-C."""
    warning = check_exposure("serve", host, bool(api_key), "--api-key KEY", insecure)
    if max_tokens_limit is not None and max_tokens_limit < 1:
        raise ConfigError(f"--max-tokens-limit must be at least 1, got {max_tokens_limit}")
    import uvicorn

    from prefloop.chat_clients import local_model_name
    from prefloop.sampling import LocalGenerator

    if (model is None) == (registry is None):
        raise ConfigError("give a MODEL to serve, or --registry NAME to serve its champion (not both)")
    store = None
    if db or registry:
        from prefloop.store import Store

        store = Store(db or "prefloop.sqlite")
    follower = None
    if registry:
        holder, follower = _follow_registry(store, registry, model_name, max_batch_rows, poll_seconds)
    else:
        engine = GenerationEngine(LocalGenerator.load(model, adapter=adapter), max_batch_rows=max_batch_rows)
        holder = ModelHolder(engine, model_name or local_model_name(model))
    if warning:
        print(warning, file=sys.stderr)
    print(f"prefloop serve: model {holder.current.answer_name!r} at http://{host}:{port}/v1"
          + (f", logging interactions to {store.path}" if store else ""), file=sys.stderr)
    try:
        # Ctrl-C: requests still running get 5 s, then are cancelled (and stop generating).
        uvicorn.run(create_app(None, None, api_key, store, max_tokens_limit, holder=holder), host=host, port=port,
                    log_level="info", timeout_graceful_shutdown=5)
    finally:
        if follower is not None:
            follower.stop()
        holder.close()
    return 0


def _follow_registry(store, name: str, model_name, max_batch_rows: int, poll_seconds: float):
    """A holder serving `name@champion` and the follower that swaps it when the champion moves."""
    from prefloop.registry.follow import ChampionFollower, champion, load_generator
    from prefloop.registry.versions import check_files, label

    version = champion(store, name)
    check_files(version)
    engine = GenerationEngine(load_generator(version), max_batch_rows=max_batch_rows)
    holder = ModelHolder(engine, model_name or name, label(version), version["version"])
    follower = ChampionFollower(store, name, holder, lambda g: GenerationEngine(g, max_batch_rows=max_batch_rows),
                                version["id"], poll_seconds).start()
    return holder, follower
