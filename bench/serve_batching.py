"""How much `prefloop serve`'s request batching buys: concurrent clients against the generation engine.

Runs the same set of concurrent requests through `GenerationEngine` with different batch limits
(`--max-batch-rows`; 1 = one request at a time, what a server without batching does) and prints a
table of wall time, generated tokens per second and request latency.

    python bench/serve_batching.py                       # tiny random model (seconds, CPU)
    python bench/serve_batching.py --model PATH          # a real model directory
    python bench/serve_batching.py --hidden 1024 --layers 8   # a bigger random model (GPU)

Every request decodes exactly --max-tokens tokens (end-of-turn is masked out by using a random
model, or by a real model that rarely stops that early), so runs compare like for like.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time


def build_model(args):
    import torch

    from prefloop.sampling import LocalGenerator
    from prefloop.testing import build_tiny_model, build_tiny_tokenizer

    if args.model:
        return LocalGenerator.load(args.model)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=args.hidden, num_layers=args.layers,
                             intermediate_size=args.hidden * 4, num_heads=max(4, args.hidden // 64),
                             num_kv_heads=max(2, args.hidden // 256))
    if torch.cuda.is_available():
        model = model.to("cuda", torch.bfloat16)
    return LocalGenerator(model, tokenizer)


def run_once(generator, batch_rows: int, requests: int, max_tokens: int) -> dict:
    from prefloop.sampling import SamplingParams
    from prefloop.serve.engine import GenerationEngine

    engine = GenerationEngine(generator, max_batch_rows=batch_rows)
    generator.stop_ids = set()  # decode the full budget every time, so every run does the same work
    prompts = [generator.encode_chat([{"role": "user", "content": f"Question {i}: tell me about the sun."}])
               for i in range(requests)]
    latencies, tokens = [], []

    def client(i):
        start = time.perf_counter()
        samples = engine.submit([(prompts[i], SamplingParams(max_tokens, temperature=0.8, seed=i))]).result()
        latencies.append(time.perf_counter() - start)
        tokens.append(len(samples[0].token_ids))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    engine.close()
    latencies.sort()
    return {"rows": batch_rows, "wall": wall, "tok_s": sum(tokens) / wall, "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))], "batches": engine.batches_run}


def check_batched_equals_alone(generator, count: int = 8, max_tokens: int = 16) -> str:
    """Greedy outputs decoded in one left-padded batch vs each prompt alone (bf16 may differ in a few tokens)."""
    from prefloop.sampling import SamplingParams

    prompts = [generator.encode_chat([{"role": "user", "content": "word " * (3 * i + 1)}]) for i in range(count)]
    params = SamplingParams(max_tokens, temperature=0)
    batched = generator.generate([(p, params) for p in prompts])
    alone = [generator.generate([(p, params)])[0] for p in prompts]
    same = sum(b.token_ids == a.token_ids for b, a in zip(batched, alone))
    return f"greedy batched == alone: {same}/{count} prompts identical"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a random tiny model)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-rows", default="1,4,16")
    parser.add_argument("--profile", action="store_true", help="print where the largest batch's time goes")
    parser.add_argument("--attn", default=None, help="attention implementation to switch to (e.g. eager, sdpa)")
    args = parser.parse_args()
    import torch

    generator = build_model(args)
    if args.attn:
        generator.model.set_attn_implementation(args.attn)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    params = sum(p.numel() for p in generator.model.parameters())
    run_once(generator, 4, 4, 4)  # warm-up
    print(check_batched_equals_alone(generator))
    attn = generator.model.config._attn_implementation
    print(f"device: {device}; prompt attention: {attn}, decode steps: eager; "
          f"model: {args.model or 'random'} ({params / 1e6:.1f}M parameters); "
          f"{args.requests} concurrent requests x {args.max_tokens} tokens")
    print(f"{'max batch rows':>14} | {'batches':>7} | {'wall s':>7} | {'tokens/s':>9} | {'p50 s':>6} | {'p95 s':>6}")
    for rows in (int(r) for r in args.batch_rows.split(",")):
        r = run_once(generator, rows, args.requests, args.max_tokens)
        print(f"{r['rows']:>14} | {r['batches']:>7} | {r['wall']:>7.2f} | {r['tok_s']:>9.1f} | {r['p50']:>6.2f} | "
              f"{r['p95']:>6.2f}")
    if args.profile:
        import cProfile
        import pstats

        from prefloop.sampling import SamplingParams

        prompts = [generator.encode_chat([{"role": "user", "content": f"Question {i}"}]) for i in range(args.requests)]
        profiler = cProfile.Profile()
        profiler.runcall(generator.generate, [(p, SamplingParams(args.max_tokens, 0.8, seed=1)) for p in prompts])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
