"""Encoded pairs as a torch Dataset of feature dicts, and the collator the Trainer calls.

A feature is what `collate_pairs` reads: prompt/chosen/rejected ids, `weight`, `margin`, and (once
the reference cache has run) `ref_chosen_logps` / `ref_rejected_logps`; optionally the per-pair
vectors in VECTOR_KEYS, which the collator stacks to [B, K]. The collator adds two
things the trainer pops before the model sees the batch: `pair_ids` (for logs and health
messages) and `num_tokens` (for throughput).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from prefloop.data.schema import EncodedPair
from prefloop.train.collate import collate_pairs

BOOKKEEPING_KEYS = ("pair_ids", "num_tokens")
# "dimension_agree": per-dimension agreement with the pair's direction (data/dimensions.py);
# "margin_rewards": MODPO's margin reward gaps (train/modpo.py).
VECTOR_KEYS = {"dimension_agree": torch.long, "margin_rewards": torch.float32}


def to_feature(pair: EncodedPair, index: int) -> dict:
    return {
        "prompt_ids": list(pair.prompt_ids),
        "chosen_ids": list(pair.chosen_ids),
        "rejected_ids": list(pair.rejected_ids),
        "weight": float(pair.weight),
        "margin": float(pair.margin),
        "id": pair.id or f"#{index}",
    }


class PairDataset(Dataset):
    """A list of feature dicts; the dicts are shared, so attaching reference log-probs updates it."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]

    @classmethod
    def from_encoded(cls, pairs: list[EncodedPair]) -> "PairDataset":
        return cls([to_feature(p, i) for i, p in enumerate(pairs)])


class PairCollator:
    """Batches features in `layout` (padded / packed / prefix_shared / packed_prefix_shared)."""

    def __init__(self, layout: str, pad_token_id: int, row_tokens: int | None = None):
        self.layout, self.pad_token_id, self.row_tokens = layout, pad_token_id, row_tokens

    def __call__(self, features: list[dict]) -> dict:
        batch = collate_pairs(features, self.layout, self.pad_token_id, self.row_tokens)
        for key, dtype in VECTOR_KEYS.items():  # per-pair vectors [B, K] (dimensions, MODPO); all features or none
            if features[0].get(key) is not None:
                batch[key] = torch.tensor([f[key] for f in features], dtype=dtype)
        batch["pair_ids"] = [f.get("id") for f in features]
        batch["num_tokens"] = torch.tensor(
            sum(2 * len(f["prompt_ids"]) + len(f["chosen_ids"]) + len(f["rejected_ids"]) for f in features)
        )
        return batch
