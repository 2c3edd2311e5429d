"""Issue 4's training benchmark: prefloop vs TRL's DPOTrainer on the same workload, one run.

    bash bench/setup.sh                                   # once: bench/.venv with trl (not a prefloop dep)
    bench/.venv/bin/python bench/bench_train.py           # 64 pairs, fp32 and bf16, all engines
    bench/.venv/bin/python bench/bench_train.py --pairs 16 --precision fp32
    bench/.venv/bin/python bench/bench_train.py --scaling # prefloop alone, 100/400/1600 pairs, small model
    bench/.venv/bin/python bench/bench_train.py --device cuda --model random:qwen2-0.5b --precision bf16

Workload: SmolLM2-135M-Instruct (scripts/fetch_model.sh), LoRA r=16 on all linear layers, batch 8,
cutoff 1024, seeded synthetic pairs (bench/workload.py). Engines, each in its own subprocess so
peak RSS is per engine:
- prefloop: the real trainer (`prefloop.train`) with its fast paths: cached reference, prefix
  sharing, packing, chunked log-probs, gradient checkpointing (as TRL).
- trl: TRL DPOTrainer with its defaults (reference forward every step, gradient checkpointing).
- trl_precompute: the same with precompute_ref_log_probs=True.
All start from the same LoRA-initialised model (prefloop's own `apply_finetuning` after the same
seed), see the same pairs in the same order (the Trainer's seeded sampler, same seed, same length) as
the same token ids (checked before training; bench/workload.py),
and use the same optimizer settings. Per-step losses must agree (relative 1e-3 in fp32) before any
speed is reported. Times are whole-run wall times, model loading and reference precompute included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
ENGINES = ("prefloop", "trl", "trl_precompute")
LOSS_RTOL = {"fp32": 1e-3, "bf16": 2e-2}


# --------------------------------------------------------------------------- engines (subprocess)


def _peak_memory_gb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _prefloop_config(spec: dict, out_dir: str) -> dict:
    return {
        "model_name_or_path": spec["model_dir"], "dataset": spec["data_file"], "template": None,
        "cutoff_len": spec["cutoff"], "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16,
        "lora_alpha": 32, "lora_dropout": 0.0, "pref_loss": "sigmoid", "pref_beta": 0.1,
        "per_device_train_batch_size": spec["batch"], "gradient_accumulation_steps": 1,
        "learning_rate": spec["lr"], "num_train_epochs": 1.0, "lr_scheduler_type": "linear",
        "optim": "adamw_torch", "max_grad_norm": 1.0, "weight_decay": 0.0, "seed": spec["seed"],
        "bf16": spec["precision"] == "bf16", "gradient_checkpointing": True,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "sample_prompts": 0, "val_size": 0.0,
        "output_dir": out_dir, "overwrite_output_dir": True, "ref_cache_dir": os.path.join(out_dir, "ref_cache"),
        **spec.get("prefloop", {}),
    }


DIAGNOSTIC_METRICS = ("logps/chosen", "logps/rejected", "rewards/margins")


def _step_metrics(log_history: list[dict]) -> dict:
    """Per-step losses (the agreement check) and the metrics that locate a disagreement."""
    steps = [h for h in log_history if "loss" in h]
    return {"losses": [h["loss"] for h in steps],
            "diagnostics": {m: [h.get(m) for h in steps] for m in DIAGNOSTIC_METRICS}}


def run_prefloop(spec: dict, out_dir: str) -> dict:
    import prefloop

    started = time.perf_counter()
    prefloop.train(_prefloop_config(spec, out_dir))
    wall = time.perf_counter() - started
    state = json.loads((Path(out_dir) / "trainer_state.json").read_text())
    return {"wall_s": wall, **_step_metrics(state["log_history"])}


def run_trl(spec: dict, out_dir: str, precompute: bool) -> dict:
    import datasets
    import torch
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from prefloop.config import load_config
    from prefloop.models import apply_finetuning, load_causal_lm, load_tokenizer
    from workload import prefloop_ids, text_pair

    datasets.disable_caching()
    started = time.perf_counter()
    cfg = load_config(_prefloop_config(spec, os.path.join(out_dir, "unused")))
    set_seed(cfg.seed)  # the same initial LoRA weights as prefloop's run
    tokenizer = load_tokenizer(spec["model_dir"])
    model = apply_finetuning(load_causal_lm(spec["model_dir"]), cfg)
    pairs = [json.loads(line) for line in Path(spec["data_file"]).read_text().splitlines()]
    args = DPOConfig(
        output_dir=out_dir, per_device_train_batch_size=spec["batch"], max_length=spec["cutoff"],
        learning_rate=spec["lr"], num_train_epochs=1, lr_scheduler_type="linear", optim="adamw_torch",
        max_grad_norm=1.0, weight_decay=0.0, seed=spec["seed"], bf16=spec["precision"] == "bf16",
        logging_steps=1, save_strategy="no", report_to="none", precompute_ref_log_probs=precompute,
        use_cpu=spec["device"] == "cpu", beta=0.1, loss_type=["sigmoid"],
    )
    text_pairs = [text_pair(tokenizer, pair) for pair in pairs]
    trainer = DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(text_pairs),
                         processing_class=tokenizer)
    expected = prefloop_ids(tokenizer, spec["data_file"], spec["cutoff"])
    got = [{k: list(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for row in trainer.train_dataset]
    if got != expected:
        bad = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b) if len(got) == len(expected) else None
        raise SystemExit(f"TRL tokenized the pairs differently from prefloop (first different pair: {bad}, "
                         f"{len(got)} vs {len(expected)} pairs): the comparison would not be like for like")
    trainer.train()
    wall = time.perf_counter() - started
    del torch
    return {"wall_s": wall, **_step_metrics(trainer.state.log_history)}


def engine_main(engine: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("mem_limit_gb"):  # fail this engine instead of letting the kernel's OOM killer pick a process
        limit = int(spec["mem_limit_gb"] * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if spec["device"] == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as out_dir:
        if engine == "prefloop":
            result = run_prefloop(spec, out_dir)
        else:
            result = run_trl(spec, out_dir, precompute=engine == "trl_precompute")
    result["peak_mem_gb"] = _peak_memory_gb(spec["device"])
    Path(result_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent


def measure_matmul_peak(device: str, dtype_name: str, n: int = 2048, reps: int = 5) -> float:
    """Best achieved FLOP/s of an n x n matmul on this machine (the denominator of the share)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def prepare_model_dir(model: str, tokenizer_dir: str, work: Path) -> str:
    """A from_pretrained-able directory: the model itself, or random weights of a named shape."""
    if not model.startswith("random:"):
        if not (Path(model) / "config.json").is_file():
            raise SystemExit(f"no model at {model}: run `bash scripts/fetch_model.sh` first, or pass "
                             f"--model random:smollm2-135m for random weights of the same shape")
        return model
    from prefloop.models import load_tokenizer
    from workload import build_model

    tokenizer = load_tokenizer(tokenizer_dir)
    out = work / model.replace(":", "-")
    build_model(model, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def write_workload(model_dir: str, count: int, seed: int, work: Path, lengths,
                   cutoff: int) -> tuple[str, list[dict]]:
    from prefloop.models import load_tokenizer
    from workload import make_pairs, prefloop_ids

    tokenizer = load_tokenizer(model_dir)
    pairs = make_pairs(tokenizer, count, seed=seed, lengths=lengths)
    path = work / f"pairs-{count}.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path), prefloop_ids(tokenizer, str(path), cutoff)


def run_engine(engine: str, spec: dict, work: Path, python: str, timeout: float | None) -> dict:
    tag = f"{engine}-{spec['precision']}-{spec['pairs']}"
    spec_path, result_path = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    log = work / f"{tag}.log"
    print(f"  running {engine} ({spec['precision']}, {spec['pairs']} pairs) ... log: {log}", flush=True)
    with open(log, "w") as fh:
        proc = subprocess.run([python, __file__, "--engine", engine, "--spec", str(spec_path),
                               "--result", str(result_path)], stdout=fh, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=ROOT)
    if proc.returncode != 0 or not result_path.is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"engine {engine} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return json.loads(result_path.read_text())


def check_losses(results: dict, precision: str) -> list[str]:
    """Per-step losses of every engine vs prefloop's; returns the problems (empty = agree)."""
    base = results["prefloop"]["losses"]
    problems = []
    for name, res in results.items():
        if name == "prefloop":
            continue
        other = res["losses"]
        if len(other) != len(base):
            problems.append(f"{name}: {len(other)} logged steps vs prefloop's {len(base)}")
            continue
        worst = max((abs(a - b) / max(abs(b), 1e-8) for a, b in zip(other, base)), default=0.0)
        res["max_rel_loss_diff"] = worst
        if worst > LOSS_RTOL[precision]:
            problems.append(f"{name}: per-step losses differ from prefloop's by up to {worst:.2e} relative "
                            f"(allowed {LOSS_RTOL[precision]:.0e}):\n{_per_step(name, res, results['prefloop'])}")
    return problems


def _per_step(name: str, res: dict, base: dict) -> str:
    """Step by step: loss and the diagnostic metrics of `name` next to prefloop's."""
    lines = [f"    step | loss {name} / prefloop | " + " | ".join(f"{m} {name} / prefloop" for m in DIAGNOSTIC_METRICS)]
    for i, (a, b) in enumerate(zip(res["losses"], base["losses"])):
        cells = [f"{res['diagnostics'][m][i]} / {base['diagnostics'][m][i]}" for m in DIAGNOSTIC_METRICS
                 if "diagnostics" in res and "diagnostics" in base]
        lines.append(f"    {i + 1} | {a:.6f} / {b:.6f} ({abs(a - b) / max(abs(b), 1e-8):.1e}) | " + " | ".join(cells))
    return "\n".join(lines)


def table(precision: str, results: dict, pairs: int, tokens: int, flops: float, peak: float) -> str:
    rows = [f"\n### {precision}: {pairs} pairs, {tokens:,} tokens (prompt counted with each response)\n",
            "| engine | wall s | pairs/s | tokens/s | peak mem GB | model TFLOP/s | share of matmul peak "
            "| prefloop speed-up | max rel. loss diff |",
            "|---|---|---|---|---|---|---|---|---|"]
    base = results.get("prefloop")
    for name, res in results.items():
        wall = res["wall_s"]
        speedup = f"{wall / base['wall_s']:.2f}x" if base and name != "prefloop" else "-"
        diff = f"{res['max_rel_loss_diff']:.1e}" if "max_rel_loss_diff" in res else "-"
        rows.append(f"| {name} | {wall:.1f} | {pairs / wall:.3f} | {tokens / wall:.0f} | {res['peak_mem_gb']:.2f} "
                    f"| {flops / wall / 1e12:.3f} | {100 * flops / wall / peak:.1f}% | {speedup} | {diff} |")
    return "\n".join(rows)


def machine_line(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main_compare(args, work: Path, python: str) -> None:
    from transformers import AutoConfig

    from workload import Lengths, useful_flops

    model_dir = prepare_model_dir(args.model, args.tokenizer, work)
    data_file, tokenized = write_workload(model_dir, args.pairs, args.seed, work, Lengths(), args.cutoff)
    tokens = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in tokenized)
    flops = useful_flops(AutoConfig.from_pretrained(model_dir), tokenized)
    print(f"# prefloop vs TRL: {args.model}, LoRA r16 all linear, batch {args.batch}, cutoff {args.cutoff}")
    print(machine_line(args.device))
    report = []
    for precision in args.precision.split(","):
        peak = measure_matmul_peak(args.device, precision)
        print(f"[{precision}] measured matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
        spec = {"model_dir": model_dir, "data_file": data_file, "pairs": args.pairs, "batch": args.batch,
                "cutoff": args.cutoff, "lr": args.lr, "seed": args.seed, "precision": precision,
                "device": args.device, "prefloop": json.loads(args.prefloop_options),
                "mem_limit_gb": args.mem_limit_gb}
        results = {e: run_engine(e, spec, work, python, args.timeout) for e in args.engines.split(",")}
        if args.out:  # the raw results survive a failed agreement check (a default run takes most of an hour)
            Path(args.out).with_suffix(f".{precision}.json").write_text(json.dumps(results, indent=1))
        if "prefloop" in results:
            problems = check_losses(results, precision)
            if problems and precision == "fp32":
                raise SystemExit("per-step losses do not agree; speed is not reported:\n  " + "\n  ".join(problems))
            for p in problems:
                print(f"  note ({precision}): {p}")
        text = table(precision, results, args.pairs, tokens, flops, peak)
        text += f"\n\nMatmul peak measured here: {peak / 1e9:.0f} GFLOP/s ({precision})."
        print(text, flush=True)
        report.append(text)
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n")


def main_scaling(args, work: Path, python: str) -> None:
    from workload import Lengths

    model_dir = prepare_model_dir("random:small", args.tokenizer, work)
    lengths = Lengths(prompt=(32, 128), response=(16, 64)) if args.scaling_lengths == "short" else Lengths()
    print(f"# prefloop scaling: random 4-layer hidden-256 Llama, {args.scaling_lengths} pairs, "
          f"batch {args.batch}, {args.precision.split(',')[0]}")
    print(machine_line(args.device))
    rows = ["| pairs | wall s | s per pair | peak mem GB |", "|---|---|---|---|"]
    for count in [int(c) for c in args.scaling_pairs.split(",")]:
        data_file, _ = write_workload(model_dir, count, args.seed, work, lengths, args.cutoff)
        spec = {"model_dir": model_dir, "data_file": data_file, "pairs": count, "batch": args.batch,
                "cutoff": args.cutoff, "lr": args.lr, "seed": args.seed, "precision": args.precision.split(",")[0],
                "device": args.device, "prefloop": json.loads(args.prefloop_options),
                "mem_limit_gb": args.mem_limit_gb}
        res = run_engine("prefloop", spec, work, python, args.timeout)
        rows.append(f"| {count} | {res['wall_s']:.1f} | {res['wall_s'] / count:.4f} | {res['peak_mem_gb']:.2f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    if args.out:
        Path(args.out).write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="model directory, or random:smollm2-135m / random:qwen2-0.5b (random weights)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_MODEL), help="tokenizer for random:* models")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--prefloop-options", default='{"packing": true, "prefix_sharing": true, '
                        '"logps_chunk_size": 1024}', help="JSON of prefloop config keys for its engine")
    parser.add_argument("--scaling", action="store_true", help="prefloop alone on a small random model")
    parser.add_argument("--scaling-pairs", default="100,400,1600")
    parser.add_argument("--scaling-lengths", default="short", choices=["short", "full"],
                        help="short: prompts 32-128, responses 16-64 tokens; full: the main workload's")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per engine run")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="address-space limit per engine (a shared machine: fail one engine, not others' jobs)")
    parser.add_argument("--out", help="also write the table(s) to this file")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        engine_main(args.engine, args.spec, args.result)
        return
    venv_python = HERE / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    if not args.scaling and "trl" in args.engines:
        check = subprocess.run([python, "-c", "import trl"], capture_output=True)
        if check.returncode != 0:
            raise SystemExit("TRL is not installed for the benchmark: run `bash bench/setup.sh` (it makes bench/.venv)")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        (main_scaling if args.scaling else main_compare)(args, Path(tmp), python)


if __name__ == "__main__":
    main()
