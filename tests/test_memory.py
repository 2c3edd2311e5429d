"""`gradient_checkpointing: auto` (train/memory.py): the layer count follows the budget, only the chosen
layers recompute, and gradients equal the computation without checkpointing."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

import prefloop
from prefloop.testing import build_tiny_model
from prefloop.train.collate import collate_pairs
from prefloop.train.dataset import PairCollator
from prefloop.train.logps import pair_logps
from prefloop.train.memory import (GB, _probe, auto_checkpointing, checkpoint_layers, measure_footprint,
                                   plan_checkpointing, predicted_bytes, static_bytes)


def _pair(p, c, r, base=10):
    return {"prompt_ids": list(range(base, base + p)), "chosen_ids": list(range(base + 100, base + 100 + c)),
            "rejected_ids": list(range(base + 200, base + 200 + r))}


PAIRS = [_pair(40, 12, 20), _pair(10, 30, 5, base=20), _pair(25, 8, 35, base=30), _pair(6, 16, 16, base=40)]
LAYERS = 4


def _lora_model(tokenizer):
    model = build_tiny_model(tokenizer, arch="llama", num_layers=LAYERS)
    model.config._attn_implementation = "sdpa"
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(model, config)


def _collator():
    return PairCollator("packed_prefix_shared", 0, 1 << 20)


def test_the_footprint_grows_with_tokens_per_layer_and_outside(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    small, large = _collator()(PAIRS[:1]), _collator()(PAIRS)
    fp = measure_footprint(model, small, large, chunk_size=16)
    assert fp.num_layers == LAYERS and fp.layer_per_token > 0 and fp.rest_per_token > 0
    # A layer saves much more than its input hidden state (attention, MLP, norms): checkpointing pays.
    assert fp.layer_per_token > 4 * fp.layer_input
    assert fp.layer_input == model.get_input_embeddings().weight.shape[1] * 4  # fp32 residual stream
    # The line fitted to the first layer (the others checkpointed during the probe) reproduces what every
    # layer saves without checkpointing; the first also owns what all layers share (counted once, e.g. the
    # rotary tables), so it may be slightly above the mean, never below.
    measured = _probe(model, large, 16, None)
    tokens = large["input_ids"].numel()
    per_layer = sum(measured[i] for i in range(LAYERS)) / LAYERS
    assert 0 <= fp.layer(tokens) - per_layer <= 0.05 * per_layer
    vocab = model.get_output_embeddings().weight.shape[0]
    assert fp.head_chunk == 2 * 16 * vocab * 4
    # The head sees response tokens only: a batch with fewer than chunk_size of them has a smaller chunk.
    assert measure_footprint(model, small, large, chunk_size=16, head_rows=5).head_chunk == 2 * 5 * vocab * 4


def test_the_probe_leaves_no_graph_alive(tiny_tokenizer):
    """The probe's forward is never backwarded: its graph (all the activations) must be freed with it. A
    pack hook returning the saved tensor itself made an uncollectable cycle (6-8 GB kept for the whole run
    of a 0.5B model on a GPU)."""
    import gc

    def graph_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o) and o.grad_fn is not None)

    model = _lora_model(tiny_tokenizer)
    before = graph_tensors()
    measure_footprint(model, _collator()(PAIRS[:1]), _collator()(PAIRS), chunk_size=16)
    assert graph_tensors() == before
    assert not any(getattr(layer, "gradient_checkpointing", False) for layer in model.base_model.model.model.layers)


def test_the_layer_count_follows_the_budget(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    fp = measure_footprint(model, _collator()(PAIRS[:1]), _collator()(PAIRS[:2]), chunk_size=16)
    static, tokens = static_bytes(model, torch.device("cpu")), 5000
    peaks = [predicted_bytes(fp, static, tokens, k) for k in range(LAYERS + 1)]
    assert all(a > b for a, b in zip(peaks, peaks[1:-1]))  # each more checkpointed layer saves memory ...
    assert peaks[-1] > peaks[-2]  # ... except the last: with every layer checkpointed one is recomputed on top
    assert plan_checkpointing(fp, static, tokens, budget=100 * GB).layers == 0  # it fits: no recomputation
    for k in range(1, LAYERS):
        plan = plan_checkpointing(fp, static, tokens, budget=peaks[k])
        assert plan.fits and plan.layers == k and plan.predicted_bytes <= peaks[k]
        if k < LAYERS - 1:
            assert plan_checkpointing(fp, static, tokens, budget=peaks[k] - 1).layers == k + 1
    too_small = plan_checkpointing(fp, static, tokens, budget=peaks[LAYERS - 1] - 1)
    assert not too_small.fits and too_small.layers == LAYERS - 1 and "does NOT fit" in too_small.describe()


def test_only_the_chosen_layers_stop_saving_activations(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    batch = _collator()(PAIRS)
    full = _probe(model, batch, 16, None)
    checkpoint_layers(model, 2)
    partial = _probe(model, batch, 16, None)
    assert all(partial.get(i, 0) < full[i] / 10 for i in (0, 1))  # checkpointed: (almost) nothing kept
    # The others keep everything (no recomputation); layer 2 may now own its input hidden state, which
    # layer 1 no longer saves.
    hidden_state = batch["input_ids"].numel() * model.get_input_embeddings().weight.shape[1] * 4
    assert abs(partial[2] - full[2]) <= hidden_state and partial[3] == full[3]


@pytest.mark.parametrize("count", [1, LAYERS])
def test_gradients_equal_the_computation_without_checkpointing(tiny_tokenizer, count):
    model = _lora_model(tiny_tokenizer)
    batch = collate_pairs(PAIRS, "packed_prefix_shared", 0, row_tokens=1 << 20)
    grads = []
    for layers in (0, count):
        checkpoint_layers(model, layers)
        model.train()
        model.zero_grad(set_to_none=True)
        out = pair_logps(model, batch, chunk_size=16)
        (out.seq.chosen - out.seq.rejected).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, expected in plain.items():
        error = (checkpointed[name] - expected).abs().max() / expected.abs().max().clamp(min=1e-12)
        assert error < 1e-6, f"{name}: {error:.1e}"


def test_auto_checkpointing_with_a_budget(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    roomy = auto_checkpointing(model, PAIRS, _collator(), batch_size=4, chunk_size=16, budget_gb=1000)
    assert roomy.layers == 0 and "no layer checkpointed" in roomy.describe()
    tight_gb = (static_bytes(model, torch.device("cpu")) + 1) / GB
    tight = auto_checkpointing(model, PAIRS, _collator(), batch_size=4, chunk_size=16, budget_gb=tight_gb)
    assert tight.layers == LAYERS - 1 and not tight.fits
    layers = model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True] * (LAYERS - 1) + [False]


def test_training_with_gradient_checkpointing_auto(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i}?",
                                        "chosen": f"It is {2 * i}.", "rejected": "no"}) + "\n" for i in range(8)))
    common = dict(model_name_or_path=str(tiny_model_dir), dataset=str(data), finetuning_type="lora", template="qwen",
                  max_steps=1, per_device_train_batch_size=4, report_to="none", sample_prompts=0,
                  save_strategy="no", gradient_checkpointing="auto")
    prefloop.train(dict(common, output_dir=str(tmp_path / "a"), max_memory_gb=1000))
    assert "Gradient checkpointing (auto): no layer checkpointed" in capsys.readouterr().out
    prefloop.train(dict(common, output_dir=str(tmp_path / "b"), max_memory_gb=0.000001))
    assert "decoder layers checkpointed" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared", "packed_prefix_shared"])
def test_auto_checkpointing_in_every_layout_even_when_pairs_collate_to_one_size(tiny_tokenizer, layout):
    """The probes are the shortest and the longest pair as collated: padded rows are 2 x max(p+c, p+r) and
    packed ones 2p+c+r, so pairs of different p+c+r can collate to one size (then: one pair and two)."""
    same_size = [_pair(5, 10, 1), _pair(5, 10, 10, base=20), _pair(5, 10, 5, base=30)]  # padded: all 30 tokens
    packed_twins = [_pair(1, 10, 10), _pair(3, 8, 8, base=20)]  # packed: 2p+c+r = 22 for both
    for pairs in (same_size, packed_twins, PAIRS):
        model = _lora_model(tiny_tokenizer)
        collator = PairCollator(layout, 0, 1 << 20 if "packed" in layout else None)
        plan = auto_checkpointing(model, pairs, collator, batch_size=2, chunk_size=16, budget_gb=1000)
        assert plan.layers == 0 and plan.fits


def test_a_plan_without_checkpointing_leaves_no_input_gradient_hook(tiny_tokenizer):
    """The probe checkpoints layers (with the input-gradient hook a LoRA model needs then); a plan of 0
    layers must not leave that hook on, or every step computes the frozen first layer's input gradients."""
    model = _lora_model(tiny_tokenizer)
    batch = _collator()(PAIRS[:1])
    embeddings = model.get_input_embeddings()
    assert not embeddings(batch["input_ids"]).requires_grad
    assert auto_checkpointing(model, PAIRS, _collator(), batch_size=4, chunk_size=16, budget_gb=1000).layers == 0
    assert not embeddings(batch["input_ids"]).requires_grad
    tight_gb = (static_bytes(model, torch.device("cpu")) + 1) / GB
    assert auto_checkpointing(model, PAIRS, _collator(), batch_size=4, chunk_size=16, budget_gb=tight_gb).layers > 0
    assert embeddings(batch["input_ids"]).requires_grad  # checkpointed layers need it


def _allocations(fn) -> list[tuple[int, int]]:
    """(time ns, bytes: + allocated / - freed) of every CPU allocator event while `fn` ran, in time order
    (the profiler's memory events; on the CPU nothing is cached, so their running sum is what is live)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    return sorted(events, key=lambda event: event[0])  # stable: events of one nanosecond keep their order


def _peak_bytes(fn) -> int:
    """Most bytes live at once while `fn` ran, above what was live before."""
    live = peak = 0
    for _, nbytes in _allocations(fn):
        live += nbytes
        peak = max(peak, live)
    return peak


def _random_pair(p, c, r, seed):
    import random

    rnd = random.Random(seed)
    return {key: [rnd.randrange(10, 500) for _ in range(n)]
            for key, n in (("prompt_ids", p), ("chosen_ids", c), ("rejected_ids", r))}


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_predicted_peak_bounds_a_real_step_from_above(tiny_tokenizer, autocast_dtype):
    """The plan's prediction against the real peak of a training step's forward and backward (measured
    with the allocator's own events on the CPU, where nothing is cached) for 0, some and all layers
    checkpointed: never below it (the budget holds), and not so far above that the planner checkpoints
    layers a run does not need to."""
    torch.manual_seed(0)
    base = build_tiny_model(tiny_tokenizer, arch="llama", num_layers=LAYERS, hidden_size=256, intermediate_size=512)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                            init_lora_weights=False))
    model.train()
    pairs = [_random_pair(200, 120, 150, 1), _random_pair(100, 300, 50, 2), _random_pair(250, 80, 300, 3),
             _random_pair(60, 160, 160, 4)]
    batch = _collator()(pairs)
    footprint = measure_footprint(model, _collator()(pairs[3:]), _collator()(pairs[:1]), chunk_size=256,
                                  autocast_dtype=autocast_dtype,
                                  head_rows=sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs))

    _assert_prediction_bounds_each_plan(model, batch, footprint, batch["input_ids"].numel(), autocast_dtype)


def _assert_prediction_bounds_each_plan(model, batch, footprint, tokens, autocast_dtype=None):
    """For 0, 2 and all layers checkpointed: the real peak of one step's forward and backward on `batch` is at
    most the prediction for `tokens` decoder tokens, and the prediction at most 1.75x it."""
    def step():
        out = pair_logps(model, batch, chunk_size=256, autocast_dtype=autocast_dtype)
        (out.seq.chosen - out.seq.rejected).sum().backward()

    # oneDNN's bf16 matmul backward takes ~0.7 MB of scratch per thread, which the prediction does not count
    # (64 threads: 43 MB, more than this tiny model's slack); fixed threads keep the test about the plan
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        for layers in (0, 2, LAYERS):
            checkpoint_layers(model, layers)
            step()  # the gradients exist from here on, as in every step after the first
            measured = _peak_bytes(step)
            predicted = predicted_bytes(footprint, 0.0, tokens, layers)
            assert measured <= predicted <= 1.75 * measured, (layers, measured, predicted)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("precision,budget_gb", [("fp32", 1e-6), ("bf16", 1000.0)])
def test_a_whole_run_stays_under_its_predicted_peak(tmp_path, monkeypatch, capsys, precision, budget_gb):
    """`prefloop.train` with gradient_checkpointing: auto, from the config to the saved adapter: no moment
    of the run (reference pass, the planner's own probe, every training step, logging, saving) has more
    tensor memory live beyond the weights than the plan predicted. (At this size a leak as small as the
    probe's own graph stays inside the prediction's slack: `test_the_probe_leaves_no_graph_alive` is the
    test for that.)"""
    import random

    import prefloop.train.memory as memory
    from prefloop.testing import save_tiny_model

    layers = 12  # a plan of 11 checkpointed layers is far below one of none
    model_dir = save_tiny_model(tmp_path / "model", arch="llama", num_layers=layers, hidden_size=128,
                                intermediate_size=256)
    rnd = random.Random(0)
    words = "the cat sat on a mat and then it ran to see what was there in the big red house".split()
    text = lambda n: " ".join(rnd.choice(words) for _ in range(n))  # noqa: E731
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": text(rnd.randint(20, 150)), "chosen": text(rnd.randint(10, 120)),
                                        "rejected": text(rnd.randint(10, 120))}) + "\n" for _ in range(16)))
    planned = {}

    marker = 7_777_777  # bytes: an allocation of this size marks the plan in the allocator's own events

    def plan_and_note(footprint, static, tokens, budget):
        plan = plan_checkpointing(footprint, static, tokens, budget)
        planned.update(plan=plan, static=static)
        torch.empty(marker, dtype=torch.uint8)  # allocated and freed at once
        return plan

    def static_and_note(model, device):
        planned["optimizer"] = sum(p.numel() * (p.element_size() + 8) for p in model.parameters() if p.requires_grad)
        return static_bytes(model, device)

    monkeypatch.setattr(memory, "plan_checkpointing", plan_and_note)
    monkeypatch.setattr(memory, "static_bytes", static_and_note)
    config = dict(model_name_or_path=str(model_dir), dataset=str(data), finetuning_type="lora", template="qwen",
                  per_device_train_batch_size=8, num_train_epochs=2, logging_steps=1, report_to="none",
                  sample_prompts=0, gradient_checkpointing="auto", max_memory_gb=budget_gb,
                  bf16=precision == "bf16", output_dir=str(tmp_path / "out"))
    events = _allocations(lambda: prefloop.train(config))
    plan = planned["plan"]
    assert plan.layers == (layers - 1 if budget_gb < 1 else 0), capsys.readouterr().out
    assert sum(1 for _, nbytes in events if nbytes == marker) == 1
    live, at_plan, peak = 0, None, 0
    for _, nbytes in events:
        if abs(nbytes) == marker:
            at_plan = live  # the weights (and the cached reference log-probs), before any step
            continue
        live += nbytes
        peak = max(peak, live)
    # The static part of the prediction is what was in use at the plan (on a CPU: resident memory, with
    # the libraries) plus the gradients and optimizer states, which the run allocates after the plan.
    predicted = plan.predicted_bytes - planned["static"] + planned["optimizer"]
    measured = peak - at_plan
    assert measured <= predicted <= 2 * measured, (measured, predicted)


def test_the_predicted_peak_bounds_a_sliding_window_fallback_step(tiny_tokenizer, monkeypatch):
    """A sliding-window model (Mistral) whose long sequence is past the window: the packed / prefix-shared
    batch runs as padded sequences (`_sequence_by_sequence`: sequences x the longest one, the prompt once per
    answer), far more tokens than the packed row. The plan counts that layout (and probes it: the short probe
    pair alone would take the packed path); it planned with the packed row's size, 2-3x too low here."""
    import prefloop.train.memory as memory
    from transformers import MistralConfig, MistralForCausalLM

    from prefloop.train.logps import decoder_tokens, window_binds

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=512,
                           num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, sliding_window=64,
                           pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=None,
                           eos_token_id=tiny_tokenizer.eos_token_id)
    base = MistralForCausalLM(config)
    base.config._attn_implementation = "sdpa"
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                            init_lora_weights=False))
    model.train()
    pairs = [_random_pair(20, 300, 10, 1)] + [_random_pair(20, 20, 20, seed) for seed in (2, 3, 4)]
    batch = _collator()(pairs)
    assert window_binds(model, batch) and not window_binds(model, _collator()(pairs[1:2]))
    assert decoder_tokens(model, batch) == 8 * 320 > 3 * batch["input_ids"].numel()
    planned = {}

    def plan_and_note(footprint, static, tokens, budget):
        planned.update(footprint=footprint, tokens=tokens)
        return plan_checkpointing(footprint, static, tokens, budget)

    monkeypatch.setattr(memory, "plan_checkpointing", plan_and_note)
    auto_checkpointing(model, pairs, _collator(), batch_size=4, chunk_size=256, budget_gb=1000)
    assert planned["tokens"] == decoder_tokens(model, batch)

    _assert_prediction_bounds_each_plan(model, batch, planned["footprint"], planned["tokens"])
