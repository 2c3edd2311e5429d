"""Memory as a budget: `gradient_checkpointing: auto` checkpoints only the decoder layers the budget needs.

Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") keeps only
a layer's input for backward and recomputes the layer there: about a third more decoder compute for
each checkpointed layer. TRL checkpoints every layer by default; a run that fits without it should
not pay that. Here the footprint is measured, not guessed:

1. `measure_footprint` runs the real forward (`logps.pair_logps`, the run's layout, attention backend
   and precision) on two small probe batches (the shortest pair and the longest) and counts the bytes
   autograd saves for backward (`torch.autograd.graph.saved_tensors_hooks`) in the first decoder
   layer and outside the layers, each storage once, parameters excluded. The other layers (the same
   block) are checkpointed during the probe, so the probe itself holds one layer's activations, not
   N: it must fit in the budget it plans for. A straight line through the two probes per token count
   gives bytes = fixed + per_token * tokens (the fixed part: e.g. bf16 copies of the weights under
   autocast). Tokens are those the decoder runs (`logps.decoder_tokens`): a packed / prefix-shared batch
   with a sequence longer than a sliding window runs as padded sequences (`logps._sequence_by_sequence`),
   sequences x the longest one, and both probes take the largest batch's path.
2. `plan_checkpointing` predicts the peak at the run's largest batch (`largest_batch`: the `batch_size`
   pairs with the most tokens in the run's layout, or with the longest sequences where those cost more)
   for k checkpointed layers:
       static + rest + (N - k) * layer + k * layer_input + working + (layer if k == N else 0)
   static = the memory in use now (CUDA: allocated; CPU: resident) + gradients and AdamW's two fp32
   states of the trainable weights; layer_input = the hidden state a checkpointed layer keeps;
   working = what backward holds beside the saved activations while it runs through a layer (about one
   layer's activations as gradients) plus one chunk of fp32 logits of the head (rows x vocab, twice:
   logits and logsumexp's temporary, for the fused frozen head; 5.25 times for a trainable head, whose
   checkpointed chunk recomputes its logits in backward; rows = `chunk_size` or the response tokens of
   the batch with the most, whichever is smaller: the head sees response tokens only). The first k layers are the
   checkpointed ones: backward recomputes them last, after the later layers' activations are freed, so
   the recomputed layer adds to the peak only when every layer is checkpointed (the last term), so
   N - 1 layers usually need less than N.
   k is the smallest count that fits the budget (`max_memory_gb`; default: 90% of the device's memory,
   for the allocator's slack and the CUDA context), 0 when everything fits, the count with the lowest
   predicted peak (and a warning) when none fits.
3. `checkpoint_layers` switches checkpointing on for the first k layers only.

The prediction is linear in tokens, which holds for the packed / prefix-shared layouts with segment or
flex attention (attention saves O(tokens)); with an explicit [L, L] mask (sdpa_mask, eager) the mask's
memory is not per token and the plan can be optimistic. Under FSDP / DeepSpeed (sharded weights) the
trainer does not measure and checkpoints every layer (`run.plan_memory`). Tested in tests/test_memory.py,
also against the allocator's real peak on the CPU (a step, and a whole run): the prediction comes out
1.2-1.55x a step's measured peak (backward's working memory is closer to a quarter or half of a layer
than a whole one), which on a GPU leaves room for the caching allocator's fragmentation.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prefloop.train.logps import decoder_and_head, decoder_tokens, fused_head, logit_softcap, pair_logps, window_binds

GB = 1e9
DEFAULT_BUDGET_SHARE = 0.9


@dataclass(frozen=True)
class Footprint:
    """Bytes saved for backward as fixed + per_token * tokens: one decoder layer (`layer_*`, the mean
    over layers) and everything outside the layers (`rest_*`: embeddings, final norm, head, loss);
    `layer_input` bytes per token: what a checkpointed layer keeps (its input hidden state)."""

    layer_fixed: float
    layer_per_token: float
    rest_fixed: float
    rest_per_token: float
    layer_input: float
    num_layers: int
    head_chunk: float = 0.0  # bytes of the head's working memory for one chunk of logits (measure_footprint)

    def layer(self, tokens: int) -> float:
        return self.layer_fixed + self.layer_per_token * tokens

    def rest(self, tokens: int) -> float:
        return self.rest_fixed + self.rest_per_token * tokens


@dataclass(frozen=True)
class CheckpointPlan:
    """How many of the `num_layers` decoder layers to checkpoint, and the predicted peak in bytes."""

    layers: int
    num_layers: int
    tokens: int  # tokens of the largest batch
    predicted_bytes: float
    budget_bytes: float
    fits: bool

    def describe(self) -> str:
        what = ("no layer checkpointed (the run fits without recomputation)" if self.layers == 0 else
                f"{self.layers} of {self.num_layers} decoder layers checkpointed")
        line = (f"Gradient checkpointing (auto): {what}; predicted peak {self.predicted_bytes / GB:.2f} GB for the "
                f"largest batch ({self.tokens:,} tokens), budget {self.budget_bytes / GB:.2f} GB")
        if not self.fits:
            line += ("; it does NOT fit with any number of checkpointed layers: lower per_device_train_batch_size "
                     "or cutoff_len, or raise max_memory_gb")
        return line


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a transformers causal LM (peft-wrapped or not)."""
    decoder, _ = decoder_and_head(model)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise TypeError(f"{type(decoder).__name__} has no `layers`; gradient_checkpointing: auto needs a decoder "
                        f"with a list of layers (use true or false)")
    return layers


def device_memory_bytes(device: torch.device) -> float:
    """All memory of `device`: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resident_bytes() -> float:
    """This process's resident memory now (Linux `/proc/self/statm`; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as fh:
            return float(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return 0.0


def static_bytes(model, device: torch.device) -> float:
    """Memory that does not depend on the batch: what is in use now plus gradients and AdamW's exp_avg /
    exp_avg_sq (fp32) of the trainable weights. In use now: CUDA: allocated tensors; CPU: the process's
    resident memory (weights, libraries, tokenized data, the allocator's pool: what a machine's memory
    and `max_memory_gb` count there), at least the weights."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = sum(p.numel() * (p.element_size() + 8) for p in trainable)
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device) + optimizer)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return float(max(resident_bytes(), weights) + optimizer)


@contextmanager
def _count_saved(model, totals: dict):
    """Count bytes saved for backward into totals[layer index] / totals["rest"], each storage once."""
    layers = decoder_layers(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    current = ["rest"]

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen and storage.nbytes():
            seen.add(ptr)
            totals[current[0]] = totals.get(current[0], 0) + storage.nbytes()
        # Not `t` itself: a saved output that packs to itself makes a tensor -> grad_fn -> packed tensor
        # cycle through C++ that Python's gc cannot see, and the probe's whole graph (GBs of activations
        # on a GPU) would stay alive for the rest of the process. A detached alias holds the same storage.
        return t.detach()

    def enter(index):
        return lambda *_: current.__setitem__(0, index)

    handles = [layer.register_forward_pre_hook(enter(i)) for i, layer in enumerate(layers)]
    handles += [layer.register_forward_hook(lambda *_: current.__setitem__(0, "rest")) for layer in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _probe(model, batch: dict, chunk_size: int, autocast_dtype, by_sequence: bool | None = None) -> dict:
    totals: dict = {}
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad(), _count_saved(model, totals):
            out = pair_logps(model, batch, chunk_size=chunk_size, autocast_dtype=autocast_dtype,
                             by_sequence=by_sequence)
        del out
    finally:
        model.train(was_training)
    return totals


def measure_footprint(model, small: dict, large: dict, chunk_size: int, autocast_dtype=None,
                      head_rows: int | None = None, by_sequence: bool | None = None) -> Footprint:
    """The saved-for-backward footprint from two probe batches (`collate_pairs` output on the model's
    device) with different token counts; see the module docstring. `head_rows`: the most response
    tokens a training batch has (the head's largest chunk is min(chunk_size, head_rows) rows; default
    chunk_size). `by_sequence`: the path both probes take through a sliding window (`pair_logps`; None:
    each its own); tokens are the decoder's (`decoder_tokens`). Raises ValueError when the probes have the
    same number of tokens."""
    sizes = [decoder_tokens(model, b, by_sequence) for b in (small, large)]
    if sizes[0] == sizes[1]:
        raise ValueError("the two probe batches need different token counts")
    num_layers = len(decoder_layers(model))
    # Only the first layer keeps its activations during the probe (the others are the same block):
    # the probe's own memory is one layer's, not N layers'.
    _checkpoint_only(model, set(range(1, num_layers)))
    try:
        counts = [_probe(model, b, chunk_size, autocast_dtype, by_sequence) for b in (small, large)]
    finally:
        _checkpoint_only(model, set())
    per_layer = [c.get(0, 0) for c in counts]
    rest = [c.get("rest", 0) for c in counts]

    def line(values):
        slope = (values[1] - values[0]) / (sizes[1] - sizes[0])
        return max(values[0] - slope * sizes[0], 0.0), max(slope, 0.0)

    layer_fixed, layer_per_token = line(per_layer)
    rest_fixed, rest_per_token = line(rest)
    embeddings = model.get_input_embeddings().weight  # the residual stream keeps the weights' dtype under autocast
    hidden_bytes = embeddings.shape[1] * embeddings.element_size()
    _, head = decoder_and_head(model)
    rows = min(chunk_size, head_rows) if head_rows else chunk_size
    # fp32 logits of a chunk and logsumexp's temporary (the fused frozen head: measured 2.0x rows x vocab
    # x 4 bytes at its peak on the CPU allocator); a trainable head's checkpointed chunk measured 5.0x
    # (fp32) and 5.06x (bf16 autocast)
    copies = 2.0 if fused_head(head, logit_softcap(model)) else 5.25
    head_chunk = copies * rows * head.weight.shape[0] * 4
    return Footprint(layer_fixed, layer_per_token, rest_fixed, rest_per_token, float(hidden_bytes), num_layers,
                     head_chunk)


def predicted_bytes(footprint: Footprint, static: float, tokens: int, checkpointed: int) -> float:
    """Peak memory with `checkpointed` layers checkpointed (formula in the module docstring)."""
    n, layer = footprint.num_layers, footprint.layer(tokens)
    recompute = layer if checkpointed == n else 0.0  # see the module docstring
    working = layer + footprint.head_chunk
    return (static + footprint.rest(tokens) + (n - checkpointed) * layer
            + checkpointed * footprint.layer_input * tokens + working + recompute)


def plan_checkpointing(footprint: Footprint, static: float, tokens: int, budget: float) -> CheckpointPlan:
    """The fewest checkpointed layers whose predicted peak fits `budget` bytes (the lowest peak if none)."""
    n = footprint.num_layers
    peaks = [predicted_bytes(footprint, static, tokens, k) for k in range(n + 1)]
    for k, peak in enumerate(peaks):
        if peak <= budget:
            return CheckpointPlan(k, n, tokens, peak, budget, True)
    best = min(range(n + 1), key=peaks.__getitem__)  # nothing fits: the lowest peak (usually n - 1 layers)
    return CheckpointPlan(best, n, tokens, peaks[best], budget, False)


def checkpoint_layers(model, count: int) -> None:
    """Checkpoint the first `count` decoder layers (non-reentrant), none of the others."""
    _checkpoint_only(model, set(range(count)))


def _checkpoint_only(model, chosen: set[int]) -> None:
    """Checkpoint the decoder layers whose index is in `chosen` (non-reentrant), none of the others. With
    none chosen, the input-gradient hook a checkpointed LoRA model needs is removed again (it would make
    every step compute gradients for the frozen first layer's input)."""
    layers = decoder_layers(model)
    count = len(chosen)
    if count == 0 and getattr(model, "_require_grads_hook", None) is not None:
        model.disable_input_require_grads()
    if count > 0:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if (hasattr(model, "enable_input_require_grads") and getattr(model, "_require_grads_hook", None) is None
                and any(not p.requires_grad for p in model.get_input_embeddings().parameters())):
            model.enable_input_require_grads()  # once: transformers' own enable may have registered it already
    for i, layer in enumerate(layers):
        if hasattr(layer, "gradient_checkpointing"):
            layer.gradient_checkpointing = i in chosen


def _tokens(feature: dict) -> int:
    return len(feature["prompt_ids"]) + len(feature["chosen_ids"]) + len(feature["rejected_ids"])


def _longest_sequence(feature: dict) -> int:
    return len(feature["prompt_ids"]) + max(len(feature["chosen_ids"]), len(feature["rejected_ids"]))


def largest_batch(model, features: list[dict], collator, batch_size: int) -> tuple[dict, bool]:
    """The run's batch with the most decoder tokens (`decoder_tokens`) and whether it runs sequence by
    sequence (a sliding window binds: `window_binds`): the `batch_size` pairs with the most tokens, or, where
    the window can bind, the `batch_size` with the longest sequences (padded sequence by sequence, its cost is
    sequences x the longest), whichever costs more."""
    candidates = [collator(sorted(features, key=lambda f: -_tokens(f))[:batch_size])]
    candidates.append(collator(sorted(features, key=lambda f: -_longest_sequence(f))[:batch_size]))
    paths = [("attn_segments" in b and window_binds(model, b)) for b in candidates]
    costs = [decoder_tokens(model, b, path) for b, path in zip(candidates, paths)]
    best = max(range(len(candidates)), key=costs.__getitem__)
    return candidates[best], paths[best]


def auto_checkpointing(model, features: list[dict], collator, batch_size: int, chunk_size: int,
                       autocast_dtype=None, budget_gb: float | None = None) -> CheckpointPlan:
    """Measure, plan and apply `gradient_checkpointing: auto` for training on `features` (encoded pairs)
    with `collator` (the run's `PairCollator`) and `batch_size` pairs per step; returns the plan."""
    device = next(model.parameters()).device
    move = lambda b: {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
    longest = sorted(features, key=lambda f: -_tokens(f))
    if len(longest) < 2:
        raise ValueError("gradient_checkpointing: auto needs at least 2 training pairs to measure the footprint")
    checkpoint_layers(model, 0)
    # The largest batch's path through a sliding window (packed / prefix-shared batches a window binds run
    # as padded sequences) is the path both probes take, so the fitted line is that path's.
    planned, by_sequence = largest_batch(model, features, collator, batch_size)
    size = lambda b: decoder_tokens(model, b, by_sequence)  # noqa: E731
    # The shortest pair and the longest, as collated (a padded or packed layout can give pairs of different
    # lengths the same size); one pair and two when those are the same size.
    small, large = collator(longest[-1:]), collator(longest[:1])
    if size(small) >= size(large):
        small, large = large, collator(longest[:2])
    responses = sorted((len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features), reverse=True)
    footprint = measure_footprint(model, move(small), move(large), chunk_size, autocast_dtype,
                                  head_rows=sum(responses[:batch_size]), by_sequence=by_sequence)
    tokens = size(planned)
    budget = budget_gb * GB if budget_gb else DEFAULT_BUDGET_SHARE * device_memory_bytes(device)
    plan = plan_checkpointing(footprint, static_bytes(model, device), tokens, budget)
    checkpoint_layers(model, plan.layers)
    return plan
