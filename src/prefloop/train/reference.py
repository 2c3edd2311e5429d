"""Reference log-probs: computed once before training, cached on disk, reused by later runs.

The reference policy never changes during DPO, so its summed log-probs of every chosen and
rejected response are computed in one pass over the train and eval data (with a progress bar)
and travel in the batch as `ref_chosen_logps` / `ref_rejected_logps`; the training step then runs
only the policy.

The cache file of a split is named by a key that covers everything the numbers depend on:
- the reference weights (`weights_fingerprint`: exact bytes of a few tensors plus a float64 sum of
  every tensor, the architecture config, and how the reference is obtained, e.g. LoRA adapters
  disabled), and the precision it runs in;
- the tokenizer (its vocabulary), the chat template and `cutoff_len`;
- the encoded data itself (every token id of every pair, in order);
- the batch layout, the attention backend and `logps.LOGPS_VERSION` (how the log-probs are computed: another
  path rounds differently, and the untrained policy should tie exactly with its own reference);
- `ld_alpha` (LD-DPO weights the reference's tokens beyond the shorter response like the policy's).
Change any of them and the key changes, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from prefloop.train.dataset import PairCollator
from prefloop.train.distributed import all_ranks_agree, is_main_process, reference_shard
from prefloop.train.attention import attention_backend, use_attention_backend
from prefloop.train.logps import LOGPS_VERSION, packed_row_tokens, pair_logps

_VOLATILE_CONFIG_KEYS = {"use_cache", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
                         "architectures", "_attn_implementation_autoset", "_attn_implementation"}
_EXACT_TENSORS = 4  # tensors whose bytes are hashed exactly (first and last ones)
_EXACT_BYTES = 1 << 20  # at most this many bytes of each


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def _base_parameters(model, adapters_disabled: bool = True):
    """(name, tensor) of the weights the reference computes with: LoRA weights left out when the
    reference is the base with adapters disabled (kept when the adapters are part of the reference)."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if adapters_disabled and ("lora_" in name or "modules_to_save" in name):
            continue
        yield name.replace("base_model.model.", ""), tensor


def weights_fingerprint(model, kind: str) -> str:
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    # Only whether adapters are disabled changes the numbers; the same weights loaded another way
    # (the policy before training, a frozen copy, a separately loaded model) give the same log-probs.
    h.update(("adapters_disabled" if kind == "adapters_disabled" else "weights").encode())
    params = list(_base_parameters(model, adapters_disabled=kind == "adapters_disabled"))
    exact = set(range(min(_EXACT_TENSORS // 2, len(params)))) | set(range(max(0, len(params) - _EXACT_TENSORS // 2), len(params)))
    with torch.no_grad():
        for i, (name, tensor) in enumerate(params):
            t = tensor.detach()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.double().sum().item():.17g}".encode())
            if i in exact:
                # the first bytes only are copied to the host (not the whole tensor, e.g. a GPU's embeddings)
                h.update(t.contiguous().view(torch.uint8).flatten()[:_EXACT_BYTES].cpu().numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return _sha(json.dumps(vocab), tokenizer.pad_token_id, tokenizer.eos_token_id)


def data_fingerprint(features: list[dict]) -> str:
    h = hashlib.sha256()
    for f in features:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            h.update(json.dumps(f[key]).encode())
            h.update(b"|")
        h.update(b"\n")
    return h.hexdigest()


PROFILE_SCOPE = "prefloop::reference_pass"  # a torch.profiler range (bench/profile_train.py)


def compute_reference_logps(reference, features: list[dict], layout: str, pad_token_id: int, batch_size: int,
                            chunk_size: int, autocast_dtype=None, device=None, desc: str = "reference",
                            what: str = "reference log-probs", ld_alpha: float | None = None):
    """Summed log-probs of chosen and rejected for every feature under `reference.model` in
    `reference.context()`, in order: two [N] tensors (fp32, nats). `what` and `desc` label the progress
    bar (evaluation runs the policy through the same loop). `ld_alpha`: LD-DPO's weighting of the tokens
    beyond the pair's shorter response, the same as the policy gets in the step (`logps.pair_logps`)."""
    from tqdm.auto import tqdm

    from prefloop.train.console import live_bars

    model = reference.model
    collator = PairCollator(layout, pad_token_id, packed_row_tokens(model))
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        with torch.no_grad(), reference.context(), torch.profiler.record_function(PROFILE_SCOPE):
            for start in tqdm(range(0, len(features), batch_size), desc=f"{what} ({desc})",
                              unit="batch", leave=False, disable=not live_bars()):
                batch = collator(features[start:start + batch_size])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                out = pair_logps(model, batch, chunk_size=chunk_size, ld_alpha=ld_alpha, autocast_dtype=autocast_dtype)
                chosen.append(out.seq.chosen.float().cpu())
                rejected.append(out.seq.rejected.float().cpu())
    finally:
        model.train(was_training)
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def attach(features: list[dict], chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    """Put reference log-probs into the features (in place), where `collate_pairs` picks them up."""
    for f, c, r in zip(features, chosen.tolist(), rejected.tolist(), strict=True):
        f["ref_chosen_logps"], f["ref_rejected_logps"] = c, r


class ReferenceCache:
    """One safetensors file per (key, split) under `directory`, with its fingerprints as metadata."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, split: str, key: str) -> Path:
        return self.directory / f"ref_logps-{split}-{key[:24]}.safetensors"

    def load(self, split: str, key: str, count: int):
        from safetensors.torch import load_file

        path = self.path(split, key)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        if tensors["chosen"].shape[0] != count:
            return None
        return tensors["chosen"], tensors["rejected"]

    def save(self, split: str, key: str, chosen, rejected, metadata: dict) -> Path:
        from safetensors.torch import save_file

        from prefloop.output_files import write_atomically

        path = self.path(split, key)
        tensors = {"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}
        # safetensors writes the temporary file itself (the writer callback); a crashed run never leaves
        # a half-written cache file
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()}))
        return path


def precompute_reference(reference, splits: dict[str, list[dict]], cfg, tokenizer, template_name: str,
                         autocast_dtype=None, device=None, log=print) -> dict:
    """Attach cached or freshly computed reference log-probs to every split's features.

    Returns {split: "cached" | "computed"} (plus the seconds spent) for the run summary.
    """
    cache = ReferenceCache(cfg.reference_cache_dir)
    precision = str(autocast_dtype or "float32")
    ref_fp = weights_fingerprint(reference.model, reference.kind)
    tok_fp = tokenizer_fingerprint(tokenizer)
    # another attention backend rounds differently: its log-probs would not tie exactly with the policy's
    attention = (attention_backend(reference.model)
                 or use_attention_backend(reference.model, cfg.attn_backend, dtype=autocast_dtype)
                 or reference.model.config._attn_implementation)
    status, started = {}, time.perf_counter()
    for split, features in splits.items():
        if not features:
            continue
        data_fp = data_fingerprint(features)
        key = _sha(ref_fp, precision, tok_fp, template_name, cfg.cutoff_len, data_fp, cfg.layout, LOGPS_VERSION,
                   attention, f"ld_alpha={cfg.ld_alpha}")
        cached = cache.load(split, key, len(features))
        if not all_ranks_agree(cached is not None):  # every rank takes the same branch (a collective follows)
            cached = None
        if cached is not None:
            status[split] = "cached"
            log(f"Reference log-probs ({split}, {len(features)} pairs): reused {cache.path(split, key)}")
        else:
            chosen_rejected = reference_shard(  # each rank its shard of the data, gathered in order
                lambda shard: compute_reference_logps(
                    reference, shard, cfg.layout, tokenizer.pad_token_id, cfg.per_device_eval_batch_size,
                    cfg.logps_chunk_size, autocast_dtype, device, desc=split, ld_alpha=cfg.ld_alpha),
                features, cfg.per_device_eval_batch_size)
            path = cache.path(split, key)
            if is_main_process():
                cache.save(split, key, *chosen_rejected, metadata={
                    "reference": reference.path, "kind": reference.kind, "weights": ref_fp, "precision": precision,
                    "tokenizer": tok_fp, "template": template_name, "cutoff_len": cfg.cutoff_len, "data": data_fp,
                    "ld_alpha": cfg.ld_alpha,
                    "pairs": len(features)})
            cached = chosen_rejected
            status[split] = "computed"
            log(f"Reference log-probs ({split}, {len(features)} pairs): computed once, cached at {path}")
        attach(features, *cached)
    status["seconds"] = round(time.perf_counter() - started, 2)
    return status
