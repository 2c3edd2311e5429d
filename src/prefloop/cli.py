"""`prefloop` command line: parses arguments and calls one function per command, nothing else.

Each command's function lives in the module that owns the feature and is imported lazily, so
`prefloop --help` stays fast and a command only pays for the libraries it uses. Every command
function takes keyword arguments named like the options below and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from prefloop.errors import PrefloopError

# command name -> "module:function"
COMMANDS = {
    "train": "prefloop.train.run:train_command",
    "merge": "prefloop.models:merge_command",
    "data-check": "prefloop.data.check:check_command",
    "generate": "prefloop.generate:generate_command",
    "judge": "prefloop.judge.run:judge_command",
    "judge-agreement": "prefloop.judge.agreement:judge_agreement_command",
    "label": "prefloop.label.app:label_command",
    "label-stats": "prefloop.label.stats:label_stats_command",
    "export": "prefloop.label.export:export_command",
    "serve": "prefloop.serve.app:serve_command",
}


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="DPO training from a LLaMA-Factory-style YAML config")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("--config_file", "--config-file", dest="config_file", help="YAML config file (alternative form)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=1e-6 pref_loss=ipo")
    # The deepspeed launcher appends --local_rank=N; torch.distributed sets LOCAL_RANK as well, so it is unused.
    p.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, help=argparse.SUPPRESS)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into a standalone model directory")
    p.add_argument("adapter", help="directory holding the LoRA adapter (a training output_dir)")
    p.add_argument("--out", required=True, help="directory for the merged model")
    p.add_argument("--base", help="base model (default: the one recorded in the adapter config)")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="preference data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser("check", help="validate a preference dataset and print a quality report")
    c.add_argument("dataset", help="file, directory, or dataset name(s) from dataset_info.json, comma-separated")
    c.add_argument("--dataset-dir", default="data", help="where dataset_info.json lives (default: data)")
    c.add_argument("--tokenizer", help="tokenizer (model dir or hub id) for token-length statistics")
    c.add_argument("--template", help="built-in chat template name (default: the tokenizer's own)")
    c.add_argument("--cutoff-len", type=int, help="report how many pairs this cutoff would truncate or drop")
    c.add_argument("--write-clean", metavar="OUT", help="write the pairs that pass, in the seed's format")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (counted) instead of failing")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample N candidate responses per prompt")
    p.add_argument("--model", required=True, help="local model path or OpenAI-compatible endpoint URL")
    p.add_argument("--model-name", help="model name to request from an endpoint")
    p.add_argument("--prompts", required=True, help="prompts file (any format the data layer reads)")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--api-key", help="API key for the endpoint (default: $OPENAI_API_KEY)")
    p.add_argument("--seed", type=int, default=0)


def _add_judge(sub) -> None:
    p = sub.add_parser("judge", help="turn candidates into preference pairs with an LLM judge or a reward model")
    p.add_argument("--candidates", required=True)
    p.add_argument("--judge", help="OpenAI-compatible endpoint URL or local model path")
    p.add_argument("--judge-model", help="model name at the endpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--criteria", default="helpfulness,accuracy,clarity,safety")
    p.add_argument("--template-file", help="judge prompt template file")
    p.add_argument("--pairing", choices=["max_min", "all_pairs", "random"], default="max_min")
    p.add_argument("--reward-model", help="sequence-classification reward model path")
    p.add_argument("--min-margin", type=float, default=0.0)
    p.add_argument("--keep-ties", action="store_true")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cache", help="judgment cache file (default: next to --out)")
    p.add_argument("--api-key", help="API key for the endpoint (default: $OPENAI_API_KEY)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=1024, help="longest judge answer (reasoning + verdict)")
    a = sub.add_parser("judge-agreement", help="how often a judge agrees with human votes")
    a.add_argument("--human", required=True, help="prefloop SQLite store with human votes")
    a.add_argument("--judge", required=True, help="judge output (PREFS.jsonl)")


def _add_label(sub) -> None:
    p = sub.add_parser("label", help="web app where people compare two responses")
    p.add_argument("--pairs", help="file of prompts with two or more candidate responses each")
    p.add_argument("--model-a", help="local model path or OpenAI-compatible endpoint URL")
    p.add_argument("--model-b", help="local model path or OpenAI-compatible endpoint URL")
    p.add_argument("--prompts", help="prompts to draw from in live mode")
    p.add_argument("--db", default="prefloop.sqlite")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="users file: one 'name:password' per line")
    p.add_argument("--dimensions", help="comma-separated rating dimensions, e.g. helpfulness,safety")
    p.add_argument("--overlap", type=int, default=1, help="annotators per item before it is complete")
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("label-stats", help="votes per annotator, bias and agreement statistics")
    s.add_argument("--db", default="prefloop.sqlite")
    s.add_argument("--json", action="store_true")
    e = sub.add_parser("export", help="store -> training JSONL in the seed's preference-pair format")
    e.add_argument("--db", default="prefloop.sqlite")
    e.add_argument("--out", required=True)
    e.add_argument("--min-agreement", type=float, default=0.0)
    e.add_argument("--include-ties", action="store_true")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible chat server; logs interactions to the store")
    p.add_argument("model", help="model directory, hub id or .gguf file")
    p.add_argument("--adapter", help="LoRA adapter directory to apply")
    p.add_argument("--model-name", help="name served at /v1/models (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", help="SQLite store for interaction logs")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--max-tokens-limit", type=int, default=2048)
    p.add_argument("--max-batch-rows", type=int, default=16,
                   help="most sequences decoded together (a request with n choices is n rows)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_merge, _add_data, _add_generate, _add_judge, _add_label, _add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "data":
        command = "data-" + args.pop("data_command")
    module_name, func_name = COMMANDS[command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(**args) or 0)
    except PrefloopError as err:
        print(f"prefloop {command.replace('data-', 'data ', 1)}: error: {err}", file=sys.stderr)  # as typed
        return 2


if __name__ == "__main__":
    sys.exit(main())
