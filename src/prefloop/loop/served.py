"""`generate.endpoint`: the generate step's K answers come from the serving endpoint, not a local copy of
the champion, and only from the champion.

Before any request, the endpoint's `/v1/models` card must name the champion: `prefloop serve --registry
NAME` shows the version answering now (`version`, and `root` = `NAME:VERSION`); another OpenAI-compatible
server must serve the model under the champion's `NAME:VERSION` id. After generating, every answer's
response `model` field (recorded as `served_by`) must name the champion too; answers a different version
gave (a promote during the step) are removed from candidates.jsonl so a rerun asks again. Requests carry
`store: false`, so the serving endpoint does not log the loop's own sampling as user interactions.
"""

from __future__ import annotations

from pathlib import Path


def _what_to_do(cfg) -> str:
    return (f"point generate.endpoint at the server of the champion (`prefloop serve --registry {cfg.name} --db "
            f"{cfg.store}`, which switches to a new champion a few seconds after a promote: then rerun), or remove "
            "generate.endpoint to generate with the champion locally")


def endpoint_options(cfg, champ: dict) -> dict:
    """Keyword arguments for `generate_command` that send the requests to `generate.endpoint`, after checking
    that the endpoint serves the champion `champ` (a registry version). Raises LoopError (what it serves,
    what to do) when the endpoint cannot be reached, serves several models and `generate.model_name` does
    not choose one, or serves another version; ConfigError when `generate.api_key_env` is not set."""
    import openai

    from prefloop.endpoint import make_client
    from prefloop.loop.steps import LoopError
    from prefloop.registry.versions import label

    g, url, want = cfg.generate, cfg.generate["endpoint"], label(champ)
    client = make_client(url, api_key_env=g["api_key_env"])
    try:
        cards = client.models.list().data
    except openai.APIError as err:
        raise LoopError(f"generate.endpoint {url}: could not list its models ({err}); is the server running? "
                        + _what_to_do(cfg)) from err
    ids = [c.id for c in cards]
    if g["model_name"]:
        cards = [c for c in cards if c.id == g["model_name"]]
    if len(cards) != 1:
        raise LoopError(f"generate.endpoint {url} serves {', '.join(ids) or 'no model'}"
                        + (f", none named {g['model_name']!r} (generate.model_name)" if g["model_name"] else
                           "; choose one with generate.model_name"))
    card = cards[0]
    extra = card.model_extra or {}
    served = extra.get("root") or card.id
    if served != want:
        version = f" (version {extra['version']})" if extra.get("version") else ""
        raise LoopError(f"generate.endpoint {url} serves {served}{version}, not the champion {want}; "
                        + _what_to_do(cfg))
    return {"model_name": card.id, "api_key_env": g["api_key_env"], "concurrency": g["concurrency"],
            "log_requests": False}


def drop_answers_of_others(cfg, out: Path, champ: dict) -> None:
    """Check that every record of `out` was answered by the champion (its `served_by`); records another
    version answered are removed from the file and a LoopError says that a rerun asks for them again."""
    from prefloop.loop.steps import LoopError, _read_jsonl, _write_jsonl
    from prefloop.registry.versions import label

    want = label(champ)
    records = _read_jsonl(out)
    others = [r for r in records if r.get("served_by") != want]
    if not others:
        return
    _write_jsonl(out, [r for r in records if r.get("served_by") == want])
    by = sorted({str(r.get("served_by")) for r in others})
    raise LoopError(f"{len(others)} prompt(s) were answered by {', '.join(by)} at generate.endpoint "
                    f"{cfg.generate['endpoint']}, not by the champion {want}; they were removed from {out}. "
                    + _what_to_do(cfg) + f" ({len(records) - len(others)} prompt(s) answered by the champion are kept)")
