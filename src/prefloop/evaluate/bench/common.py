"""What every benchmark runner shares: its arguments, reading its file, loading the model, the results object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefloop.errors import ConfigError


@dataclass
class BenchArgs:
    """The options of `prefloop eval bench NAME` (see cli.py for their help)."""

    name: str
    model: str
    data: str
    out: str
    adapter: str | None = None
    model_name: str | None = None
    judge: str | None = None
    judge_model: str | None = None
    judge_max_tokens: int | None = None
    api_key: str | None = None
    batch_size: int = 8
    concurrency: int = 8
    max_new_tokens: int | None = None
    limit: int | None = None
    seed: int = 0
    mode: str = "auto"
    references: str | None = None
    shots: str | None = None  # safety_mc: SafetyBench's dev file, for its five-shot prompt
    extra: dict = field(default_factory=dict)

    @property
    def is_endpoint(self) -> bool:
        from prefloop.endpoint import is_endpoint

        return is_endpoint(self.model)

    def check(self) -> None:
        checks = [(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
                  (self.concurrency >= 1, f"--concurrency must be at least 1, got {self.concurrency}"),
                  (self.max_new_tokens is None or self.max_new_tokens >= 1,
                   f"--max-new-tokens must be at least 1, got {self.max_new_tokens}"),
                  (self.limit is None or self.limit >= 1, f"--limit must be at least 1, got {self.limit}"),
                  (self.judge_max_tokens is None or self.judge_max_tokens >= 1,
                   f"--judge-max-tokens must be at least 1, got {self.judge_max_tokens}"),
                  (not (self.adapter and self.is_endpoint), "--adapter applies to a local model, not to an endpoint URL")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.name in UNJUDGED:
            given = [opt for opt, value in (("--judge", self.judge), ("--judge-model", self.judge_model),
                                            ("--judge-max-tokens", self.judge_max_tokens)) if value is not None]
            if given:
                raise ConfigError(f"{self.name} uses no judge ({UNJUDGED[self.name]}), so {', '.join(given)} would "
                                  f"be ignored; drop {'it' if len(given) == 1 else 'them'} (only mt_bench and "
                                  f"alpaca_eval are judged)")
        if self.shots is not None and self.name != "safety_mc":
            raise ConfigError(f"{self.name} takes no few-shot examples (only safety_mc does); drop the shots file")
        if self.references is not None and self.name not in TAKES_REFERENCES:
            raise ConfigError(f"{self.name} reads no --references file (only {' and '.join(TAKES_REFERENCES)}: "
                              f"{'; '.join(TAKES_REFERENCES.values())}), so it would be ignored; drop it")
        from prefloop.evaluate.checks import check_model_path

        check_model_path(self.model, "--model")


# benchmarks that read a --references file, and what it is for them
TAKES_REFERENCES = {"mt_bench": "FastChat's reference_answer JSONL",
                    "safety_mc": "SafetyBench's answer file test_answers_en.json"}

# benchmarks scored without a judge, and how they are scored instead
UNJUDGED = {"truthfulqa_mc": "it scores the model's own log-likelihoods of the answer options",
            "safety_mc": "it scores the model's log-likelihoods of the option letters, or parses the option from "
                         "the model's reply in chat mode"}


def read_bench_records(args: BenchArgs, fields: dict, benchmark: str, fmt_help: str, group_field: str | None = None):
    """The checked records of the benchmark file `args.data` (see `records.read_records`)."""
    from prefloop.evaluate.bench.records import read_records

    return read_records(args.data, fields, benchmark, fmt_help, limit=args.limit, group_field=group_field)


def load_scoring_model(args: BenchArgs):
    """(model, tokenizer) of a local model (+ adapter) for log-likelihood scoring, in eval mode, float32, on the
    GPU when there is one."""
    from prefloop.evaluate.scoring import scoring_device
    from prefloop.models import load_causal_lm, load_tokenizer, tokenizer_dir

    source = tokenizer_dir(args.model, args.adapter)
    return (load_causal_lm(args.model, adapter=args.adapter, device=scoring_device(), key="--model"),
            load_tokenizer(source, key="--adapter" if source == args.adapter else "--model"))


def open_model_client(args: BenchArgs):
    """The chat client answers are generated with: the one batched sampler for a local model (+ adapter),
    or an OpenAI-compatible endpoint."""
    from prefloop.chat_clients import LocalChatClient, local_model_name, open_chat_client
    from prefloop.sampling import LocalGenerator

    if args.is_endpoint or not args.adapter:
        return open_chat_client(args.model, args.model_name, args.api_key, args.batch_size, args.concurrency)
    name = args.model_name or f"{local_model_name(args.model)}+{local_model_name(args.adapter)}"
    return LocalChatClient(LocalGenerator.load(args.model, adapter=args.adapter), name, args.batch_size)


def open_judge_client(args: BenchArgs, benchmark: str):
    from prefloop.chat_clients import open_chat_client

    if not args.judge:
        raise ConfigError(f"{benchmark} needs a judge: pass --judge URL (an OpenAI-compatible endpoint, with "
                          f"--judge-model NAME when it serves several) or --judge PATH (a local model)")
    return open_chat_client(args.judge, args.judge_model, args.api_key, args.batch_size, args.concurrency,
                            option="--judge-model")


def model_role(args: BenchArgs, name: str | None = None) -> dict:
    from prefloop.evaluate.results import model_entry

    if args.is_endpoint:
        return model_entry(url=args.model, name=name or args.model_name)
    return model_entry(path=args.model, adapter=args.adapter, name=name or Path(args.model).name)


def bench_results(args: BenchArgs, benchmark: str, n: int, metrics: dict, details: dict, judge: dict | None = None,
                  config: dict | None = None, seeds: dict | None = None, model_name: str | None = None) -> dict:
    """The results object (kind "bench") of the shared contract."""
    from prefloop.evaluate.results import new_results

    return new_results("bench", benchmark=benchmark, models={"model": model_role(args, model_name)},
                       data={"path": args.data, "n": n, "fingerprint": _file_fingerprint(args.data)}, judge=judge,
                       seeds=seeds or {}, config={"limit": args.limit, **(config or {})}, metrics=metrics,
                       details=details)


def _file_fingerprint(path: str) -> str | None:
    import hashlib

    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else None
