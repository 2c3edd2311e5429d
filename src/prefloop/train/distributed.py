"""Data-parallel training on many processes, GPUs and machines, on the engines users already run.

prefloop has no launcher of its own: `torchrun`, `accelerate launch` and `deepspeed` start one
process per device and set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; the
Trainer (through accelerate) then joins the process group (gloo on CPU, NCCL on GPUs) and wraps
the model in DDP, FSDP or a DeepSpeed engine. This module holds the few things prefloop adds:

- `prepare_environment`: `prefloop train` started by a scheduler that sets WORLD_SIZE and RANK but
  no LOCAL_RANK still trains data-parallel; a missing rendezvous variable is a clear error.
- `call_as_forward`: the preference step computes log-probs with the decoder and the output head
  (in chunks, never full logits), not with `model.forward`. DDP only all-reduces gradients, and
  FSDP / ZeRO-3 only gather sharded weights, when the *wrapper's* forward runs, so the step is run
  as the forward of the wrapped model.
- rank helpers (`rank`, `world_size`, `is_main_process`) and agreement across ranks
  (`all_ranks_agree`, `any_rank`) so every rank takes the same branch. Metrics need nothing here:
  the trainer gathers per-pair values from every rank (`gather_for_metrics`) before averaging.
- the sharded reference precompute: each rank computes the reference log-probs of its shard of the
  data once (`reference_shard`), the shards are gathered in order (`gather_in_order`) into the one
  cache that rank 0 writes; the cache equals a single-process one. Since the step then needs only
  the policy, no rank ever holds a full extra reference copy under ZeRO-3 / FSDP.
- `check_resume_world_size`: resuming needs the world size the checkpoint was written with.

Global batch = per_device_train_batch_size x gradient_accumulation_steps x world size.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from prefloop.errors import ConfigError

_RENDEZVOUS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Processes in the run (1 when not distributed); read from the launcher before the group exists."""
    return torch.distributed.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 writes logs, metrics, checkpoints, plots, samples, the config and the reference cache."""
    return rank() == 0


def prepare_environment(cfg=None) -> int:
    """Make a launch with WORLD_SIZE > 1 one that accelerate recognises; returns the world size.

    torchrun / accelerate / deepspeed set LOCAL_RANK themselves. A scheduler that sets only
    WORLD_SIZE and RANK (one process per machine, or a hand-written launch) gets LOCAL_RANK =
    RANK mod LOCAL_WORLD_SIZE (default: the GPUs on this machine, or 1 on CPU).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        missing = [name for name in _RENDEZVOUS if not os.environ.get(name)]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={size} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; "
                f"start prefloop with `torchrun --nproc_per_node N -m prefloop train CONFIG.yaml` (or accelerate "
                f"launch / deepspeed), or set RANK, MASTER_ADDR and MASTER_PORT for every process")
        if "LOCAL_RANK" not in os.environ:
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or max(torch.cuda.device_count(), 1))
            os.environ["LOCAL_RANK"] = str(int(os.environ["RANK"]) % per_node)
    if cfg is not None:
        check_sharded_reference(cfg)
    return size


def uses_sharded_weights(cfg) -> bool:
    """True under DeepSpeed ZeRO-3 or FSDP: each rank holds only a shard of the weights."""
    if cfg.fsdp or cfg.fsdp_config:
        return True
    if cfg.deepspeed:
        from prefloop.config_files import load_json

        try:  # a key given twice in the DeepSpeed JSON is a ConfigError naming it (config_files.py)
            stage = load_json(Path(cfg.deepspeed)).get("zero_optimization", {}).get("stage", 0)
        except (OSError, ValueError) as err:
            raise ConfigError(f"deepspeed: {cfg.deepspeed} is not a readable JSON config: {err}") from err
        return stage == 3
    return False


def check_sharded_reference(cfg) -> None:
    """Under ZeRO-3 / FSDP the reference is its precomputed log-probs, never a full copy per GPU."""
    if uses_sharded_weights(cfg) and not cfg.precompute_ref:
        from prefloop.train.losses import build_loss_spec

        if build_loss_spec(cfg).needs_reference:
            raise ConfigError(
                "precompute_ref: false with ZeRO-3 / FSDP would run a reference model next to the sharded "
                "policy inside every step; set precompute_ref: true (each rank computes the reference "
                "log-probs of its shard of the data once, before training) or use a reference-free loss")


# ---------------------------------------------------------------------------------------------
# The step inside the wrapper


def unwrap(model):
    """The model inside DDP / FSDP / a DeepSpeed engine (the model itself when not wrapped)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def call_as_forward(model, fn, *args, **kwargs):
    """`fn(inner_model, *args, **kwargs)` run as the forward of `model` (a DDP / FSDP / DeepSpeed
    wrapper, or the plain model), so the wrapper's hooks run: gradient all-reduce (DDP), gathering
    sharded weights (FSDP, ZeRO-3). The inner model's own forward is restored afterwards."""
    inner = unwrap(model)
    if inner is model and not _is_fsdp2(model):
        return fn(model, *args, **kwargs)  # a plain model: nothing to go through
    saved = inner.__dict__.get("forward")  # accelerate may have put a mixed-precision forward here
    inner.forward = lambda *a, **k: fn(inner, *a, **k)
    try:
        return model(*args, **kwargs)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def _is_fsdp2(model) -> bool:
    """FSDP2 (`fully_shard`) shards in place: the model is not wrapped, but its forward hooks gather."""
    return type(model).__name__.startswith("FSDP")


def forget_evaluation_prepare(trainer) -> None:
    """Let `train()` wrap the model in DDP even when `evaluate()` ran first.

    In transformers 5 / accelerate 1.x an evaluation before training prepares the model for
    evaluation only (no DDP wrapper) but marks it prepared, so `train()` then skips the DDP wrapper
    and every rank silently trains on its own gradients. Dropping that mark (DDP only: DeepSpeed and
    FSDP wrap during evaluation too) restores the normal wrapping.
    """
    model = trainer.model
    if world_size() > 1 and trainer.model_wrapped is model and model.__dict__.pop("_is_accelerate_prepared", False):
        trainer.accelerator._models[:] = [m for m in trainer.accelerator._models if m is not model]


# ---------------------------------------------------------------------------------------------
# Agreement across ranks


def all_ranks_agree(flag: bool) -> bool:
    """True only if `flag` is true on every rank (so all ranks take the same branch of a collective)."""
    if not _initialized() or world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=_collective_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on some rank: e.g. a step skipped for a NaN loss on one rank is skipped
    on all of them, or the ranks' weights would drift apart."""
    return not all_ranks_agree(not flag)


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Sharded reference precompute


def shard_bounds(count: int, batch_size: int, rank_: int, world: int) -> tuple[int, int]:
    """[start, end) of `rank_`'s contiguous shard of `count` items, cut on batch boundaries so every
    item is computed in the same batch as in a single-process run (so the numbers are the same)."""
    batches = -(-count // batch_size)
    per_rank, extra = divmod(batches, world)
    first = rank_ * per_rank + min(rank_, extra)
    last = first + per_rank + (1 if rank_ < extra else 0)
    return min(first * batch_size, count), min(last * batch_size, count)


def gather_in_order(parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Concatenate each rank's CPU tensors in rank order: the result is the same on every rank."""
    if not _initialized() or world_size() == 1:
        return parts
    gathered: list = [None] * world_size()
    torch.distributed.all_gather_object(gathered, [p.cpu() for p in parts])
    return tuple(torch.cat([g[i] for g in gathered]) for i in range(len(parts)))


def reference_shard(compute, features: list, batch_size: int) -> tuple[torch.Tensor, ...]:
    """`compute(features[shard])` on every rank, gathered: each pair is computed once, by one rank."""
    start, end = shard_bounds(len(features), batch_size, rank(), world_size())
    return gather_in_order(compute(features[start:end]))


# ---------------------------------------------------------------------------------------------
# Resume


def checkpoint_world_size(checkpoint: str | Path) -> int | None:
    """The world size a checkpoint was written with (the Trainer saves one RNG state per rank)."""
    ranks = [int(m.group(1)) for p in Path(checkpoint).glob("rng_state_*.pth")
             if (m := re.fullmatch(r"rng_state_(\d+)\.pth", p.name))]
    if ranks:
        return max(ranks) + 1
    return 1 if (Path(checkpoint) / "rng_state.pth").is_file() else None


def check_resume_world_size(checkpoint):
    """Pass `checkpoint` through after checking it was written by as many processes as run now
    (data order, RNG states and optimizer shards depend on it); a clear error otherwise."""
    if checkpoint is None:
        return None
    saved, now = checkpoint_world_size(checkpoint), world_size()
    if saved is not None and saved != now:
        raise ConfigError(
            f"resume_from_checkpoint: {checkpoint} was written by {saved} process(es) but this run has {now}; "
            f"resume with the same world size (e.g. torchrun --nproc_per_node {saved}) or train from the start")
    return checkpoint
