"""A sequence-classification reward model as a judge: one scalar score per (prompt, answer).

The conversation with the answer as the final assistant turn is rendered with the reward model's
own chat template (or, with `template_from`, the chat template of another tokenizer, e.g. the
policy's, for a reward model saved without one) and scored by `AutoModelForSequenceClassification`
(one output label). Batches are right-padded; transformers pools the last non-padding token, which
is what the model saw in training, so a batched score equals the score of the text alone. With a
`cache` (a `JudgmentCache` file), scores already computed are read back, so an interrupted run
resumes and a rerun recomputes nothing.
"""

from __future__ import annotations

import torch

from prefloop.errors import ConfigError


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def reward_dtype(device: str, precision: str = "auto") -> torch.dtype:
    """The weights' dtype: `precision` ("fp32", "bf16", "fp16"), or "auto": bf16 on a CUDA GPU that has it,
    else fp32. Raises ConfigError for another name."""
    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    if precision not in PRECISIONS:
        raise ConfigError(f"reward-model precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    return PRECISIONS[precision]


class RewardModel:
    """A scalar reward model loaded from `path` (a local AutoModelForSequenceClassification directory).

    `device`: "auto" (CUDA when visible, else the CPU) or a torch device name; `precision`: see
    `reward_dtype`; `template_from`: a model or tokenizer directory whose chat template renders the
    conversation (default: the reward model's own). Raises ModelLoadError when the directory does not
    load, ConfigError when the model has more than one output label or no chat template is found."""

    def __init__(self, path: str, batch_size: int = 8, device: str = "auto", precision: str = "auto",
                 template_from: str | None = None):
        from transformers import AutoModelForSequenceClassification

        from prefloop.data.template import ChatTemplate, get_template
        from prefloop.models import ModelLoadError, load_tokenizer

        self.path, self.batch_size = path, max(1, batch_size)
        self.tokenizer = load_tokenizer(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = reward_dtype(device, precision)
        self.precision = {v: k for k, v in PRECISIONS.items()}[dtype]
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        except Exception as err:  # noqa: BLE001 - re-raised with what to do
            raise ModelLoadError(f"could not load a sequence-classification reward model from {path}: {err}") from err
        if self.model.config.num_labels != 1:
            raise ConfigError(f"{path} has {self.model.config.num_labels} output labels; a reward model has one "
                              "(a scalar score). Is this a classifier rather than a reward model?")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if template_from:
            source = get_template(None, load_tokenizer(template_from)).source
            self.template = ChatTemplate("tokenizer", source, self.tokenizer)
        else:
            self.template = get_template(None, self.tokenizer)
        self.template_from = template_from or path
        self.device = device

    def _text(self, messages: list[dict], answer: str) -> str:
        return self.template.render(list(messages) + [{"role": "assistant", "content": answer}])

    @torch.inference_mode()
    def score(self, items: list[tuple[list[dict], str]], cache=None) -> list[float]:
        """Scores of (conversation, answer) items, in order (one float per item, the model's logit).

        `cache` (a `prefloop.judge.cache.JudgmentCache`): items scored before are read from it, new
        scores are appended to it batch by batch."""
        texts = [self._text(m, a) for m, a in items]
        keys = [self._key(t) for t in texts] if cache is not None else [None] * len(texts)
        scores: list[float | None] = [(cache.get(k) or {}).get("score") if cache is not None else None for k in keys]
        todo = [i for i, s in enumerate(scores) if s is None]
        self.tokenizer.padding_side = "right"
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in chunk], add_special_tokens=False, padding=True,
                                   return_tensors="pt").to(self.device)
            logits = self.model(**batch).logits
            for i, v in zip(chunk, logits[:, 0].float().cpu()):
                scores[i] = float(v)
                if cache is not None:
                    cache.put(keys[i], {"score": scores[i]})
        return scores

    def _key(self, text: str) -> str:
        import hashlib

        return hashlib.sha256(f"{self.path}\0{self.precision}\0{text}".encode("utf-8")).hexdigest()
