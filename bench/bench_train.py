"""Issues 4 and 17's training benchmark: prefloop vs TRL's DPOTrainer on the same workload, one run.

    bash bench/setup.sh                                   # once: bench/.venv with trl (not a prefloop dep)
    bench/.venv/bin/python bench/bench_train.py           # 64 pairs, fp32 and bf16, all engines
    bench/.venv/bin/python bench/bench_train.py --pairs 16 --precision fp32
    bench/.venv/bin/python bench/bench_train.py --scaling # prefloop alone, 100/400/1600 pairs, small model
    python3 bench/bench_train.py --device cuda --model random:qwen2-0.5b,random:smollm2-135m \
        --finetuning lora,full --precision bf16 --pairs 128 --check-pairs 16   # the GPU table (bench/gpu_check.sh)

Workload: SmolLM2-135M-Instruct (scripts/fetch_model.sh) or a random-weight model of a named shape
(`random:qwen2-0.5b`, `random:smollm2-135m`, with the SmolLM2 tokenizer), LoRA r=16 on all linear
layers or full fine-tuning, batch 8, cutoff 1024, seeded synthetic pairs (bench/workload.py: prompts
32-512, responses 16-384 tokens). Engines:
- prefloop: the real trainer (`prefloop.train`) with its fast paths: cached reference, prefix
  sharing, packing, chunked log-probs, `attn_backend: auto` (flex on CUDA, segments on CPU),
  gradient checkpointing as `--prefloop-options` says (default: every layer, as TRL).
- prefloop_segments / prefloop_varlen / prefloop_flex: the same with that `attn_backend` (`auto` picks
  varlen on CUDA in bf16, flex on CUDA in fp32, segments on a CPU).
- prefloop_unbudgeted: prefloop without the `--prefloop-budget-from` memory budget (what more memory buys).
- trl: TRL DPOTrainer with its defaults (reference forward every step, gradient checkpointing).
- trl_precompute: the same with precompute_ref_log_probs=True.
- trl_liger: the defaults with use_liger_kernel=True (Liger's Triton kernels; CUDA only).
All start from the same initial weights (prefloop's own `apply_finetuning` after the same seed), see
the same pairs in the same order (the Trainer's seeded sampler, same seed, same length) as the same
token ids (checked before training; bench/workload.py), and use the same optimizer settings.
Per-step losses must agree (relative 1e-3 in fp32) before any speed is reported; `--check-pairs N`
runs that check first on a short fp32 run and then times the `--precision` runs (in bf16 the losses
are compared and noted, not gated). Times are whole-run wall times: from the config to the trained
weights (adapter or model) saved on disk, model loading and reference precompute included; the
training loop alone is the Trainer's own `train_runtime`. On CPU each engine runs in its own subprocess (peak RSS per engine); on CUDA all
run in this process, one after another (one CUDA context, imports once; peak GPU memory is reset
before each), so the first prefloop run of a precision includes FlexAttention's compilation. A failed
engine is reported in the table and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

from workload import Lengths  # noqa: E402

LENGTHS = {"full": Lengths(), "short": Lengths(prompt=(32, 128), response=(16, 64))}

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
ENGINES = ("prefloop", "trl", "trl_precompute")
ALL_ENGINES = ("prefloop", "prefloop_unbudgeted", "prefloop_segments", "prefloop_varlen", "prefloop_flex", "trl",
               "trl_precompute", "trl_liger")
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
        "cutoff_len": spec["cutoff"], "finetuning_type": spec.get("finetuning", "lora"), "lora_target": "all",
        "lora_rank": 16,
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
    """Per-step losses (the agreement check), the metrics that locate a disagreement, and the Trainer's
    own `train_runtime` (the training loop alone, s)."""
    steps = [h for h in log_history if "loss" in h]
    loop = next((h["train_runtime"] for h in reversed(log_history) if "train_runtime" in h), None)
    return {"losses": [h["loss"] for h in steps], "loop_s": loop,
            "diagnostics": {m: [h.get(m) for h in steps] for m in DIAGNOSTIC_METRICS}}


class _Tee(io.TextIOBase):
    """stdout that is also kept, to read what the run said about itself."""

    def __init__(self, stream):
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text):
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


NOTE_PREFIXES = ("Attention:", "Gradient checkpointing (auto):", "Time:")


def run_prefloop(spec: dict, out_dir: str, backend: str = "auto") -> dict:
    import prefloop
    from prefloop.train import flex

    started = time.perf_counter()
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        prefloop.train({**_prefloop_config(spec, out_dir), "attn_backend": backend})
    wall = time.perf_counter() - started
    state = json.loads((Path(out_dir) / "trainer_state.json").read_text())
    notes = [line.strip() for line in tee.kept.getvalue().splitlines() if line.startswith(NOTE_PREFIXES)]
    if flex.fallback_reason():
        notes.append(f"FlexAttention failed, segment attention ran instead: {flex.fallback_reason()}")
    return {"wall_s": wall, "notes": notes, **_step_metrics(state["log_history"])}


def run_trl(spec: dict, out_dir: str, precompute: bool, liger: bool = False) -> dict:
    import datasets
    import torch
    from transformers import set_seed

    if liger and spec["device"] != "cuda":
        raise RuntimeError("trl_liger needs a CUDA GPU: Liger's kernels are Triton kernels")
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
        use_cpu=spec["device"] == "cpu", beta=0.1, loss_type=["sigmoid"], use_liger_kernel=liger,
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
    trainer.save_model()  # a whole run ends with the trained weights on disk, as prefloop's does
    wall = time.perf_counter() - started
    del torch
    return {"wall_s": wall, **_step_metrics(trainer.state.log_history)}


def run_one(engine: str, spec: dict) -> dict:
    """Train with `engine` in this process; returns wall time, per-step metrics and peak memory."""
    if engine not in ALL_ENGINES:
        raise SystemExit(f"unknown engine {engine!r}; choose from {', '.join(ALL_ENGINES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if spec["device"] == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 1e9  # left over from earlier engines in this process
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as out_dir:
        if engine.startswith("prefloop"):
            backend = engine.partition("_")[2]
            result = run_prefloop(spec, out_dir, "auto" if backend in ("", "unbudgeted") else backend)
        else:
            result = run_trl(spec, out_dir, precompute=engine == "trl_precompute", liger=engine == "trl_liger")
    result["peak_mem_gb"] = _peak_memory_gb(spec["device"])
    if spec["device"] == "cuda":
        result["baseline_mem_gb"] = baseline
    return result


def engine_main(engine: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("mem_limit_gb"):  # fail this engine instead of letting the kernel's OOM killer pick a process
        limit = int(spec["mem_limit_gb"] * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if spec["device"] == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    Path(result_path).write_text(json.dumps(run_one(engine, spec)))


# --------------------------------------------------------------------------- parent


def measure_matmul_peak(device: str, dtype_name: str, n: int | None = None, reps: int = 5) -> float:
    """Best achieved FLOP/s of an n x n matmul on this machine (the denominator of the share, MFU);
    n = 2048 on CPU, 8192 on a GPU (smaller products do not fill one)."""
    import torch

    n = n or (8192 if device == "cuda" else 2048)
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
    """One engine's result; {"failed": why} instead of stopping the benchmark when it fails."""
    tag = f"{engine}-{spec.get('finetuning', 'lora')}-{spec['precision']}-{spec['pairs']}"
    log = work / f"{tag}.log"
    print(f"  running {engine} ({spec['model']}, {spec.get('finetuning', 'lora')}, {spec['precision']}, "
          f"{spec['pairs']} pairs) ...", flush=True)
    if spec["in_process"]:  # on CUDA (module docstring)
        return _run_in_process(engine, spec, timeout)
    spec_path, result_path = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    try:
        with open(log, "w") as fh:
            proc = subprocess.run([python, __file__, "--engine", engine, "--spec", str(spec_path),
                                   "--result", str(result_path)], stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not result_path.is_file():
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        print(f"  engine {engine} failed (exit {proc.returncode}); last lines of {log}:\n{tail}", flush=True)
        return {"failed": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
    return json.loads(result_path.read_text())


def _run_in_process(engine: str, spec: dict, timeout: float | None) -> dict:
    import gc
    import signal
    import traceback

    import torch

    def expire(*_):
        raise TimeoutError(f"timed out after {timeout:.0f} s")

    if timeout:
        signal.signal(signal.SIGALRM, expire)
        signal.alarm(int(timeout))
    try:
        return run_one(engine, spec)
    except (Exception, SystemExit) as err:  # one engine's failure must not lose the others' numbers
        traceback.print_exc()
        return {"failed": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
    finally:
        signal.alarm(0)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_losses(results: dict, precision: str) -> list[str]:
    """Per-step losses of every engine vs prefloop's; returns the problems (empty = agree)."""
    base = results["prefloop"]["losses"]
    problems = []
    for name, res in results.items():
        if name == "prefloop" or "failed" in res:
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


def table(title: str, results: dict, pairs: int, tokens: int, flops: float, peak: float, device: str) -> str:
    memory = "peak GPU mem GB" if device == "cuda" else "peak mem GB (RSS)"
    rows = [f"\n### {title}: {pairs} pairs, {tokens:,} tokens (prompt counted with each response)\n",
            f"| engine | wall s | training loop s | pairs/s | tokens/s | {memory} | model TFLOP/s "
            "| MFU (of measured matmul peak) | prefloop speed-up (wall) | prefloop speed-up (loop) | max rel. loss diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = results.get("prefloop")
    base = base if base and "failed" not in base else None
    for name, res in results.items():
        if "failed" in res:
            rows.append(f"| {name} | failed: {res['failed']} | | | | | | | | | |")
            continue
        wall, loop = res["wall_s"], res.get("loop_s")
        speedup = f"{wall / base['wall_s']:.2f}x" if base and name != "prefloop" else "-"
        loop_speedup = (f"{loop / base['loop_s']:.2f}x" if base and name != "prefloop" and loop and base.get("loop_s")
                        else "-")
        diff = f"{res['max_rel_loss_diff']:.1e}" if "max_rel_loss_diff" in res else "-"
        rows.append(f"| {name} | {wall:.1f} | {f'{loop:.2f}' if loop else '-'} | {pairs / wall:.3f} | {tokens / wall:.0f} "
                    f"| {res['peak_mem_gb']:.2f} | {flops / wall / 1e12:.3f} | {100 * flops / wall / peak:.1f}% "
                    f"| {speedup} | {loop_speedup} | {diff} |")
    notes = [f"- {name}: {note}" for name, res in results.items() for note in res.get("notes", [])]
    notes += [f"- {name}: {res['baseline_mem_gb']:.2f} GB were allocated before it started (earlier engines' leftovers, "
              f"included in its peak)" for name, res in results.items() if res.get("baseline_mem_gb", 0) > 0.05]
    if any(name.startswith("trl") for name in results):
        notes.append("- trl engines: gradient checkpointing on every decoder layer (TRL's default)")
    return "\n".join(rows + ([""] + notes if notes else []))


def machine_line(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _spec(args, model: str, model_dir: str, data_file: str, pairs: int, precision: str, finetuning: str) -> dict:
    return {"model": model, "model_dir": model_dir, "data_file": data_file, "pairs": pairs, "batch": args.batch,
            "cutoff": args.cutoff, "lr": args.lr, "seed": args.seed, "precision": precision,
            "finetuning": finetuning, "device": args.device, "prefloop": json.loads(args.prefloop_options),
            "mem_limit_gb": args.mem_limit_gb, "in_process": args.in_process}


def _run_all(args, spec: dict, work: Path, python: str, engines: str | None = None) -> dict:
    """Every engine on `spec`, in the order given. With `--prefloop-budget-from ENGINE` the prefloop engines
    get that engine's measured peak memory as `max_memory_gb` (gradient_checkpointing: auto then
    checkpoints what that budget needs): run ENGINE before them."""
    results = {}
    for engine in (engines or args.engines).split(","):
        run_spec = spec
        source = results.get(args.prefloop_budget_from or "")
        if engine.startswith("prefloop") and engine != "prefloop_unbudgeted" and source and "failed" not in source:
            budget = round(source["peak_mem_gb"], 2)
            run_spec = {**spec, "prefloop": {**spec["prefloop"], "max_memory_gb": budget}}
            print(f"    prefloop's memory budget: {budget} GB ({args.prefloop_budget_from}'s peak)", flush=True)
        results[engine] = run_engine(engine, run_spec, work, python, args.timeout)
    return results


def main_compare(args, work: Path, python: str) -> None:
    """For each model x fine-tuning type: the fp32 per-step loss check on a short run (`--check-pairs`,
    first model), then the timed runs in each `--precision`; tables to stdout and `--out`, raw JSON
    next to it. Exits 1 when a per-step loss check failed (the tables are still written, marked)."""
    from transformers import AutoConfig

    from workload import useful_flops

    print(f"# prefloop vs TRL: {args.model}, {args.finetuning} (LoRA r16 all linear), batch {args.batch}, "
          f"cutoff {args.cutoff}")
    print(machine_line(args.device), flush=True)
    peaks = {}
    report, raw, failed_checks = [], {}, []
    for m, model in enumerate(args.model.split(",")):
        model_dir = prepare_model_dir(model, args.tokenizer, work)
        lengths = LENGTHS[args.lengths or "full"]
        data_file, tokenized = write_workload(model_dir, args.pairs, args.seed, work, lengths, args.cutoff)
        tokens = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in tokenized)
        flops = useful_flops(AutoConfig.from_pretrained(model_dir), tokenized)
        for finetuning in args.finetuning.split(","):
            if args.check_pairs and m == 0:
                check_file, _ = write_workload(model_dir, args.check_pairs, args.seed, work, lengths, args.cutoff)
                spec = _spec(args, model, model_dir, check_file, args.check_pairs, "fp32", finetuning)
                print(f"[{model} {finetuning}] fp32 per-step loss check, {args.check_pairs} pairs", flush=True)
                results = _run_all(args, spec, work, python, args.check_engines)
                raw[f"check {model} {finetuning} fp32"] = results
                problems = check_losses(results, "fp32") if "failed" not in results.get("prefloop", {"failed": 1}) else \
                    [f"prefloop failed: {results.get('prefloop', {}).get('failed', 'not run')}"]
                line = "passed: " + ", ".join(f"{n} {r['max_rel_loss_diff']:.1e}" for n, r in results.items()
                                              if "max_rel_loss_diff" in r) if not problems else "FAILED"
                print(f"  loss check {line}", flush=True)
                for problem in problems:
                    print(f"  {problem}", flush=True)
                if problems:
                    failed_checks.append(f"{model} {finetuning}")
            for precision in args.precision.split(","):
                if precision not in peaks:
                    peaks[precision] = measure_matmul_peak(args.device, precision)
                    print(f"[{precision}] measured matmul peak {peaks[precision] / 1e12:.2f} TFLOP/s", flush=True)
                spec = _spec(args, model, model_dir, data_file, args.pairs, precision, finetuning)
                results = _run_all(args, spec, work, python)
                raw[f"{model} {finetuning} {precision}"] = results
                title = f"{model}, {finetuning}, {precision}"
                if "failed" not in results.get("prefloop", {"failed": 1}):
                    problems = check_losses(results, precision)
                    if problems and precision == "fp32":
                        failed_checks.append(title)
                        title += " (PER-STEP LOSSES DISAGREE: not comparable)"
                    for problem in problems:
                        print(f"  note ({precision}): {problem}", flush=True)
                text = table(title, results, args.pairs, tokens, flops, peaks[precision], args.device)
                text += f"\n\nMatmul peak measured here: {peaks[precision] / 1e12:.2f} TFLOP/s ({precision})."
                print(text, flush=True)
                report.append(text)
                if args.out:  # written as we go: a later stage that times out loses nothing before it
                    Path(args.out).write_text("\n".join(report) + "\n")
                    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))
    if failed_checks:
        raise SystemExit(f"per-step losses do not agree for: {'; '.join(failed_checks)}")


def main_scaling(args, work: Path, python: str) -> None:
    model_dir = prepare_model_dir("random:small", args.tokenizer, work)
    lengths = LENGTHS[args.lengths or "short"]
    print(f"# prefloop scaling: random 4-layer hidden-256 Llama, {args.lengths or 'short'} pairs, "
          f"batch {args.batch}, {args.precision.split(',')[0]}")
    print(machine_line(args.device))
    rows = ["| pairs | wall s | s per pair | peak mem GB |", "|---|---|---|---|"]
    for count in [int(c) for c in args.scaling_pairs.split(",")]:
        data_file, _ = write_workload(model_dir, count, args.seed, work, lengths, args.cutoff)
        spec = _spec(args, "random:small", model_dir, data_file, count, args.precision.split(",")[0], "lora")
        res = run_engine("prefloop", spec, work, python, args.timeout)
        if "failed" in res:
            raise SystemExit(f"prefloop failed at {count} pairs: {res['failed']}")
        rows.append(f"| {count} | {res['wall_s']:.1f} | {res['wall_s'] / count:.4f} | {res['peak_mem_gb']:.2f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    if args.out:
        Path(args.out).write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="comma list of model directories or random:smollm2-135m / random:qwen2-0.5b (random weights)")
    parser.add_argument("--tokenizer", default=str(DEFAULT_MODEL), help="tokenizer for random:* models")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma list of {', '.join(ALL_ENGINES)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--finetuning", default="lora", help="comma list of lora, full")
    parser.add_argument("--check-pairs", type=int, default=0,
                        help="first a short fp32 run of N pairs per fine-tuning type (first model) whose per-step "
                             "losses must agree; then the timed runs")
    parser.add_argument("--check-engines", default=None,
                        help="engines of the fp32 loss check (default: --engines); prefloop must be one")
    parser.add_argument("--prefloop-budget-from", default=None, metavar="ENGINE",
                        help="give the prefloop engines ENGINE's measured peak memory as max_memory_gb (list ENGINE "
                             "before them in --engines; with gradient_checkpointing: auto in --prefloop-options)")
    parser.add_argument("--prefloop-options", default='{"packing": true, "prefix_sharing": true, '
                        '"logps_chunk_size": 1024}', help="JSON of prefloop config keys for its engine")
    parser.add_argument("--scaling", action="store_true", help="prefloop alone on a small random model")
    parser.add_argument("--scaling-pairs", default="100,400,1600")
    parser.add_argument("--lengths", choices=["short", "full"], default=None,
                        help="full: prompts 32-512, responses 16-384 tokens (default); short: prompts 32-128, "
                             "responses 16-64 (default of --scaling; quick dry runs)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per engine run")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                        help="run the engines in this process (default: on CUDA) instead of one subprocess each")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="address-space limit per engine (a shared machine: fail one engine, not others' jobs)")
    parser.add_argument("--out", help="also write the table(s) to this file (raw results: the same name, .json)")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        engine_main(args.engine, args.spec, args.result)
        return
    if args.in_process is None:
        args.in_process = args.device == "cuda"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA GPU is visible to torch here")
    venv_python = HERE / ".venv" / "bin" / "python"
    python = sys.executable if args.in_process or not venv_python.exists() else str(venv_python)
    if not args.scaling and "trl" in args.engines:
        check = subprocess.run([python, "-c", "import trl"], capture_output=True)
        if check.returncode != 0:
            raise SystemExit(f"TRL is not installed for {python}: run `bash bench/setup.sh` (it makes bench/.venv; "
                             f"on a GPU machine bench/gpu_check.sh installs it from .whl/)")
        if args.in_process:  # imports are neither engine's work: done once, before any clock starts
            import datasets  # noqa: F401
            import trl  # noqa: F401

            import matplotlib

            matplotlib.use("Agg")  # as prefloop's loss plots do
            import matplotlib.pyplot  # noqa: F401
            import prefloop.train.run  # noqa: F401
            import prefloop.train.trainer  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        (main_scaling if args.scaling else main_compare)(args, Path(tmp), python)


if __name__ == "__main__":
    main()
