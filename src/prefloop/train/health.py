"""Training health: catch a run going bad while it happens, not hours later.

Pure monitors fed with per-step numbers (testable without a model), each returning a
`HealthWarning` or None:
- `NonFiniteGuard`: NaN/Inf loss or gradients -> skip the optimizer step, stop after `max_bad_steps` in a row
- `SpikeMonitor`: loss / grad-norm over k x its running median
- `DegradationMonitor`: chosen log-probs falling steadily while margins rise
- `LengthBiasMonitor`: reward margins tracking the length difference of the pair
- `SampledLengthMonitor`: the model's greedy answers to fixed validation prompts growing longer (the trainer
  measures them at every evaluation as `eval_sampled_length`, before training too; see `sampled_answer_lengths`)
- `check_settings`: settings that usually go wrong, once at start
`HealthLog` sends every warning to the console, TensorBoard text and `output_dir/health.jsonl`.
`HealthCallback` feeds the monitors from a `transformers.Trainer`; `install_health` wires it in.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Sequence

import torch
from transformers import EarlyStoppingCallback, TrainerCallback

from prefloop.errors import ConfigError, PrefloopError

log = logging.getLogger("prefloop.health")

HEALTH_FILE = "health.jsonl"
NONFINITE_CAUSES = (
    "learning rate too high (lower learning_rate, e.g. halve it; add warmup_ratio: 0.1)",
    "fp16 overflow (use bf16: true, or fp32)",
    "empty or fully truncated responses (run `prefloop data check`; raise cutoff_len)",
    "NaN already in the starting weights or the reference cache (evaluate the base model once)",
)
SPIKE_REMEDIES = "lower learning_rate, raise pref_beta, or set max_grad_norm: 0.5"
DEGRADATION_REMEDIES = ("fewer epochs, a higher pref_beta, pref_ftx (e.g. 0.1) to keep chosen answers likely, "
                        "or check the data (chosen answers that are not better than rejected ones)")
LENGTH_REMEDIES = ("balance response lengths in the data (`prefloop data check`), use ld_alpha (e.g. 0.5), "
                   "pref_loss: sigmoid_norm or simpo, or a higher pref_beta")


class TrainingDiverged(PrefloopError):
    """Raised after `max_bad_steps` optimizer steps in a row had a non-finite loss or gradients."""


@dataclass
class HealthWarning:
    kind: str  # nonfinite, loss_spike, grad_norm_spike, degradation, length_bias, sampled_length, setting, early_stopping
    step: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": self.step, "kind": self.kind,
                "message": self.message, **self.data}


class HealthLog:
    """Where warnings go: the console (logging), TensorBoard text when a writer is there, and
    `output_dir/health.jsonl` (one JSON object per line, appended). `tb_writer` may be a callable
    returning the writer (or None), so a TensorBoard callback's writer can be borrowed once it exists."""

    def __init__(self, output_dir: str | Path | None = None, tb_writer: Any = None):
        self.path = Path(output_dir) / HEALTH_FILE if output_dir else None
        self._tb_writer = tb_writer
        self.warnings: list[HealthWarning] = []
        self.quiet = False  # set on ranks other than 0: they keep the list but write nothing


    @property
    def tb_writer(self):
        return self._tb_writer() if callable(self._tb_writer) else self._tb_writer

    def emit(self, warning: HealthWarning | None) -> HealthWarning | None:
        if warning is None:
            return None
        self.warnings.append(warning)
        if self.quiet:
            return warning
        log.warning("[health] step %d: %s", warning.step, warning.message)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(warning.to_json(), default=str) + "\n")
        writer = self.tb_writer
        if writer is not None:
            writer.add_text(f"health/{warning.kind}", warning.message, warning.step)
            writer.flush()
        return warning


def _finite(value) -> bool:
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


# ---------------------------------------------------------------------------------------------
# NaN / Inf


class NonFiniteGuard:
    """Decides, once per optimizer step, whether the update must be skipped.

    `observe_batch` is called for every micro-batch with its loss and pair ids; `end_step` is called
    just before the optimizer step with whether the gradients are finite. A bad step returns a
    warning naming the pair ids; `max_bad_steps` bad steps in a row raise `TrainingDiverged`.
    """

    def __init__(self, max_bad_steps: int = 3):
        if max_bad_steps < 1:
            raise ConfigError(f"max_bad_steps must be >= 1 (got {max_bad_steps})")
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.skipped_steps: list[int] = []
        self._step_ids: list[str] = []
        self._bad_ids: list[str] = []
        self._bad_loss = False
        self._history: list[tuple[int, list[str]]] = []  # the current run of bad steps

    def observe_batch(self, loss, pair_ids: Sequence[str] | None = None) -> bool:
        """Record one micro-batch; True when its loss is not finite."""
        ids = [str(i) for i in (pair_ids or [])]
        self._step_ids.extend(ids)
        if _finite(loss):
            return False
        self._bad_loss = True
        self._bad_ids.extend(ids)
        return True

    def end_step(self, step: int, gradients_finite: bool = True) -> HealthWarning | None:
        """Close the optimizer step. Returns a warning when it must be skipped (no weight update)."""
        from prefloop.train.distributed import any_rank

        bad = any_rank(self._bad_loss or not gradients_finite)  # every rank skips the same steps
        ids = self._bad_ids if self._bad_ids else self._step_ids
        what = "loss" if self._bad_loss else "gradients"
        self._step_ids, self._bad_ids, self._bad_loss = [], [], False
        if not bad:
            self.consecutive = 0
            self._history = []
            return None
        self.consecutive += 1
        self.skipped_steps.append(step)
        self._history.append((step, ids))
        if self.consecutive >= self.max_bad_steps:
            steps = ", ".join(str(s) for s, _ in self._history)
            pairs = "; ".join(f"step {s}: {_ids_text(i)}" for s, i in self._history)
            raise TrainingDiverged(
                f"training stopped: {self.consecutive} optimizer steps in a row (steps {steps}) had a non-finite "
                f"loss or gradients (max_bad_steps: {self.max_bad_steps}). Pairs: {pairs}. Likely causes: "
                + "; ".join(NONFINITE_CAUSES) + ". Fix the cause and resume from the last checkpoint.")
        return HealthWarning(
            "nonfinite", step,
            f"non-finite {what} at step {step}: update skipped ({self.consecutive}/{self.max_bad_steps} in a row "
            f"before stopping). Pairs: {_ids_text(ids)}. Likely causes: " + "; ".join(NONFINITE_CAUSES[:3]),
            {"what": what, "pair_ids": ids, "consecutive": self.consecutive})


def _ids_text(ids: Sequence[str], limit: int = 20) -> str:
    if not ids:
        return "(ids unknown)"
    shown = ", ".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def gradients_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient entry is finite (parameters without a gradient are ignored)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
    return bool(torch.isfinite(norm))


def guard_optimizer_step(guard: NonFiniteGuard, model: torch.nn.Module, step: int,
                         health_log: HealthLog | None = None, check_gradients: bool = True) -> bool:
    """Call right before `optimizer.step()`. True = skip: the gradients are set to None, so torch
    optimizers leave every parameter (and its Adam moments) untouched. Raises TrainingDiverged
    after `max_bad_steps` skipped steps in a row."""
    params = [p for p in model.parameters() if p.requires_grad]
    warning = guard.end_step(step, gradients_finite(params) if check_gradients else True)
    if warning is None:
        return False
    model.zero_grad(set_to_none=True)
    if health_log is not None:
        health_log.emit(warning)
    return True


# ---------------------------------------------------------------------------------------------
# Instability, degradation, length hacking


class SpikeMonitor:
    """A value (loss, grad norm) jumping over `factor` x its running median.

    The median is over the last `window` values; nothing fires before `warmup` values. With
    `above_start`, a spike must also exceed the median of the first `warmup` values, so a late
    bounce of a loss that has fallen far (0.05 -> 0.3) is not called a blow-up. After a warning the
    monitor is quiet for `cooldown` values.
    """

    def __init__(self, metric: str, factor: float = 3.0, window: int = 50, warmup: int = 5,
                 above_start: bool = True, cooldown: int = 20):
        self.metric, self.factor, self.warmup, self.above_start, self.cooldown = metric, factor, warmup, above_start, cooldown
        self.values: deque[float] = deque(maxlen=window)
        self.start: list[float] = []
        self._quiet_until = -1
        self._seen = 0

    def update(self, step: int, value: float) -> HealthWarning | None:
        if value is None or not math.isfinite(value):
            return None  # non-finite values are the guard's business
        self._seen += 1
        warning = None
        if len(self.values) >= self.warmup and self._seen > self._quiet_until:
            median = statistics.median(self.values)
            start = statistics.median(self.start)
            if median > 0 and value > self.factor * median and (not self.above_start or value > start):
                self._quiet_until = self._seen + self.cooldown
                warning = HealthWarning(
                    f"{self.metric}_spike", step,
                    f"{self.metric} spiked to {value:.4g} at step {step}, {value / median:.1f}x its running median "
                    f"{median:.4g}: training may be unstable. Remedies: {SPIKE_REMEDIES}.",
                    {"value": value, "median": median, "factor": value / median})
        if len(self.start) < self.warmup:
            self.start.append(value)
        self.values.append(value)
        return warning


def _correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    try:
        return statistics.correlation(list(xs), list(ys))
    except statistics.StatisticsError:  # fewer than 2 points or a constant input
        return None


class DegradationMonitor:
    """Both responses becoming less likely: over the last `window` logged points the chosen
    log-probs fall steadily (correlation with the step <= -`min_trend`) while the reward margins
    rise (>= `min_trend`), and chosen log-probs have dropped from their start by more than
    max(`min_drop` nats, `min_relative_drop` x |start|). Warns once."""

    def __init__(self, window: int = 8, min_trend: float = 0.8, min_drop: float = 1.0,
                 min_relative_drop: float = 0.05):
        self.window, self.min_trend, self.min_drop, self.min_relative_drop = window, min_trend, min_drop, min_relative_drop
        self.points: deque[tuple[int, float, float]] = deque(maxlen=window)
        self.start: float | None = None
        self.fired = False

    def update(self, step: int, chosen_logps: float, margin: float) -> HealthWarning | None:
        if chosen_logps is None or margin is None or not (math.isfinite(chosen_logps) and math.isfinite(margin)):
            return None
        if self.start is None:
            self.start = chosen_logps
        self.points.append((step, chosen_logps, margin))
        if self.fired or len(self.points) < self.window:
            return None
        steps = [p[0] for p in self.points]
        chosen = [p[1] for p in self.points]
        margins = [p[2] for p in self.points]
        chosen_trend, margin_trend = _correlation(steps, chosen), _correlation(steps, margins)
        drop = self.start - chosen_logps
        if (chosen_trend is None or margin_trend is None or chosen_trend > -self.min_trend
                or margin_trend < self.min_trend or drop <= max(self.min_drop, self.min_relative_drop * abs(self.start))):
            return None
        self.fired = True
        return HealthWarning(
            "degradation", step,
            f"chosen log-probs fell from {self.start:.4g} to {chosen_logps:.4g} while reward margins rose to "
            f"{margin:.4g}: the model makes both answers less likely, not the chosen one more likely. "
            f"Remedies: {DEGRADATION_REMEDIES}.",
            {"chosen_start": self.start, "chosen_now": chosen_logps, "margin": margin,
             "chosen_trend": chosen_trend, "margin_trend": margin_trend})


class LengthBiasMonitor:
    """Reward hacking by length: the Pearson correlation between each pair's reward margin and its
    length difference (chosen tokens - rejected tokens), over the last `window` pairs, above
    `threshold` once at least `min_pairs` pairs were seen. Warns once."""

    def __init__(self, threshold: float = 0.6, min_pairs: int = 32, window: int = 512):
        self.threshold, self.min_pairs = threshold, min_pairs
        self.margins: deque[float] = deque(maxlen=window)
        self.length_diffs: deque[float] = deque(maxlen=window)
        self.fired = False

    def update(self, step: int, margins: Iterable[float], length_diffs: Iterable[float]) -> HealthWarning | None:
        for m, d in zip(margins, length_diffs):
            if math.isfinite(m):
                self.margins.append(float(m))
                self.length_diffs.append(float(d))
        if self.fired or len(self.margins) < self.min_pairs:
            return None
        corr = _correlation(self.length_diffs, self.margins)
        if corr is None or corr <= self.threshold:
            return None
        self.fired = True
        longer = sum(d > 0 for d in self.length_diffs) / len(self.length_diffs)
        return HealthWarning(
            "length_bias", step,
            f"reward margins track length: correlation {corr:.2f} between margin and length difference over the "
            f"last {len(self.margins)} pairs (chosen is longer in {longer:.0%} of them). The model may be learning "
            f"'longer is better'. Remedies: {LENGTH_REMEDIES}.",
            {"correlation": corr, "pairs": len(self.margins), "chosen_longer_fraction": longer})


SAMPLED_LENGTH_METRIC = "eval_sampled_length"  # mean tokens of the greedy answers to the probe prompts


class SampledLengthMonitor:
    """Reward hacking by length, seen in generations: the mean length (tokens) of the model's
    answers to a fixed set of prompts grows past `max_growth` x its first measurement (and by at
    least `min_tokens`). Warns once."""

    def __init__(self, max_growth: float = 1.5, min_tokens: float = 8.0):
        self.max_growth, self.min_tokens = max_growth, min_tokens
        self.baseline: float | None = None
        self.fired = False

    def update(self, step: int, mean_length: float) -> HealthWarning | None:
        if self.baseline is None:
            self.baseline = mean_length
            return None
        if self.fired or mean_length <= self.baseline * self.max_growth or mean_length - self.baseline < self.min_tokens:
            return None
        self.fired = True
        return HealthWarning(
            "sampled_length", step,
            f"answers to the fixed eval prompts grew from {self.baseline:.1f} to {mean_length:.1f} tokens on average "
            f"({mean_length / max(self.baseline, 1e-9):.1f}x): possible reward hacking by length. Remedies: {LENGTH_REMEDIES}.",
            {"baseline": self.baseline, "mean_length": mean_length})


def sampled_answer_lengths(model, tokenizer, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 128) -> list[int]:
    """Lengths in tokens (end-of-turn token included) of `model`'s greedy answers to `prompts`, decoded
    together through the one sampler (`sampling.LocalGenerator`). A prompt is a user message (rendered
    with the tokenizer's chat template) or the token ids of a rendered prompt (a validation pair's
    `prompt_ids`). The model's train/eval mode is restored."""
    from prefloop.models import autocast_for
    from prefloop.sampling import LocalGenerator, SamplingParams

    was_training = model.training
    model.eval()
    try:
        generator = LocalGenerator(model, tokenizer)
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        rows = [(generator.encode_chat([{"role": "user", "content": p}]) if isinstance(p, str) else list(p), params)
                for p in prompts]
        with autocast_for(model):  # a LoRA run's frozen weights may be kept in bf16 (run.py)
            return [len(sample.token_ids) for sample in generator.generate(rows)]
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Settings


def check_settings(cfg) -> list[HealthWarning]:
    """Settings that usually go wrong; each a warning (the run still starts)."""
    warnings = []
    lr = float(getattr(cfg, "learning_rate", 0.0) or 0.0)
    tuning = getattr(cfg, "finetuning_type", "lora")
    limit = 5e-4 if tuning == "lora" else 1e-5
    if lr > limit:
        warnings.append(HealthWarning(
            "setting", 0,
            f"learning_rate {lr:g} is above {limit:g}, where {tuning} DPO runs usually diverge or forget; "
            f"try {'5e-5 to 2e-4' if tuning == 'lora' else '5e-7 to 5e-6'}",
            {"key": "learning_rate", "value": lr, "limit": limit, "finetuning_type": tuning}))
    beta = float(getattr(cfg, "pref_beta", 0.1))
    names = getattr(cfg, "pref_loss", "sigmoid")
    names = [names] if isinstance(names, str) else list(names)
    if any(n != "simpo" for n in names) and not 0.01 <= beta <= 1:  # SimPO's beta is 2-10 by design
        warnings.append(HealthWarning(
            "setting", 0,
            f"pref_beta {beta:g} is outside 0.01-1: "
            + ("the policy may drift far from the reference" if beta < 0.01 else "the policy barely moves")
            + "; 0.1 is the usual DPO value",
            {"key": "pref_beta", "value": beta}))
    epochs = float(getattr(cfg, "num_train_epochs", 1.0) or 0.0)
    if epochs > 3 and getattr(cfg, "max_steps", -1) in (None, -1, 0):
        warnings.append(HealthWarning(
            "setting", 0,
            f"num_train_epochs {epochs:g} is more than 3: DPO overfits preference data fast (chosen log-probs fall, "
            "answers get longer); 1-3 epochs is usual",
            {"key": "num_train_epochs", "value": epochs}))
    return warnings


def early_stopping_callback(cfg, args=None) -> EarlyStoppingCallback | None:
    """transformers' EarlyStoppingCallback from `early_stopping_patience`, or None when unset.

    Needs evaluation and a metric: `args.metric_for_best_model` (e.g. "eval_loss") with
    `load_best_model_at_end: true` in the TrainingArguments the trainer builds."""
    patience = getattr(cfg, "early_stopping_patience", None)
    if patience is None:
        return None
    if args is not None and (getattr(args, "eval_strategy", "no") in ("no", None)
                             or getattr(args, "metric_for_best_model", None) is None):
        raise ConfigError("early_stopping_patience needs evaluation and a metric: set val_size, eval_strategy: steps "
                          "(the trainer sets metric_for_best_model: eval_loss)")
    return EarlyStoppingCallback(early_stopping_patience=int(patience),
                                 early_stopping_threshold=float(getattr(cfg, "early_stopping_threshold", 0.0) or 0.0))


# ---------------------------------------------------------------------------------------------
# The transformers callback


class HealthCallback(TrainerCallback):
    """Feeds the monitors during `Trainer.train()`.

    - `observe_batch(...)`: called by `PreferenceTrainer.pair_loss` (training only), once per micro-batch.
    - `on_pre_optimizer_step`: skips the update on non-finite loss/gradients (grads set to None).
    - `on_log`: loss and grad-norm spikes, degradation (from `logps/chosen`, `rewards/margins`), and the
      sampled-answer length (`eval_sampled_length`, logged by every evaluation, step 0 included).
    - `on_train_begin`: risky settings, once.
    """

    def __init__(self, cfg=None, output_dir: str | Path | None = None, tb_writer: Any = None,
                 max_bad_steps: int | None = None, loss_spike_factor: float = 3.0, grad_spike_factor: float = 5.0):
        self.cfg = cfg
        out = output_dir if output_dir is not None else getattr(cfg, "output_dir", None)
        self.log = HealthLog(out, tb_writer)
        bad = max_bad_steps if max_bad_steps is not None else getattr(cfg, "max_bad_steps", 3)
        self.guard = NonFiniteGuard(bad)
        self.loss_spikes = SpikeMonitor("loss", factor=loss_spike_factor)
        self.grad_spikes = SpikeMonitor("grad_norm", factor=grad_spike_factor, above_start=False)
        self.degradation = DegradationMonitor()
        self.length_bias = LengthBiasMonitor()
        self.sampled_length = SampledLengthMonitor()
        self._step = 0
        self._settings_checked = False

    # --- fed by the trainer -------------------------------------------------------------------
    def observe_batch(self, loss, pair_ids: Sequence[str] | None = None, policy=None, output=None) -> bool:
        """One training micro-batch: its loss, pair ids, and optionally the `SequenceLogps` and
        `LossOutput` (for the length-bias monitor). True when the loss is not finite."""
        if policy is None or output is None or not isinstance(loss, torch.Tensor):
            return self.guard.observe_batch(loss, pair_ids)
        # One host transfer for the loss, the margins and the length differences (one sync per step).
        margins = (output.chosen_rewards - output.rejected_rewards).detach().float().reshape(-1)
        diffs = (policy.chosen_tokens - policy.rejected_tokens).detach().float().reshape(-1).to(margins.device)
        values = torch.cat([loss.detach().float().reshape(1).to(margins.device), margins, diffs]).tolist()
        bad = self.guard.observe_batch(values[0], pair_ids)
        if not bad:
            n = margins.numel()
            self.log.emit(self.length_bias.update(self._step, values[1:1 + n], values[1 + n:]))
        return bad

    # --- transformers events --------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.log.quiet = not state.is_world_process_zero  # every rank checks; rank 0 reports
        if self.log.path is None and getattr(args, "output_dir", None):
            self.log.path = Path(args.output_dir) / HEALTH_FILE
        if not self._settings_checked and self.cfg is not None:
            self._settings_checked = True
            for warning in check_settings(self.cfg):
                warning.step = state.global_step
                self.log.emit(warning)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._step = state.global_step + 1  # the step this update would complete
        if model is not None:
            # With fp16 loss scaling the scaler already skips overflowing steps and lowers its scale;
            # only a non-finite loss counts then, or the first scale search would stop the run.
            check_grads = getattr(optimizer, "scaler", None) is None
            guard_optimizer_step(self.guard, model, self._step, self.log, check_grads)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            self.log.emit(self.loss_spikes.update(step, float(logs["loss"])))
        if logs.get("grad_norm") is not None:
            self.log.emit(self.grad_spikes.update(step, float(logs["grad_norm"])))
        if "logps/chosen" in logs and "rewards/margins" in logs:
            self.log.emit(self.degradation.update(step, float(logs["logps/chosen"]), float(logs["rewards/margins"])))
        if logs.get(SAMPLED_LENGTH_METRIC) is not None:
            self.log.emit(self.sampled_length.update(step, float(logs[SAMPLED_LENGTH_METRIC])))

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if control.should_training_stop and getattr(self.cfg, "early_stopping_patience", None):
            self.log.emit(HealthWarning(
                "early_stopping", state.global_step,
                f"early stopping at step {state.global_step}: {args.metric_for_best_model} did not improve for "
                f"{self.cfg.early_stopping_patience} evaluations (best {state.best_metric})",
                {"metric": args.metric_for_best_model, "best": state.best_metric}))


def monitor_log_history(log_history: Sequence[dict]) -> list[HealthWarning]:
    """The log-fed monitors (spikes, degradation) replayed over a finished run's
    `trainer_state.json` `log_history`: what they would have said during training."""
    callback = HealthCallback()
    for entry in log_history:
        callback.on_log(None, SimpleNamespace(global_step=entry.get("step", 0)), None, logs=entry)
    return callback.log.warnings


def install_health(trainer, cfg) -> HealthCallback:
    """Add the health callback (and early stopping, when configured and not already there) to a `transformers.Trainer`;
    the TensorBoard callback's writer, when there is one, also gets the warnings as text."""
    from transformers.integrations import TensorBoardCallback

    tensorboard = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)
    writer: Callable[[], Any] | None = (lambda: getattr(tensorboard, "tb_writer", None)) if tensorboard else None
    callback = HealthCallback(cfg, output_dir=trainer.args.output_dir, tb_writer=writer)
    has_early = any(isinstance(c, EarlyStoppingCallback) for c in trainer.callback_handler.callbacks)
    early = None if has_early else early_stopping_callback(cfg, trainer.args)
    if early is not None:
        trainer.add_callback(early)
    trainer.add_callback(callback)  # after early stopping, so on_evaluate sees its decision
    return callback
