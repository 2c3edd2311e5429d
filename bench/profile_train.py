"""Where a prefloop training run spends its time: a profile table of issue 17's workload.

    bench/.venv/bin/python bench/profile_train.py                      # 8 pairs (one step), fp32
    bench/.venv/bin/python bench/profile_train.py --precision bf16
    bench/.venv/bin/python bench/profile_train.py --prefloop-options '{"gradient_checkpointing": true}'

Runs the real trainer (`prefloop.train`, the configuration `bench_train.py` times, on the same
seeded workload: SmolLM2-135M-Instruct, LoRA r16 on all linear layers, batch 8, cutoff 1024) once
under `torch.profiler` and sorts every operator's own time (self CPU time: on a CPU the time the
calling thread spends in the operator, its intra-op threads included) into rows:

- attention: SDPA and everything under prefloop's attention function (`train/attention.py`, the
  range `prefloop::attention`: per-unit calls, the rejected-response masks, key/value copies) and
  their backward;
- decoder matmuls: the other matrix products (the projections and MLPs with their LoRA factors),
  forward, backward and checkpoint recomputation;
- head / log-probs: everything under the head's chunked log-prob computation of `train/logps.py`
  (the range `prefloop::head_logps`: head matmuls, logsumexp, gathers) and its backward;
- other decoder ops: norms, activations, RoPE, element-wise ops, copies, casts;
- optimizer: everything under `Optimizer.step` / `zero_grad`;
- data: everything under the DataLoader's `__next__` (collation, the segment plan);
- outside torch operators: wall time not spent in any operator (Python, tokenization, model
  loading, logging).

Columns split the run into the reference pre-pass (the range `prefloop::reference_pass`) and the rest
(training steps, start-up). The profiler adds overhead per operator, so the total is longer than an
unprofiled run: read the shares, not the seconds, and compare tables made the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROWS = ("attention", "decoder matmuls", "head / log-probs", "other decoder ops", "optimizer", "data",
        "outside torch operators")
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
           "aten::_mkl_linear", "mkldnn::_linear_pointwise"}
HEAD_SCOPES = ("prefloop::head_logps", "_FrozenHeadLogps", "FrozenHeadLogpsBackward", "IndexAddBackward")


def _ancestors(event):
    while event is not None:
        yield event
        event = event.cpu_parent


def _row(event) -> str:
    names = [e.name for e in _ancestors(event)]
    if any(n.startswith("Optimizer.") for n in names):
        return "optimizer"
    if any("DataLoader" in n for n in names):
        return "data"
    if any(n == "prefloop::attention" or "scaled_dot_product" in n.lower() or "ScaledDotProduct" in n
           for n in names):
        return "attention"
    if any(h in n for n in names for h in HEAD_SCOPES):
        return "head / log-probs"
    return "decoder matmuls" if event.name in MATMULS else "other decoder ops"


def profile_run(config: dict) -> tuple[dict, float, dict]:
    """{(row, phase): seconds} of one `prefloop.train(config)` under the profiler, its wall time, and
    {(row, operator): seconds}."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import prefloop

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        prefloop.train(config)
    wall = time.perf_counter() - started
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        phase = "reference pre-pass" if any(e.name == "prefloop::reference_pass" for e in _ancestors(event)) \
            else "training and start-up"
        # a range's own time is Python between its operators: attention's loop, the optimizer's, collation
        row = "outside torch operators" if event.name == "prefloop::reference_pass" else _row(event)
        seconds[(row, phase)] += event.self_cpu_time_total / 1e6
        by_op[(row, event.name)] += event.self_cpu_time_total / 1e6
    counted = sum(seconds.values())
    seconds[("outside torch operators", "training and start-up")] += max(0.0, wall - counted)
    return dict(seconds), wall, dict(by_op)


def top_operators(by_op: dict, count: int) -> str:
    """The `count` operators with the most own time in each row."""
    lines = []
    for row in ROWS:
        ops = sorted(((v, op) for (r, op), v in by_op.items() if r == row), reverse=True)[:count]
        if ops:
            lines.append(f"- {row}: " + ", ".join(f"{op} {v:.1f} s" for v, op in ops))
    return "\n".join(lines)


def table(seconds: dict, wall: float, title: str) -> str:
    phases = ("reference pre-pass", "training and start-up")
    lines = [f"### {title}", "", "| where | reference pre-pass s | training and start-up s | total s | share |",
             "|---|---|---|---|---|"]
    for row in ROWS:
        values = [seconds.get((row, p), 0.0) for p in phases]
        lines.append(f"| {row} | {values[0]:.1f} | {values[1]:.1f} | {sum(values):.1f} | "
                     f"{100 * sum(values) / wall:.1f}% |")
    lines.append(f"| **whole run (profiled)** | | | {wall:.1f} | 100% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(HERE.parent / "models" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--pairs", type=int, default=8, help="8 = one step of batch 8 (the profiler keeps "
                        "every event in memory: a long run needs many GB)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cutoff", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--prefloop-options", default='{"packing": true, "prefix_sharing": true, '
                        '"logps_chunk_size": 1024}', help="JSON of prefloop config keys (as bench_train.py)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--top", type=int, default=6, help="list the N operators with most own time per row")
    parser.add_argument("--out", help="also write the table to this file (and the raw numbers to .json)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from bench_train import _prefloop_config, prepare_model_dir, write_workload
    from workload import Lengths

    with tempfile.TemporaryDirectory(prefix="profile-train-") as tmp:
        work = Path(tmp)
        model_dir = prepare_model_dir(args.model, args.model, work)
        data_file, _ = write_workload(model_dir, args.pairs, args.seed, work, Lengths(), args.cutoff)
        spec = {"model_dir": model_dir, "data_file": data_file, "cutoff": args.cutoff, "batch": args.batch,
                "lr": 5e-5, "seed": args.seed, "precision": args.precision,
                "prefloop": json.loads(args.prefloop_options)}
        seconds, wall, by_op = profile_run(_prefloop_config(spec, str(work / "out")))
    title = args.title or (f"prefloop, {args.precision}, {args.pairs} pairs, batch {args.batch}, "
                           f"options {args.prefloop_options}")
    text = table(seconds, wall, title)
    if args.top:
        text += "\n\nOperators with the most own time per row:\n" + top_operators(by_op, args.top)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"wall_s": wall, "seconds": {f"{r}|{p}": v for (r, p), v in seconds.items()}}, indent=1))


if __name__ == "__main__":
    main()
