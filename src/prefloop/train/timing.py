"""Wall-clock time per stage of a training run: where the time outside the training loop goes.

    watch = Stopwatch(sync_cuda=True)
    with watch.stage("data"):
        ...
    watch.line()       # "Time: data 0.4 s, model 1.2 s, train 5.1 s, other 0.1 s (total 6.8 s)"
    watch.metrics()    # {"time/data_s": 0.4, "time/model_s": 1.2, "time/train_s": 5.1, "time/total_s": 6.8}

A stage entered twice (the sample answers before and after training) adds up. With `sync_cuda`, each stage
ends with `torch.cuda.synchronize()`, so work a stage queued on the GPU counts in that stage, not in the
next one that happens to wait for it. The total runs from the Stopwatch's creation; time spent between
stages counts only in the total (and in "other" in the printed line).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

# Printed names of stages whose key is not already readable.
LABELS = {"memory_plan": "memory plan", "eval_before": "eval before", "eval_after": "eval after"}


class Stopwatch:
    def __init__(self, sync_cuda: bool = False):
        self.sync_cuda = sync_cuda
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}  # in the order the stages first ran

    def _sync(self) -> None:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()

    @contextmanager
    def stage(self, name: str):
        """Time the block as stage `name` (added to an earlier stage of the same name)."""
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return time.perf_counter() - self.started

    def metrics(self, total: float | None = None) -> dict[str, float]:
        """`time/<stage>_s` for every stage, and `time/total_s`, in seconds to the millisecond (stages rounded
        down, the total up: the stages never add up to more than the total)."""
        total = self.total() if total is None else total
        out = {f"time/{name}_s": math.floor(s * 1000) / 1000 for name, s in self.seconds.items()}
        out["time/total_s"] = math.ceil(total * 1000) / 1000
        return out

    def line(self, total: float | None = None, fold_below: float = 0.05) -> str:
        """One line for a person: every stage of at least `fold_below` seconds, the rest (shorter stages and
        the time between stages) as "other", and the total."""
        total = self.total() if total is None else total
        shown = [(name, s) for name, s in self.seconds.items() if s >= fold_below]
        other = total - sum(s for _, s in shown)
        parts = [f"{LABELS.get(name, name)} {s:.1f} s" for name, s in shown]
        if other >= fold_below:
            parts.append(f"other {other:.1f} s")
        return f"Time: {', '.join(parts)} (total {total:.1f} s)"
