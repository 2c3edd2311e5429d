"""A request queue in front of one local model: concurrent clients are batched together.

The web server runs many requests at once but the model should run one batch at a time. The
engine's worker thread takes every request waiting in the queue (up to `max_batch_rows`
sequences; a request with n choices is n rows), decodes them as one batch with
`LocalGenerator`, and hands each request its own rows back. Requests that arrive during a batch
wait for the next one, so nobody is refused and nobody waits for more than one batch.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from prefloop.sampling import LocalGenerator, Sample, SamplingParams, UpdateCallback
from prefloop.serve.protocol import MESSAGE_FIELDS


@dataclass
class _Job:
    rows: list[tuple[list[int], SamplingParams]]
    on_update: UpdateCallback | None
    future: Future
    cancel: threading.Event | None = None


class GenerationEngine:
    """Thread-safe front of a `LocalGenerator`; `submit` returns a Future of the job's Samples."""

    def __init__(self, generator: LocalGenerator, max_batch_rows: int = 16):
        self.generator = generator
        self.max_batch_rows = max(1, max_batch_rows)
        self.batches_run = 0
        self.largest_batch = 0
        self.rows_cancelled = 0  # rows whose client went away before or while they were decoded
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="prefloop-generation", daemon=True)
        self._worker.start()

    @property
    def tokenizer(self):
        return self.generator.tokenizer

    @property
    def context_length(self) -> int | None:
        return self.generator.context_length

    @property
    def vocab_size(self) -> int | None:
        return getattr(getattr(self.generator.model, "config", None), "vocab_size", None)

    @property
    def template_fields(self) -> frozenset:
        """Optional message fields (protocol.MESSAGE_FIELDS) that the model's chat template renders, found
        by rendering a probe conversation with each (`ChatTemplate.renders`; cached per template). A tool
        result's links (`tool_call_id`, `name`) need no rendering: see protocol.TOOL_LINK_FIELDS."""
        template = self.generator.template
        return frozenset(name for name in MESSAGE_FIELDS if name != "tool_call_id" and template.renders(name))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.generator.encode_chat(messages)

    def submit(
        self, rows: list[tuple[list[int], SamplingParams]], on_update: UpdateCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Future:
        """Queue `rows`; `on_update(row, text_delta, logprobs, finished)` is called from the worker thread.
        Setting `cancel` (e.g. when the client goes away) ends the job's rows at the next decode step
        (finish_reason "cancelled"); a job cancelled while it waits is not decoded at all."""
        future: Future = Future()
        self._queue.put(_Job(rows, on_update, future, cancel))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, rows, closing = [first], len(first.rows), False
        while rows < self.max_batch_rows:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                closing = True
                break
            if rows + len(job.rows) > self.max_batch_rows:
                self._queue.put(job)  # goes to the back; it leads the next batch
                break
            jobs.append(job)
            rows += len(job.rows)
        return jobs, closing

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, closing = self._take_batch(first)
            self._run_batch(jobs)
            if closing:
                return

    def _run_batch(self, jobs: list[_Job]) -> None:
        for job in [j for j in jobs if j.cancel is not None and j.cancel.is_set()]:
            job.future.cancel()
            jobs.remove(job)
            self.rows_cancelled += len(job.rows)
        if not jobs:
            return
        owners: list[tuple[_Job, int]] = [(job, r) for job in jobs for r in range(len(job.rows))]
        rows = [row for job in jobs for row in job.rows]

        def dispatch(index: int, delta: str, logprobs: list, finished: Sample | None) -> None:
            job, local = owners[index]
            if job.on_update is None:
                return
            try:
                job.on_update(local, delta, logprobs, finished)
            except Exception:  # noqa: BLE001 - e.g. the client went away; the other rows carry on
                job.on_update = None

        def cancelled(index: int) -> bool:
            cancel = owners[index][0].cancel
            return cancel is not None and cancel.is_set()

        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        try:
            samples = self.generator.generate(rows, on_update=dispatch, cancelled=cancelled)
        except Exception as err:  # noqa: BLE001 - every waiting client gets the error, the worker lives on
            for job in jobs:
                job.future.set_exception(err)
            return
        self.rows_cancelled += sum(s.finish_reason == "cancelled" for s in samples)
        start = 0
        for job in jobs:
            job.future.set_result(samples[start : start + len(job.rows)])
            start += len(job.rows)
