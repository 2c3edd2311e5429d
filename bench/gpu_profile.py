"""Where a prefloop run's time goes on a GPU: busy vs idle, and the kernels and operators that cost most.

    python3 bench/gpu_profile.py --tokenizer bench/assets/smollm2-tokenizer            # on a GPU machine
    python3 bench/gpu_profile.py --device cpu --model random:small --pairs 8 --lengths short   # dry run

Runs the real trainer (`prefloop.train`, bench_train.py's configuration and seeded workload) once to
warm up (its `Time:` line splits the run into stages), then once more under `torch.profiler` with CPU
and CUDA activity, and prints: the run's wall time, the summed time of all GPU kernels (so the share of
the run the GPU was busy: a low share means the run is bound by Python / kernel launches / host work,
not by the GPU), and the operators with the most GPU time and the most CPU time of their own. The
profiler slows the host side down, so read shares and rankings, not seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:qwen2-0.5b")
    parser.add_argument("--tokenizer", default=str(bench_train.DEFAULT_MODEL))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--finetuning", default="lora", choices=["lora", "full"])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--lengths", choices=["short", "full"], default="full")
    parser.add_argument("--prefloop-options", default='{"packing": true, "prefix_sharing": true, '
                        '"logps_chunk_size": 1024, "gradient_checkpointing": "auto"}')
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import prefloop

    with tempfile.TemporaryDirectory(prefix="gpu-profile-") as tmp:
        work = Path(tmp)
        model_dir = bench_train.prepare_model_dir(args.model, args.tokenizer, work)
        data_file, _ = bench_train.write_workload(model_dir, args.pairs, 42, work, bench_train.LENGTHS[args.lengths],
                                                  1024)
        spec = {"model_dir": model_dir, "data_file": data_file, "cutoff": 1024, "finetuning": args.finetuning,
                "batch": args.batch, "lr": 5e-5, "seed": 42, "precision": args.precision,
                "prefloop": json.loads(args.prefloop_options)}

        def run(tag: str) -> tuple[float, dict, str]:
            out_dir = work / tag
            kept = io.StringIO()
            started = time.perf_counter()
            with contextlib.redirect_stdout(kept):
                metrics = prefloop.train(bench_train._prefloop_config(spec, str(out_dir)))
            if args.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started, metrics, kept.getvalue()

        wall, metrics, said = run("warm")
        notes = [line for line in said.splitlines() if line.startswith(bench_train.NOTE_PREFIXES)]
        print(f"# prefloop profile: {args.model}, {args.finetuning}, {args.precision}, {args.pairs} pairs, batch "
              f"{args.batch}, {args.device}")
        print(f"warm-up run (unprofiled): {wall:.2f} s whole run, {metrics.get('train_runtime', float('nan')):.2f} s "
              f"training loop")
        print("\n".join(notes))
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities) as prof:
            wall, metrics, _ = run("profiled")
        events = prof.key_averages()
        # GPU kernels only (as torch's own table total): not the CPU operators that launched them, not the
        # `prefloop::` ranges around them, which would count the same kernel time again.
        device_us = sum(e.self_device_time_total for e in events
                        if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False))
        print(f"\nprofiled run: {wall:.2f} s whole run, {metrics.get('train_runtime', float('nan')):.2f} s training "
              f"loop; GPU kernels {device_us / 1e6:.2f} s in all = {100 * device_us / 1e6 / wall:.0f}% of the "
              f"whole run, {100 * device_us / 1e6 / max(metrics.get('train_runtime', wall), 1e-9):.0f}% of the "
              f"loop's length")
        if args.device == "cuda":
            print("\nOperators by their own GPU time:")
            print(events.table(sort_by="self_device_time_total", row_limit=args.top, max_name_column_width=60))
        print("\nOperators by their own CPU time:")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
