"""A sequence-classification reward model as a judge: one scalar score per (prompt, answer).

The conversation with the answer as the final assistant turn is rendered with the reward model's
own chat template and scored by `AutoModelForSequenceClassification` (one output label). Batches
are right-padded; transformers pools the last non-padding token, which is what the model saw in
training, so a batched score equals the score of the text alone.
"""

from __future__ import annotations

import torch

from prefloop.errors import ConfigError


class RewardModel:
    def __init__(self, path: str, batch_size: int = 8):
        from transformers import AutoModelForSequenceClassification

        from prefloop.data.template import get_template
        from prefloop.models import ModelLoadError, load_tokenizer

        self.path, self.batch_size = path, max(1, batch_size)
        self.tokenizer = load_tokenizer(path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        except Exception as err:  # noqa: BLE001 - re-raised with what to do
            raise ModelLoadError(f"could not load a sequence-classification reward model from {path}: {err}") from err
        if self.model.config.num_labels != 1:
            raise ConfigError(f"{path} has {self.model.config.num_labels} output labels; a reward model has one "
                              "(a scalar score). Is this a classifier rather than a reward model?")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.template = get_template(None, self.tokenizer)
        self.device = device

    def _text(self, messages: list[dict], answer: str) -> str:
        return self.template.render(list(messages) + [{"role": "assistant", "content": answer}])

    @torch.inference_mode()
    def score(self, items: list[tuple[list[dict], str]]) -> list[float]:
        """Scores of (conversation, answer) items, in order."""
        scores: list[float] = []
        for start in range(0, len(items), self.batch_size):
            texts = [self._text(m, a) for m, a in items[start : start + self.batch_size]]
            self.tokenizer.padding_side = "right"
            batch = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)
            logits = self.model(**batch).logits
            scores.extend(float(v) for v in logits[:, 0].float().cpu())
        return scores
