"""`prefloop generate`: N candidate responses per prompt, from a local model or an endpoint.

Output (JSONL, one record per prompt, written as each prompt finishes):
    {"id", "messages": [prompt turns], "candidates": [N texts], "finish_reasons": [...],
     "model", "params": {...}, "source"}
A rerun with the same --out skips prompts already there (matched by prompt content), so an
interrupted run resumes; a half-written last line from a crash is removed first. A run with another
model or other sampling settings is refused (exit 2) instead of appending to another run's answers. Each prompt's
sampling seed comes from --seed and the prompt itself, so a resumed run samples what an
uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from prefloop.chat_clients import ChatCall, open_chat_client
from prefloop.data.words import count
from prefloop.errors import ConfigError, DataError, PrefloopError, json_error_text
from prefloop.prompts import Prompt, prompt_key, read_prompts
from prefloop.resume import end_cut_line
from prefloop.sampling import SamplingParams


def prompt_seed(seed: int, prompt: Prompt) -> int:
    return int(hashlib.sha256(f"{seed}:{prompt.key}".encode()).hexdigest()[:12], 16)


def done_prompt_keys(out: Path, runs: dict | None = None) -> tuple[set[str], bool]:
    """Keys of prompts already in `out`; drops a truncated last line (returns True if it did). With `runs`,
    fills it with {(model, params as JSON): first line} of the records there (see `check_same_run`)."""
    if not out.exists():
        return set(), False
    keys: set[str] = set()
    data = out.read_bytes()
    lines = data.split(b"\n")
    offset = 0
    for lineno, line in enumerate(lines, 1):
        is_last = lineno == len(lines)
        if line.strip():
            try:
                record = json.loads(line)
                keys.add(prompt_key(record["messages"]))
                if runs is not None and "model" in record and "params" in record:
                    runs.setdefault((record["model"], json.dumps(record["params"], sort_keys=True)), lineno)
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                if is_last:  # an interrupted write: no newline after it
                    with out.open("r+b") as f:
                        f.truncate(offset)
                    return keys, True
                cause = json_error_text(err, with_line=False) if isinstance(err, json.JSONDecodeError) else err
                raise DataError(f"{out}:{lineno}: not a candidates record ({cause}); --out must be a file written "
                                "by prefloop generate (or a new file)") from err
        offset += len(line) + 1
    end_cut_line(out, data)
    return keys, False


def check_same_run(out: Path, runs: dict, model: str | None, params: dict) -> None:
    """Raise ConfigError (exit 2) when `out` already holds answers of another model or other sampling settings
    (`runs` from `done_prompt_keys`): appending would mix two runs' answers in one candidates file, and a
    finished file would pass for this run's. `model` None checks the settings only (before the model loads)."""
    mine = json.dumps(params, sort_keys=True)
    for (other_model, other_params), line in runs.items():
        if (model is None or other_model == model) and other_params == mine:
            continue
        what = [f"model {other_model!r}, not {model!r}"] if model is not None and other_model != model else []
        theirs = json.loads(other_params)
        what += [f"{k} {theirs.get(k)!r}, not {v!r}" for k, v in params.items() if theirs.get(k) != v]
        raise ConfigError(f"--out {out}:{line}: holds answers of another run ({'; '.join(what)}); adding this "
                          "run's answers would mix the two in one candidates file. Give another --out, or rerun "
                          "with that run's model and settings to finish it (move the file away to start over)")


def _validate(n, temperature, top_p, max_new_tokens, batch_size, concurrency) -> None:
    checks = [(n >= 1, f"--n must be at least 1, got {n}"),
              (0 <= temperature <= 2, f"--temperature must be in [0, 2], got {temperature}"),
              (0 < top_p <= 1, f"--top-p must be in (0, 1], got {top_p}"),
              (max_new_tokens >= 1, f"--max-new-tokens must be at least 1, got {max_new_tokens}"),
              (batch_size >= 1, f"--batch-size must be at least 1, got {batch_size}"),
              (concurrency >= 1, f"--concurrency must be at least 1, got {concurrency}")]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _cannot_be_sent(err: Exception) -> bool:
    """True for a prompt that fails the same way on every try: refused here (a PrefloopError: no user text,
    a template that refuses it, PromptTooLong) or by the endpoint as an invalid request (HTTP 400: OpenAI's
    and vLLM's `context_length_exceeded`, a message with no text); running the command again would not help."""
    return (isinstance(err, PrefloopError) or getattr(err, "code", None) == "context_length_exceeded"
            or getattr(err, "status_code", None) == 400)


def generate_command(model, prompts, out, model_name=None, n=4, temperature=0.8, top_p=1.0, max_new_tokens=256,
                     batch_size=8, concurrency=8, api_key_env=None, api_key_file=None, seed=0,
                     log_requests=True) -> int:
    """`prefloop generate`; an endpoint's key comes from `api_key_env` / `api_key_file` (see `endpoint`).

    With an endpoint, each record also names the model the endpoint says answered (`served_by`, its
    responses' `model` field); `log_requests=False` sends `store: false` (a logging `prefloop serve`
    then keeps no interaction for these requests)."""
    from tqdm import tqdm

    _validate(n, temperature, top_p, max_new_tokens, batch_size, concurrency)
    out_path = Path(out)
    if out_path.is_dir():
        raise ConfigError(f"--out {out} is a directory; give the JSONL file to write the candidates to "
                          f"(e.g. {out_path / 'candidates.jsonl'})")
    prompt_set = read_prompts(prompts)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    runs: dict = {}
    done, repaired = done_prompt_keys(out_path, runs)
    todo = [p for p in prompt_set.prompts if p.key not in done]
    print(f"prefloop generate: {prompt_set.summary()}; {len(prompt_set.prompts) - len(todo)} already in {out}"
          + (" (removed a half-written last line)" if repaired else ""), file=sys.stderr)
    params = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "n": n, "seed": seed}
    check_same_run(out_path, runs, None, params)  # before "nothing to do": a finished file of other settings
    if not todo:
        print(f"prefloop generate: nothing to do, every prompt is in {out}", file=sys.stderr)
        return 0
    client = open_chat_client(model, model_name, None, batch_size, concurrency, api_key_env=api_key_env,
                              api_key_file=api_key_file, log_requests=log_requests)
    check_same_run(out_path, runs, client.name, params)
    calls = [ChatCall(p.messages, n, SamplingParams(max_new_tokens, temperature, top_p, seed=prompt_seed(seed, p)))
             for p in todo]
    failures: list[tuple[Prompt, Exception]] = []
    with out_path.open("a", encoding="utf-8") as f, tqdm(total=len(todo), desc="prompts", unit="prompt",
                                                          disable=None) as bar:
        for index, result in client.complete_many(calls):
            prompt = todo[index]
            bar.update(1)
            if isinstance(result, Exception):
                failures.append((prompt, result))
                continue
            record = {"id": prompt.id, "messages": prompt.messages, "candidates": result.texts,
                      "finish_reasons": result.finish_reasons, "model": client.name, "params": params,
                      "source": prompt.source}
            if result.model is not None:
                record["served_by"] = result.model
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
    written = len(todo) - len(failures)
    print(f"prefloop generate: wrote {written} prompts x {n} candidates to {out} ({client.usage})", file=sys.stderr)
    if getattr(client, "adaptations", None):  # e.g. a reasoning model that takes no temperature
        print("prefloop generate: the endpoint refused request fields, sent instead as: "
              + ", ".join(f"{k} -> {v}" for k, v in client.adaptations.items()), file=sys.stderr)
    if failures:
        for prompt, err in failures[:5]:
            where = f"{prompt.source} (id {prompt.id})" if prompt.source else prompt.id
            print(f"  failed {where}: {type(err).__name__}: {err}", file=sys.stderr)
        if len(failures) > 5:
            print(f"  ... and {count(len(failures) - 5, 'more failed prompt')}", file=sys.stderr)
        refused = sum(_cannot_be_sent(err) for _, err in failures)
        if refused:
            print(f"prefloop generate: {count(refused, 'prompt')} cannot be sent to this model as written (see above); "
                  "fix them or use another model", file=sys.stderr)
        if refused < len(failures):
            print(f"prefloop generate: {count(len(failures) - refused, 'prompt')} failed; run the same command again to "
                  "retry only those", file=sys.stderr)
        return 1
    return 0
