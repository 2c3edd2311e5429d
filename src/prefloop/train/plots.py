"""PNG plots of a training run's log history (`plot_loss: true`): loss, accuracies, margins.

Each plot shows the train curve (raw, plus an exponential moving average when there are enough
points) and the eval curve (`eval_` metric) against the global step.
"""

from __future__ import annotations

from pathlib import Path

PLOTTED = ("loss", "rewards/accuracies", "rewards/margins")


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(entry["step"], entry[key]) for entry in history if key in entry and "step" in entry]
    return [s for s, _ in points], [v for _, v in points]


def _smooth(values: list[float], weight: float = 0.8) -> list[float]:
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot_history(history: list[dict], output_dir: str | Path, keys=PLOTTED) -> list[Path]:
    """Write `training_<key>.png` for each key with data; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in keys:
        train_steps, train_values = _series(history, key)
        eval_steps, eval_values = _series(history, f"eval_{key}")
        if not train_values and not eval_values:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        if train_values:
            ax.plot(train_steps, train_values, color="#1f77b4", alpha=0.4 if len(train_values) >= 10 else 1.0,
                    label="train")
            if len(train_values) >= 10:
                ax.plot(train_steps, _smooth(train_values), color="#1f77b4", label="train (smoothed)")
        if eval_values:
            ax.plot(eval_steps, eval_values, "o-", color="#d62728", label="eval")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} during training")
        ax.grid(alpha=0.3)
        ax.legend()
        path = Path(output_dir) / f"training_{key.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
