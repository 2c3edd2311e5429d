"""Batch layouts for preference pairs: padded, packed, prefix-shared, packed prefix-shared.

A batch is a dict of tensors (so `transformers.Trainer` / accelerate move it to the device) that
`train/logps.py` turns into per-sequence log-probs. Every layout carries the same *target index*:
for each response token, the (row, column) of the hidden state that predicts it, the token id, the
sequence it belongs to and its offset in its response. So `logps.py` never needs to know where a
layout put things, and all layouts give the same numbers.

Layouts (B pairs):
- ``padded``: the plain computation. 2B rows, ``prompt+chosen`` (rows 0..B-1) then
  ``prompt+rejected`` (rows B..2B-1), right-padded, with a 2D ``attention_mask`` and HF-style
  ``labels`` (-100 outside responses) that `pair_logps_reference` uses.
- ``packed``: padding-free. The 2B sequences are laid end to end (first-fit decreasing) in rows of
  at most ``row_tokens`` tokens, with per-sequence position ids and a block-diagonal causal mask.
- ``prefix_shared``: one row per pair, ``[prompt, chosen, rejected]``. Chosen and rejected both
  attend to the prompt but not to each other; rejected's positions restart after the prompt.
- ``packed_prefix_shared``: the prefix-shared units of all pairs packed end to end.

The attention structure of the non-padded layouts travels compactly as ``attn_segments`` (which
unit of the row a token belongs to, -1 for padding) and ``attn_branches`` (0 = shared prompt or a
whole sequence, 1 = chosen, 2 = rejected), and as ``attn_plan``, the units of each row read from them
once here on the CPU (`train/attention.py`); `logps.py` runs segment attention with the plan on SDPA
models or expands segments and branches into a 4D mask for eager attention.
Token i may attend to token j when j <= i, both are in the same segment, and j is in the shared
branch or in i's branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefloop.train.attention import segment_plan

LAYOUTS = ("padded", "packed", "prefix_shared", "packed_prefix_shared")
IGNORE_INDEX = -100
OPTIONAL_FLOATS = {"weight": 1.0, "margin": 0.0}
REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
CHOSEN, REJECTED = 0, 1


@dataclass
class _Row:
    """One row under construction: tokens and their per-token annotations."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    branches: list[int] = field(default_factory=list)
    num_units: int = 0

    def add(self, ids: list[int], positions: list[int], branches: list[int]) -> int:
        """Append one unit (a sequence, or a prefix-shared pair); returns its start column."""
        start = len(self.ids)
        self.ids += ids
        self.positions += positions
        self.branches += branches
        self.segments += [self.num_units] * len(ids)
        self.num_units += 1
        return start


@dataclass
class _Targets:
    """The target index, one entry per response token (see module docstring)."""

    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def add_response(self, row: int, predictor_cols: list[int], ids: list[int], seq: int) -> None:
        self.rows += [row] * len(ids)
        self.cols += predictor_cols
        self.ids += ids
        self.seqs += [seq] * len(ids)
        self.offsets += range(len(ids))


def collate_pairs(features: list[dict], layout: str, pad_token_id: int, row_tokens: int | None = None) -> dict:
    """Batch B encoded pairs in `layout` (one of LAYOUTS).

    `features`: dicts with "prompt_ids", "chosen_ids", "rejected_ids" (lists of int) and optional
    float scalars "weight" (default 1), "margin" (default 0), "ref_chosen_logps",
    "ref_rejected_logps" (cached reference log-probs: all features have them or none do).
    `row_tokens` (packed layouts only): the capacity of one packed row. Default: the longest unit of
    the batch, so attention with a dense mask never costs more than the padded layout; pass a large
    value to put every sequence in one row.

    Returns input_ids/position_ids [R, L] plus either attention_mask + labels (padded) or
    attn_segments + attn_branches (other layouts), the target index (target_rows, target_cols,
    target_ids, target_seqs, target_offsets: [N], N = response tokens; target_seqs is pair index
    for chosen and B + pair index for rejected), and the per-pair float32 tensors [B].
    Raises ValueError for a pair with an empty prompt or an empty answer (nothing to train on).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown batch layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if not features:
        raise ValueError("collate_pairs needs at least one pair")
    for i, f in enumerate(features):
        if len(f["prompt_ids"]) == 0:
            raise ValueError(f"pair {i} of the batch has an empty prompt: the first response token has no "
                             f"position to be predicted from; encode a prompt of at least one token")
        empty = [side for side in ("chosen", "rejected") if len(f[f"{side}_ids"]) == 0]
        if empty:
            raise ValueError(f"pair {i} of the batch ({f.get('id') or 'no id'}) has an empty {empty[0]} answer: no "
                             f"token of it would be trained and its log-prob would be 0; encode answers of at least "
                             f"one token (encode_pairs drops pairs truncated to nothing)")
    if layout == "padded":
        batch = _padded(features, pad_token_id)
    else:
        prefix = layout in ("prefix_shared", "packed_prefix_shared")
        packed = layout in ("packed", "packed_prefix_shared")
        batch = _structured(features, pad_token_id, prefix_shared=prefix, packed=packed, row_tokens=row_tokens)
    batch.update(_pair_scalars(features))
    return batch


def _pair_scalars(features: list[dict]) -> dict:
    out = {key: torch.tensor([float(f.get(key, default) if f.get(key) is not None else default) for f in features],
                             dtype=torch.float32)
           for key, default in OPTIONAL_FLOATS.items()}
    present = [all(f.get(k) is not None for k in REFERENCE_KEYS) for f in features]
    if any(present) and not all(present):
        missing = [i for i, p in enumerate(present) if not p]
        raise ValueError(f"pairs {missing[:10]} of the batch have no cached reference log-probs while others do; "
                         f"compute the reference for the whole dataset")
    if all(present):
        for key in REFERENCE_KEYS:
            out[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
    return out


def _padded(features: list[dict], pad_token_id: int) -> dict:
    num_pairs = len(features)
    sequences, label_rows, targets = [], [], _Targets()
    for side, key in ((CHOSEN, "chosen_ids"), (REJECTED, "rejected_ids")):
        for b, f in enumerate(features):
            prompt, response = list(f["prompt_ids"]), list(f[key])
            row = len(sequences)
            sequences.append(prompt + response)
            label_rows.append([IGNORE_INDEX] * len(prompt) + response)
            first = len(prompt)
            targets.add_response(row, list(range(first - 1, first - 1 + len(response))), response,
                                 side * num_pairs + b)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, (seq, lab) in enumerate(zip(sequences, label_rows)):
        input_ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        labels[r, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        attention_mask[r, : len(seq)] = 1
    position_ids = torch.arange(width, dtype=torch.long).expand(len(sequences), width).clone()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "labels": labels, **_target_tensors(targets)}


def _units(features: list[dict], prefix_shared: bool) -> list[tuple]:
    """The units to lay out: (ids, positions, branches, responses) where responses lists
    (seq index, predictor columns relative to the unit start, token ids)."""
    num_pairs = len(features)
    units = []
    for b, f in enumerate(features):
        prompt, chosen, rejected = list(f["prompt_ids"]), list(f["chosen_ids"]), list(f["rejected_ids"])
        p, c, r = len(prompt), len(chosen), len(rejected)
        if prefix_shared:
            ids = prompt + chosen + rejected
            positions = list(range(p + c)) + list(range(p, p + r))
            branches = [0] * p + [1] * c + [2] * r
            # Rejected's first token is predicted from the last prompt token, not the last chosen one.
            rejected_cols = [p - 1] + list(range(p + c, p + c + r - 1)) if r else []
            responses = [(b, list(range(p - 1, p - 1 + c)), chosen), (num_pairs + b, rejected_cols, rejected)]
            units.append((ids, positions, branches, responses))
        else:
            for side, response in ((CHOSEN, chosen), (REJECTED, rejected)):
                n = p + len(response)
                units.append((prompt + response, list(range(n)), [0] * n,
                              [(side * num_pairs + b, list(range(p - 1, p - 1 + len(response))), response)]))
    return units


def _pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: unit indices per row, each row's total length <= capacity."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def _structured(features, pad_token_id, prefix_shared: bool, packed: bool, row_tokens: int | None) -> dict:
    units = _units(features, prefix_shared)
    lengths = [len(u[0]) for u in units]
    if packed:
        capacity = max(row_tokens or 0, max(lengths))
        assignment = _pack(lengths, capacity)
    else:
        assignment = [[i] for i in range(len(units))]
    rows, targets = [], _Targets()
    for r, unit_indices in enumerate(assignment):
        row = _Row()
        for i in unit_indices:
            ids, positions, branches, responses = units[i]
            start = row.add(ids, positions, branches)
            for seq, cols, tokens in responses:
                targets.add_response(r, [start + c for c in cols], tokens, seq)
        rows.append(row)
    width = max(len(row.ids) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    branches = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row.ids)
        input_ids[r, :n] = torch.tensor(row.ids, dtype=torch.long)
        position_ids[r, :n] = torch.tensor(row.positions, dtype=torch.long)
        segments[r, :n] = torch.tensor(row.segments, dtype=torch.long)
        branches[r, :n] = torch.tensor(row.branches, dtype=torch.long)
    return {"input_ids": input_ids, "position_ids": position_ids, "attn_segments": segments,
            "attn_branches": branches, "attn_plan": segment_plan(segments, branches), **_target_tensors(targets)}


def _target_tensors(t: _Targets) -> dict:
    return {"target_rows": torch.tensor(t.rows, dtype=torch.long),
            "target_cols": torch.tensor(t.cols, dtype=torch.long),
            "target_ids": torch.tensor(t.ids, dtype=torch.long),
            "target_seqs": torch.tensor(t.seqs, dtype=torch.long),
            "target_offsets": torch.tensor(t.offsets, dtype=torch.long)}


def attention_mask_4d(segments: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
    """Boolean [R, 1, L, L] mask (True = may attend) from `attn_segments`/`attn_branches`.

    Padding tokens attend only to themselves, so no softmax row is empty (no NaN in forward or
    backward); nothing reads their outputs.
    """
    length = segments.shape[-1]
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    br_q, br_k = branches[:, :, None], branches[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    mask = causal & (seg_q == seg_k) & (seg_k >= 0) & ((br_k == 0) | (br_k == br_q))
    mask |= torch.eye(length, dtype=torch.bool, device=segments.device) & (seg_q < 0)
    return mask[:, None]
