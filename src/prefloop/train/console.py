"""What a training run prints: metrics as numbers, live progress bars only on a terminal, and the
evaluation before training logged at step 0 like every other evaluation.

- transformers' ProgressCallback/PrinterCallback print `{'loss': '0.6931', ...}` (floats formatted into
  strings); `MetricsPrinter` prints the same dict with numbers (4 significant digits).
- When stderr is not a terminal (a log file, CI, `| tee`), tqdm's bars would write carriage returns
  and cursor-up escape codes (`\\x1b[A`) into the log: `live_bars()` is False there and every bar of the
  run (the Trainer's, the reference pass, transformers' loading bars) is switched off.
- `StepZeroEvaluation` logs the evaluation made before training (policy = reference) at step 0, so
  `trainer_state.json`, TensorBoard and the loss plots start there instead of at the first logging step.
"""

from __future__ import annotations

import sys

from transformers import PrinterCallback, ProgressCallback, TrainerCallback


def live_bars() -> bool:
    """True when progress bars can redraw in place (stderr is a terminal)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def quiet_library_bars() -> None:
    """Switch off transformers' and huggingface_hub's own progress bars (weight loading, shard writing)
    when they would only write escape codes into a log."""
    if live_bars():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def as_numbers(logs: dict) -> dict:
    """`logs` with floats rounded to 4 significant digits and kept as numbers (total_flos left out)."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}


class MetricsPrinter(ProgressCallback):
    """transformers' live progress bars, with each log line written above them as numbers."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs is not None:
            line = str(as_numbers(logs))
            if self.training_bar is not None:
                self.training_bar.write(line)  # above the live bar, not into it
            else:
                print(line, flush=True)


class PlainMetricsPrinter(TrainerCallback):
    """No bars (stderr is not a terminal): each log line printed to stdout as numbers."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs is not None:
            print(str(as_numbers(logs)), flush=True)


def use_metrics_printer(trainer) -> None:
    """Replace the Trainer's ProgressCallback or PrinterCallback with a printer of numbers, with live
    bars only when `args.disable_tqdm` is false."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(PlainMetricsPrinter() if trainer.args.disable_tqdm else MetricsPrinter())


class StepZeroEvaluation(TrainerCallback):
    """Logs `metrics` (the evaluation before training, `eval_` names) at step 0 when a run starts from
    step 0 (a resumed run already has them in its history)."""

    def __init__(self, trainer, metrics: dict):
        self.trainer, self.metrics = trainer, dict(metrics)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.metrics and state.global_step == 0 and not any("eval_loss" in h for h in state.log_history):
            self.trainer.log(dict(self.metrics))
        self.metrics = {}
