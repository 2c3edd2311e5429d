"""Answers of one model to an eval's prompts: generated through the one sampler, cached on disk.

A model is a local directory, a LoRA adapter directory (its `adapter_config.json` names the base), a
`.gguf` file, or an OpenAI-compatible endpoint URL with a model name. Each prompt's sampling seed is
`generate.prompt_seed(seed, prompt)`, so both models of a comparison sample with the same seed per
prompt, and a resumed run samples what an uninterrupted one would have.

Cache: OUT/answers/ROLE.jsonl, one record per prompt, appended as answers arrive:
    {"id", "key", "messages", "answer", "tokens", "chars", "finish_reason", "model", "spec"
     [, "endpoint_adaptations"]}
`endpoint_adaptations` (only when there were any) are the request fields the endpoint refused and how
they were sent instead (e.g. temperature left out), so a rerun from the cache still reports them.
`spec` is everything that determines the answer (model, adapter, name, sampling settings); a rerun with
the same spec generates only what is missing, a rerun with another judge generates nothing. A record
with a different spec, or whose id names one of this run's prompts but whose text differs, is a located
error: the cache belongs to another run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prefloop.errors import ConfigError, DataError
from prefloop.prompts import Prompt
from prefloop.resume import end_cut_line


@dataclass
class ModelSpec:
    """Where a model comes from. `target` is a path or URL as the user gave it."""

    target: str
    name: str | None = None  # the model name at an endpoint (--*-model-name)
    base: str | None = None  # base model of a LoRA adapter directory (resolved from adapter_config.json)
    adapter: str | None = None

    @classmethod
    def resolve(cls, target: str, name: str | None = None, option: str = "--model") -> "ModelSpec":
        """A spec for `target`; an adapter directory is recognised by its adapter_config.json."""
        from prefloop.endpoint import is_endpoint

        if not target:
            raise ConfigError(f"{option} is empty; give a model directory, a LoRA adapter directory or an endpoint URL")
        if is_endpoint(target):
            return cls(target, name)
        path = Path(target)
        if not path.exists() and target.startswith((".", "/")):
            raise ConfigError(f"{option} {target}: no such file or directory; give a model directory, a LoRA "
                              "adapter directory (a training output_dir) or an OpenAI-compatible endpoint URL")
        config = path / "adapter_config.json"
        if config.is_file():
            try:
                base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except json.JSONDecodeError as err:
                raise DataError(f"{config}:{err.lineno}: not valid JSON ({err.msg})") from err
            if not base:
                raise DataError(f"{config}: field base_model_name_or_path is empty; the adapter does not say which "
                                "base model it belongs to (merge it with prefloop merge --base BASE and pass the result)")
            return cls(target, name, base=base, adapter=target)
        return cls(target, name)

    @property
    def is_endpoint(self) -> bool:
        from prefloop.endpoint import is_endpoint

        return is_endpoint(self.target)

    def label(self) -> str:
        """The name reports show: the endpoint's model name, or the directory name."""
        from prefloop.chat_clients import local_model_name

        if self.name:
            return self.name
        if self.is_endpoint:
            return self.target
        return local_model_name(self.target.rstrip("/"))

    def to_entry(self, endpoint_adaptations: dict | None = None) -> dict:
        """The results.json "models" entry (path, adapter, url, name, fingerprint, endpoint_adaptations:
        `AnswerSet.endpoint_adaptations()` of this model's answers)."""
        from prefloop.evaluate.results import model_entry

        if self.is_endpoint:
            return model_entry(url=self.target, name=self.label(), fingerprint=self.fingerprint(),
                               endpoint_adaptations=endpoint_adaptations)
        return model_entry(path=self.base or self.target, adapter=self.adapter, name=self.label(),
                           fingerprint=self.fingerprint(), endpoint_adaptations=endpoint_adaptations)

    def fingerprint(self) -> str:
        """A hash of where the weights are: the URL and name, or the weight files' names, sizes and times."""
        parts = [self.target, self.name or ""]
        if not self.is_endpoint:
            for d in [p for p in (self.base, self.adapter or self.target) if p]:
                root = Path(d)
                if root.is_dir():
                    for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
                        st = f.stat()
                        parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def open_client(self, api_key: str | None, batch_size: int, concurrency: int, option: str):
        """A chat client (see chat_clients) for this model; a local one is loaded here."""
        from prefloop.chat_clients import EndpointChatClient, LocalChatClient, open_chat_client
        from prefloop.endpoint import make_client, resolve_model_name
        from prefloop.sampling import LocalGenerator

        if self.is_endpoint:
            client = make_client(self.target, api_key)
            return EndpointChatClient(client, resolve_model_name(client, self.name, option), concurrency)
        if self.adapter:
            return LocalChatClient(LocalGenerator.load(self.base, adapter=self.adapter), self.label(), batch_size)
        return open_chat_client(self.target, self.name, None, batch_size, concurrency, option)


@dataclass
class Answer:
    id: str
    key: str
    messages: list[dict]
    answer: str
    tokens: int | None
    chars: int
    finish_reason: str
    model: str
    endpoint_adaptations: dict | None = None  # request fields the endpoint refused, when it refused any


@dataclass
class AnswerSet:
    """One model's answers by prompt key, and what generating them took."""

    role: str
    path: Path
    by_key: dict[str, Answer] = field(default_factory=dict)
    generated: int = 0
    from_cache: int = 0
    not_in_prompts: int = 0

    def endpoint_adaptations(self) -> dict[str, str]:
        """The request fields the endpoint refused for any of these answers (cached ones included) and
        how they were sent instead, e.g. {"temperature": "left out"}; {} when none was refused."""
        out: dict[str, str] = {}
        for answer in self.by_key.values():
            out.update(answer.endpoint_adaptations or {})
        return out


def _spec_dict(spec: ModelSpec, sampling: dict) -> dict:
    return {"target": spec.target, "name": spec.name, "adapter": spec.adapter, **sampling}


def read_answer_cache(path: Path, spec: dict, prompts: list[Prompt]) -> tuple[dict[str, Answer], int]:
    """Cached answers for `prompts` (by key) and how many cached records are for other prompts.

    Raises DataError (file:line, field) when a record was made with another model or settings, or
    when its id names one of `prompts` but its messages differ. A half-written last line (a crash)
    is dropped.
    """
    if not path.is_file():
        return {}, 0
    by_id = {p.id: p for p in prompts}
    keys = {p.key for p in prompts}
    found: dict[str, Answer] = {}
    other = 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    offset = 0
    for lineno, raw in enumerate(lines, 1):
        if raw.strip():
            try:
                r = json.loads(raw)
                answer = Answer(str(r["id"]), r["key"], r["messages"], r["answer"], r.get("tokens"), int(r["chars"]),
                                r.get("finish_reason", "stop"), r.get("model", ""), r.get("endpoint_adaptations"))
                record_spec = r["spec"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                if lineno == len(lines):  # interrupted write, no newline after it
                    with path.open("r+b") as f:
                        f.truncate(offset)
                    break
                raise DataError(f"{path}:{lineno}: not an answer record ({type(err).__name__}: {err}); the answers "
                                "cache is written by prefloop eval; delete the file to generate again") from err
            if record_spec != spec:
                changed = sorted(k for k in set(spec) | set(record_spec) if spec.get(k) != record_spec.get(k))
                raise DataError(f"{path}:{lineno}: field spec: these answers were generated with other settings "
                                f"({', '.join(f'{k}={record_spec.get(k)!r} here, {spec.get(k)!r} now' for k in changed)}); "
                                "use another --out, or delete the file to generate again")
            if answer.id in by_id and by_id[answer.id].key != answer.key:
                raise DataError(f"{path}:{lineno}: field id: answer {answer.id!r} was made for another prompt than "
                                f"this run's prompt {answer.id!r} (the texts differ); the prompts file changed: use "
                                "another --out, or delete the file to generate again")
            if answer.key in keys:
                found[answer.key] = answer
            else:
                other += 1
        offset += len(raw) + 1
    end_cut_line(path, data)
    return found, other


def generate_answers(role: str, spec: ModelSpec, prompts: list[Prompt], out_dir: Path, sampling: dict, seed: int,
                     api_key: str | None = None, batch_size: int = 8, concurrency: int = 8,
                     option: str = "--model") -> AnswerSet:
    """Answers of `spec` to every prompt: cached ones read, missing ones generated and appended.

    sampling: {"temperature", "top_p", "max_new_tokens"}. Each prompt's seed is
    `prompt_seed(seed, prompt)`. Raises DataError naming the endpoint and its status when requests fail
    (answers that came back are kept; a rerun generates only the rest).
    """
    from tqdm import tqdm

    from prefloop.chat_clients import ChatCall
    from prefloop.generate import prompt_seed
    from prefloop.sampling import SamplingParams

    path = out_dir / "answers" / f"{role}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    spec_d = _spec_dict(spec, {**sampling, "seed": seed})
    cached, other = read_answer_cache(path, spec_d, prompts)
    result = AnswerSet(role, path, dict(cached), from_cache=len(cached), not_in_prompts=other)
    todo = [p for p in prompts if p.key not in cached]
    if not todo:
        return result
    print(f"prefloop eval: {role} ({spec.label()}): {len(cached)} answers cached, generating {len(todo)}",
          file=sys.stderr)
    client = spec.open_client(api_key, batch_size, concurrency, option)
    calls = [ChatCall(p.messages, 1, SamplingParams(sampling["max_new_tokens"], sampling["temperature"],
                                                    sampling["top_p"], seed=prompt_seed(seed, p))) for p in todo]
    failures: list[tuple[Prompt, Exception]] = []
    with path.open("a", encoding="utf-8") as f, tqdm(total=len(todo), desc=f"answers ({role})", unit="prompt",
                                                      disable=None) as bar:
        for index, completion in client.complete_many(calls):
            bar.update(1)
            prompt = todo[index]
            if isinstance(completion, Exception):
                failures.append((prompt, completion))
                continue
            text = completion.texts[0]
            answer = Answer(prompt.id, prompt.key, prompt.messages, text, completion.completion_tokens or None,
                            len(text), completion.finish_reasons[0], client.name, completion.adaptations or None)
            record = {k: v for k, v in answer.__dict__.items() if k != "endpoint_adaptations" or v}
            record["spec"] = spec_d
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            result.by_key[prompt.key] = answer
            result.generated += 1
    if failures:
        prompt, err = failures[0]
        status = getattr(err, "status_code", None)
        where = f"the endpoint {spec.target}" if spec.is_endpoint else f"the model {spec.target}"
        raise DataError(f"{len(failures)} of {len(todo)} answer request(s) for {role} failed at {where}"
                        + (f" (HTTP status {status})" if status else "")
                        + f"; first: prompt {prompt.id}: {type(err).__name__}: {str(err)[:300]}. The {result.generated} "
                        f"answers that came back are kept in {path}; fix the endpoint and run the same command again "
                        "to generate only the rest")
    return result
