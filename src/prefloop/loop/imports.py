"""`prefloop import-interactions FILE`: interaction logs of another OpenAI-compatible server (vLLM behind a
gateway, ...) into the store, where the loop's collect step finds them as it finds `prefloop serve`'s.

FILE is JSONL, one chat completion per line:

    {"request":  {"model": "policy", "messages": [{"role": "user", "content": "..."}], ...},   # as sent
     "response": {"id": "chatcmpl-1", "model": "smollm2:v3",                                  # as returned
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}}, ...],
                  "usage": {...}},
     "conversation_id": "c42",                     # optional (default: the response id)
     "feedback": [{"kind": "thumbs", "choice": 0, "value": "up"},                 # optional
                  {"kind": "choice", "choice": 0, "other": 1, "value": 1}]}       # value: the preferred index

Each choice becomes one interaction (as `serve` logs an n>1 request), with the feedback, in one
transaction. Re-importing a file adds nothing twice: a completion is known by its response `id` (or,
without one, by a hash of its line). A bad line is an error naming file, line and field; nothing of
the file is imported before every line has been checked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefloop.errors import DataError, json_error_text
from prefloop.store import THUMBS_VALUES, Store


def _bad(where: str, field: str, what: str) -> DataError:
    return DataError(f"{where}: {field}: {what} (format: see `prefloop import-interactions --help` and the README, "
                     "'The online loop')")


def parse_line(line: str, where: str) -> dict:
    """One JSONL line -> {"key", "conversation_id", "model", "messages", "responses", "params", "usage", "feedback"}."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not JSON ({json_error_text(err, with_line=False)})") from err
    if not isinstance(record, dict):
        raise _bad(where, "line", "must be a JSON object with request and response")
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, dict):
        raise _bad(where, "request", "missing or not an object (the chat-completion request as sent)")
    if not isinstance(response, dict):
        raise _bad(where, "response", "missing or not an object (the chat-completion response as returned)")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise _bad(where, "request.messages", "must be a non-empty list of {role, content} with text content")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _bad(where, "response.choices", "must be a non-empty list")
    texts = []
    for i, ch in enumerate(choices):
        content = (ch.get("message") or {}).get("content") if isinstance(ch, dict) else None
        if not isinstance(content, str):
            raise _bad(where, f"response.choices[{i}].message.content", "missing or not text")
        texts.append(content)
    feedback = []
    for j, fb in enumerate(record.get("feedback") or []):
        field = f"feedback[{j}]"
        if not isinstance(fb, dict) or fb.get("kind") not in ("thumbs", "choice"):
            raise _bad(where, field, "must be an object with kind 'thumbs' or 'choice'")
        index = fb.get("choice", 0)
        if not isinstance(index, int) or not 0 <= index < len(texts):
            raise _bad(where, f"{field}.choice", f"must be a choice index 0..{len(texts) - 1}, got {index!r}")
        if fb["kind"] == "thumbs":
            if fb.get("value") not in THUMBS_VALUES:
                raise _bad(where, f"{field}.value", f"thumbs must be 'up' or 'down', got {fb.get('value')!r}")
            feedback.append(("thumbs", index, fb["value"], None))
        else:
            other = fb.get("other")
            if not isinstance(other, int) or not 0 <= other < len(texts) or other == index:
                raise _bad(where, f"{field}.other", f"must be another choice index 0..{len(texts) - 1}, got {other!r}")
            if fb.get("value") not in (index, other):
                raise _bad(where, f"{field}.value", f"must be {index} or {other} (the preferred choice), got "
                                                    f"{fb.get('value')!r}")
            feedback.append(("choice", index, fb["value"], other))
    key = response.get("id") if isinstance(response.get("id"), str) and response.get("id") else \
        "sha256:" + hashlib.sha256(line.strip().encode("utf-8")).hexdigest()
    conversation = record.get("conversation_id") or key
    params = {k: v for k, v in request.items() if k not in ("messages",)}
    return {"key": key, "conversation_id": str(conversation), "model": str(response.get("model") or
                                                                         request.get("model") or "unknown"),
            "messages": messages, "responses": texts, "params": params, "usage": response.get("usage") or {},
            "feedback": feedback}


def import_command(file: str, db: str = "prefloop.sqlite") -> int:
    """Check every line of `file`, then log each completion not already in the store; prints the counts."""
    path = Path(file)
    if not path.is_file():
        raise DataError(f"{file}: no such file")
    parsed = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parsed.append(parse_line(line, f"{file}:{lineno}"))
    added = known = interactions = feedback = 0
    with Store(db) as store:
        for p in parsed:
            ids = store.import_interactions(p["key"], p["conversation_id"], p["model"], p["messages"], p["responses"],
                                            p["params"], p["usage"], p["feedback"])
            if ids is None:
                known += 1
                continue
            added += 1
            interactions += len(ids)
            feedback += len(p["feedback"])
    print(f"imported {added} completion(s) from {file} into {db}: {interactions} interaction(s), {feedback} "
          f"feedback row(s); {known} already in the store (skipped)")
    return 0
