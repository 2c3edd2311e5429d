"""TR-DPO's reference update (`ref_update: sync`): every `ref_sync_steps` optimizer steps,

    reference <- alpha * policy + (1 - alpha) * reference        (alpha = `ref_sync_alpha`)

Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment" (TR-DPO, soft
update), as TRL's `sync_ref_model` / `SyncRefModelCallback` does it (`ref_model_mixup_alpha`,
`ref_model_sync_steps`, checked on `global_step % steps == 0` at the end of a step). With LoRA the
policy's weights are the effective ones, base + the adapter's delta (what a merged model holds).

The reference is a model of its own (models.build_reference under ref_update: sync). Its mixed
weights are saved with every checkpoint (`sync_reference.safetensors`, so a resumed run continues
with the same reference) and at the end of training in `output_dir/sync_reference/` (a model
directory: the next round's reference).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback

CHECKPOINT_FILE = "sync_reference.safetensors"
FINAL_DIR = "sync_reference"


def effective_weights(policy) -> dict[str, torch.Tensor]:
    """The policy's weights as a plain model's state dict: name -> tensor (LoRA deltas folded in,
    adapter weights themselves left out). Shapes as in the base model."""
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel, LoraLayer = (), ()
    if not isinstance(policy, PeftModel):
        return {name: p.detach() for name, p in policy.named_parameters()}
    base = policy.get_base_model()
    out: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters and not getattr(module, "merged", False):
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    for name, p in base.named_parameters():
        if "lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        value = p.detach()
        out[plain] = value + deltas[plain] if plain in deltas else value
    return out


@torch.no_grad()
def mix_into(reference, policy, alpha: float) -> int:
    """reference <- alpha * policy + (1 - alpha) * reference, in place; returns the tensors updated.

    Raises ValueError when a reference weight has no counterpart in the policy (different models)."""
    weights = effective_weights(policy)
    updated = 0
    for name, param in reference.named_parameters():
        if name not in weights:
            raise ValueError(f"ref_update: sync: the policy has no weight {name!r}; the reference must be the "
                             f"same architecture as the policy")
        param.mul_(1.0 - alpha).add_(weights[name].to(param.dtype), alpha=alpha)
        updated += 1
    return updated


class SyncReferenceCallback(TrainerCallback):
    """Mixes the policy into the reference every `steps` steps; saves the reference with checkpoints."""

    def __init__(self, trainer, reference_model, alpha: float, steps: int):
        self.trainer, self.reference, self.alpha, self.steps = trainer, reference_model, alpha, steps
        self.syncs = 0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.steps == 0:
            mix_into(self.reference, self.trainer.accelerator.unwrap_model(self.trainer.model), self.alpha)
            self.syncs += 1

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from safetensors.torch import save_model  # handles tied weights

            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(self.reference, str(path))

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            final = Path(args.output_dir) / FINAL_DIR
            self.reference.save_pretrained(final)
            if self.trainer.processing_class is not None:  # a loadable model directory: weights + tokenizer
                self.trainer.processing_class.save_pretrained(final)


def install_sync(trainer, reference_model, cfg, resume_checkpoint: str | None, say=print) -> SyncReferenceCallback:
    """Add the TR-DPO callback to `trainer`; when resuming, load the reference saved with the checkpoint.

    Raises ConfigError when a checkpoint to resume from has no saved reference (made without sync)."""
    from prefloop.errors import ConfigError

    if resume_checkpoint:
        path = Path(resume_checkpoint) / CHECKPOINT_FILE
        if not path.is_file():
            raise ConfigError(f"resume_from_checkpoint: {resume_checkpoint} has no {CHECKPOINT_FILE}, so the TR-DPO "
                              f"reference at that step is unknown; resume a run trained with ref_update: sync")
        from safetensors.torch import load_model

        load_model(reference_model, str(path), strict=True, device=str(next(reference_model.parameters()).device))
        say(f"ref_update: sync: reference restored from {path}")
    callback = SyncReferenceCallback(trainer, reference_model, cfg.ref_sync_alpha, cfg.ref_sync_steps)
    trainer.add_callback(callback)
    return callback
