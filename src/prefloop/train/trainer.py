"""The DPO trainer: `transformers.Trainer` with a preference loss and TRL-named metrics.

Everything users know from the Trainer (cosine schedule, warmup, gradient accumulation, clipping,
eval/save/log steps, `save_total_limit`, resume, TensorBoard) is the Trainer's own. This subclass
adds only the loss, the metrics, and evaluation without predictions:

    policy log-probs (logps.pair_logps) -> reference log-probs (cached in the batch, or run here)
    -> preference_loss (losses.py) -> mean over pairs

Metrics are accumulated per pair between two logs and averaged at each log (so a log covers every
pair since the previous one), with the names TRL and LLaMA-Factory use (`eval_` prefix in eval).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import defaultdict

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from prefloop.train.distributed import call_as_forward, forget_evaluation_prepare
from prefloop.train.losses import BCOState, LossSpec, SequenceLogps, pair_metrics, preference_loss, reward_accuracy
from prefloop.train.logps import pair_logps


logger = logging.getLogger(__name__)
BCO_STATE_FILE = "bco_state.json"  # in a checkpoint: bco_pair's BCOState


def build_training_arguments(cfg) -> TrainingArguments:
    """The Trainer's arguments from a prefloop `Config` (keys mean what they mean in transformers).

    transformers 5 has no `warmup_ratio`: a float `warmup_steps` in [0, 1) is the ratio.
    """
    from prefloop.config import report_to_names
    from prefloop.errors import ConfigError
    from prefloop.train.console import live_bars

    report_to = report_to_names(cfg.report_to)
    try:
        return TrainingArguments(
            output_dir=cfg.output_dir,
            do_train=cfg.do_train,
            do_eval=cfg.run_eval,
            per_device_train_batch_size=cfg.per_device_train_batch_size,
            per_device_eval_batch_size=cfg.per_device_eval_batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            learning_rate=cfg.learning_rate,
            num_train_epochs=cfg.num_train_epochs,
            max_steps=cfg.max_steps,
            lr_scheduler_type=cfg.lr_scheduler_type,
            lr_scheduler_kwargs=dict(cfg.lr_scheduler_kwargs or {}),
            warmup_steps=cfg.warmup_steps or float(cfg.warmup_ratio),
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            optim=cfg.optim,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_epsilon=cfg.adam_epsilon,
            seed=cfg.seed,
            use_cpu=not torch.cuda.is_available(),
            fp16=cfg.fp16,
            bf16=cfg.bf16,
            # auto: the layers are chosen and switched on by train/memory.py, not by the Trainer
            **_checkpointing_arguments(cfg.gradient_checkpointing is True),
            eval_strategy=cfg.eval_strategy if cfg.run_eval else "no",
            eval_steps=cfg.eval_steps,
            save_strategy=cfg.save_strategy,
            save_steps=cfg.save_steps,
            save_total_limit=cfg.save_total_limit,
            save_only_model=cfg.save_only_model,
            logging_steps=cfg.logging_steps,
            report_to="none" if report_to == ["none"] else report_to,
            disable_tqdm=not live_bars(),  # no cursor escape codes in logs (train/console.py)
            dataloader_num_workers=cfg.dataloader_num_workers,
            remove_unused_columns=False,  # the batch is ours, not the model's forward signature
            label_names=[],
            deepspeed=cfg.deepspeed,
            fsdp=_fsdp_option(cfg.fsdp),
            fsdp_config=cfg.fsdp_config,
            ddp_timeout=cfg.ddp_timeout,
            ddp_find_unused_parameters=cfg.ddp_find_unused_parameters,
            # early_stopping_patience watches eval_loss and keeps the best checkpoint
            load_best_model_at_end=bool(cfg.early_stopping_patience),
            metric_for_best_model="eval_loss" if cfg.early_stopping_patience else None,
        )
    except (ValueError, ImportError) as err:
        raise ConfigError(f"the training arguments are not valid: {err}") from err


def _fsdp_option(fsdp) -> str | None:
    """`fsdp: true` means LLaMA-Factory's usual "full_shard auto_wrap"; a list is joined as the Trainer expects."""
    if fsdp is True:
        return "full_shard auto_wrap"
    return " ".join(fsdp) if isinstance(fsdp, list) else (fsdp or None)


def _checkpointing_arguments(enabled: bool) -> dict:
    """transformers >= 5.2x renamed `gradient_checkpointing` to `activation_checkpointing`; use whichever exists."""
    fields = TrainingArguments.__dataclass_fields__
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


class PreferenceTrainer(Trainer):
    """`transformers.Trainer` whose loss is a preference loss over (chosen, rejected) pairs.

    `reference`: a `models.Reference` to run inside the step, or None when the batch carries cached
    reference log-probs or the loss is reference-free. `health` (issue 5): an optional
    `health.HealthCallback` that sees every training batch (loss, pair ids, log-probs, rewards).
    """

    def __init__(self, *args, loss_spec: LossSpec, reference=None, chunk_size: int = 4096,
                 ld_alpha: float | None = None, autocast_dtype: torch.dtype | None = None,
                 dimension_names: list[str] | None = None, probe_prompts: list[list[int]] | None = None,
                 probe_max_new_tokens: int = 128, **kwargs):
        super().__init__(*args, **kwargs)
        self.dimension_names = list(dimension_names or [])  # per-dimension metrics (data/dimensions.py)
        # Validation prompts (token ids) answered greedily at every evaluation: eval_sampled_length (health.py).
        self.probe_prompts, self.probe_max_new_tokens = list(probe_prompts or []), probe_max_new_tokens
        self.loss_spec, self.reference = loss_spec, reference
        self.chunk_size, self.ld_alpha, self.autocast_dtype = chunk_size, ld_alpha, autocast_dtype
        self.model_accepts_loss_kwargs = False  # our loss is a mean over pairs: the Trainer scales it for accumulation
        self.loss_is_scaled_for_ga = False
        self.health = None
        self.bco_state = None  # bco_pair's running reward mean, carried across training steps
        self.last_pair_ids: list[str] = []
        self._sums = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": defaultdict(int), "eval": defaultdict(int)}
        # Per-step metric sums stay on the device until a log reads them: one host transfer per log instead of
        # one per metric per step (the health monitor still reads the loss once per step).
        self._pending: dict[str, list] = {"train": [], "eval": []}
        self._tokens_since_log, self._last_log_time = 0, time.perf_counter()

    def train(self, *args, **kwargs):
        self._tokens_since_log, self._last_log_time = 0, time.perf_counter()
        forget_evaluation_prepare(self)  # an evaluate() before train() must not leave DDP unwrapped
        self._load_bco_state(kwargs.get("resume_from_checkpoint", args[0] if args else None))
        return super().train(*args, **kwargs)

    def _load_bco_state(self, resume) -> None:
        """bco_pair's running reward mean from the checkpoint a run resumes from (`True`: the output
        directory's last one, as the Trainer reads it), so delta continues where it stopped."""
        if resume is True:
            resume = get_last_checkpoint(self.args.output_dir)
        if not isinstance(resume, (str, os.PathLike)) or "bco_pair" not in self.loss_spec.names:
            return
        path = os.path.join(resume, BCO_STATE_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                self.bco_state = BCOState(**json.load(f))
        else:
            logger.warning("resuming a bco_pair run from %s, which has no %s (saved by an older prefloop?): bco_pair's "
                           "reward shift delta restarts from this run's first batch", resume, BCO_STATE_FILE)

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint, plus bco_pair's running reward mean (`bco_state.json`), which a
        resumed run must continue from, not restart at its first batch's mean."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.bco_state is not None and self.args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, BCO_STATE_FILE), "w") as f:
                json.dump(dataclasses.asdict(self.bco_state), f)

    # -- the step -------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.pair_loss(model, inputs, "train")
        return (loss, {}) if return_outputs else loss

    def pair_loss(self, model, inputs: dict, mode: str) -> torch.Tensor:
        """Mean preference loss of one batch; records its metrics under `mode` ("train"/"eval")."""
        self.last_pair_ids = inputs.pop("pair_ids", None) or []
        num_tokens = inputs.pop("num_tokens", None)
        agree = inputs.pop("dimension_agree", None)  # [B, K]: 1 agrees with the pair's direction, 0 not, -1 no score
        margin_rewards = inputs.pop("margin_rewards", None)  # [B, K] MODPO margin reward gaps
        # As the forward of the (DDP / FSDP / DeepSpeed) wrapper, so its gradient and weight hooks run.
        policy = call_as_forward(model, pair_logps, inputs, self.chunk_size, self.ld_alpha, self.autocast_dtype)
        reference = self.reference_logps(inputs, policy.seq)
        out = preference_loss(policy.seq, reference, self.loss_spec, inputs.get("weight"), inputs.get("margin"),
                              bco_state=self.bco_state, margin_rewards=margin_rewards, reduce_sum=self._reduce_sum)
        loss = out.losses.mean()
        if mode == "train":
            self.bco_state = out.bco_state
            if self.health is not None:
                self.health.observe_batch(loss, self.last_pair_ids, policy.seq, out)
        self.record_metrics(mode, out, policy, num_tokens)
        if agree is not None:
            self.record_dimension_metrics(mode, out, agree)
        return loss

    def _reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (bco_pair's running reward mean must see every rank's rewards)."""
        return self.accelerator.reduce(values, reduction="sum") if self.accelerator.num_processes > 1 else values

    def reference_logps(self, inputs: dict, policy: SequenceLogps) -> SequenceLogps | None:
        """Cached reference log-probs from the batch, or a no-grad reference forward, or None."""
        if not self.loss_spec.needs_reference:
            return None
        if "ref_chosen_logps" in inputs:
            chosen, rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif self.reference is not None:
            with torch.no_grad(), self.reference.context():
                # LD-DPO weights the reference like the policy, so an untrained policy's rewards are 0.
                ref = pair_logps(self.reference.model, inputs, self.chunk_size, self.ld_alpha, self.autocast_dtype).seq
            chosen, rejected = ref.chosen, ref.rejected
        else:
            raise RuntimeError("the loss needs reference log-probs, but the batch has none and no reference model "
                               "was given (precompute_ref did not run?)")
        return SequenceLogps(chosen, rejected, policy.chosen_tokens, policy.rejected_tokens)

    # -- evaluation -------------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.pair_loss(model, inputs, "eval")
        return loss.detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        """The Trainer's evaluation, plus the mean length of the greedy answers to the probe prompts
        (`eval_sampled_length`, tokens), which the health monitor watches for length hacking."""
        output = super().evaluation_loop(*args, **kwargs)
        if self.probe_prompts:
            from prefloop.train.health import SAMPLED_LENGTH_METRIC, sampled_answer_lengths

            prefix = kwargs.get("metric_key_prefix", "eval")
            lengths = sampled_answer_lengths(self.accelerator.unwrap_model(self.model), self.processing_class,
                                             self.probe_prompts, self.probe_max_new_tokens)
            output.metrics[SAMPLED_LENGTH_METRIC.replace("eval", prefix, 1)] = sum(lengths) / len(lengths)
        return output

    def evaluate_quietly(self, eval_dataset=None, description: str = "Evaluation") -> dict:
        """Eval metrics (`eval_` names) without logging them, e.g. before training starts."""
        output = self.evaluation_loop(self.get_eval_dataloader(eval_dataset), description=description,
                                      prediction_loss_only=True, metric_key_prefix="eval")
        metrics = dict(output.metrics)
        metrics.update(self.pop_metrics("eval", prefix="eval_"))
        # Close the evaluation's progress bar (as after predict()): what is printed next must not land in it.
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return metrics

    # -- metrics ----------------------------------------------------------------------------------

    def record_metrics(self, mode: str, out, policy, num_tokens) -> None:
        per_pair = {
            **pair_metrics(out, policy.seq),  # rewards/* (a tie counts as half right) and logps/*
            "logits/chosen": policy.chosen_logits_mean,
            "logits/rejected": policy.rejected_logits_mean,
        }
        if mode == "eval":
            # Reference-free ranking: mean per-token log-prob of chosen above rejected.
            per_pair["ranking/accuracies"] = (policy.seq.chosen_mean > policy.seq.rejected_mean).float()
        # One [B, M] tensor (rows are pairs, so the gather drops padding rows as the per-metric gathers did), one
        # gather, its column sums kept on the device until `pop_metrics`; the token count (int64) beside it.
        table = self.accelerator.gather_for_metrics(torch.stack([v.detach().float() for v in per_pair.values()], 1))
        tokens = None
        if num_tokens is not None and mode == "train":
            tokens = self.accelerator.gather_for_metrics(num_tokens.reshape(1)).sum()
        self._pending[mode].append((list(per_pair), table.sum(0), table.shape[0], tokens))

    def _flush_pending(self, mode: str) -> None:
        """Add the device-side sums of the steps since the last read to the host totals (one transfer for
        the metrics, one for the token counts)."""
        pending, self._pending[mode] = self._pending[mode], []
        if not pending:
            return
        values = torch.cat([sums for _, sums, _, _ in pending]).tolist()
        at = 0
        for names, sums, rows, _ in pending:
            for i, name in enumerate(names):
                self._sums[mode][name] += values[at + i]
                self._counts[mode][name] += rows
            at += sums.numel()
        tokens = [t for *_, t in pending if t is not None]
        if tokens:
            self._tokens_since_log += int(torch.stack(tokens).sum().item())

    def record_dimension_metrics(self, mode: str, out, agree: torch.Tensor) -> None:
        """`rewards/accuracies/<dim>`: reward accuracy over the pairs whose dimension <dim> agrees with the
        pair's (combined) direction; `dimensions/<dim>/agreement`: the share of scored pairs that agree."""
        correct = reward_accuracy((out.chosen_rewards - out.rejected_rewards).float())
        agrees, scored = (agree == 1).float(), (agree >= 0).float()  # [B, K]
        per_pair = torch.cat([correct[:, None] * agrees, agrees, scored], dim=1)  # [B, 3K]: rows are pairs, so
        sums = self.accelerator.gather_for_metrics(per_pair).sum(dim=0).tolist()  # padding rows are dropped
        k = len(self.dimension_names)  # one gather and one host copy per step for all dimensions
        for i, name in enumerate(self.dimension_names):
            hits, agreeing, with_score = sums[i], sums[k + i], sums[2 * k + i]
            for metric, total, count in ((f"rewards/accuracies/{name}", hits, agreeing),
                                         (f"dimensions/{name}/agreement", agreeing, with_score)):
                self._sums[mode][metric] += total
                self._counts[mode][metric] += int(count)

    def pop_metrics(self, mode: str, prefix: str = "") -> dict[str, float]:
        """Per-pair averages since the last pop, then reset."""
        self._flush_pending(mode)
        sums, counts = self._sums[mode], self._counts[mode]
        metrics = {prefix + name: sums[name] / counts[name] for name in sums if counts[name]}
        sums.clear()
        counts.clear()
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs.update(self.pop_metrics("eval", prefix="eval_"))
            self._last_log_time = time.perf_counter()  # throughput counts training time only
        elif "loss" in logs:
            logs.update(self.pop_metrics("train"))  # also adds the pending token counts
            now = time.perf_counter()
            logs["tokens_per_second"] = round(self._tokens_since_log / max(now - self._last_log_time, 1e-9), 2)
            self._tokens_since_log, self._last_log_time = 0, now
        super().log(logs, start_time)
