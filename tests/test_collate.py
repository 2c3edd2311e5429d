"""Batch layouts: hand-checked positions, targets and masks for tiny pairs."""

import pytest
import torch

from prefloop.train.collate import IGNORE_INDEX, LAYOUTS, attention_mask_4d, collate_pairs

PAD = 0
# Pair 0: prompt [11, 12], chosen [21, 22, 23], rejected [31]; pair 1: prompt [13], chosen [24], rejected [32, 33].
PAIRS = [
    {"prompt_ids": [11, 12], "chosen_ids": [21, 22, 23], "rejected_ids": [31], "weight": 2.0},
    {"prompt_ids": [13], "chosen_ids": [24], "rejected_ids": [32, 33], "margin": 0.5},
]


def _targets(batch):
    """(seq, offset) -> (token at the predictor position, target id), independent of the layout."""
    out = {}
    for r, c, t, s, o in zip(*(batch[k].tolist() for k in
                               ("target_rows", "target_cols", "target_ids", "target_seqs", "target_offsets"))):
        out[(s, o)] = (batch["input_ids"][r, c].item(), batch["position_ids"][r, c].item(), t)
    return out


def test_padded_rows_labels_and_targets():
    batch = collate_pairs(PAIRS, "padded", PAD)
    assert batch["input_ids"].tolist() == [
        [11, 12, 21, 22, 23], [13, 24, PAD, PAD, PAD], [11, 12, 31, PAD, PAD], [13, 32, 33, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    I = IGNORE_INDEX
    assert batch["labels"].tolist() == [[I, I, 21, 22, 23], [I, 24, I, I, I], [I, I, 31, I, I], [I, 32, 33, I, I]]
    assert batch["target_cols"].tolist() == [1, 2, 3, 0, 1, 0, 1]
    assert batch["weight"].tolist() == [2.0, 1.0] and batch["margin"].tolist() == [0.0, 0.5]
    assert "ref_chosen_logps" not in batch


EXPECTED_TARGETS = {
    # (seq, offset): (token that predicts, its position id, target)
    (0, 0): (12, 1, 21), (0, 1): (21, 2, 22), (0, 2): (22, 3, 23),
    (1, 0): (13, 0, 24),
    (2, 0): (12, 1, 31),
    (3, 0): (13, 0, 32), (3, 1): (32, 1, 33),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_predicts_each_response_token_from_the_same_context(layout):
    assert _targets(collate_pairs(PAIRS, layout, PAD)) == EXPECTED_TARGETS


def test_prefix_shared_row_positions_and_mask():
    batch = collate_pairs(PAIRS[:1], "prefix_shared", PAD)
    assert batch["input_ids"].tolist() == [[11, 12, 21, 22, 23, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2]]  # rejected restarts after the prompt
    mask = attention_mask_4d(batch["attn_segments"], batch["attn_branches"])[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 1],  # rejected sees the prompt and itself, not chosen
    ]


def test_packed_has_no_padding_and_a_block_diagonal_mask():
    batch = collate_pairs(PAIRS, "packed", PAD, row_tokens=100)
    assert batch["input_ids"].shape == (1, 5 + 3 + 2 + 3)  # every sequence in one row, no padding
    assert (batch["attn_segments"] >= 0).all()
    mask = attention_mask_4d(batch["attn_segments"], batch["attn_branches"])[0, 0]
    seg = batch["attn_segments"][0]
    assert torch.equal(mask, (seg[:, None] == seg[None, :]) & torch.ones_like(mask).tril())
    # position ids restart at 0 at every sequence start
    starts = torch.nonzero(torch.diff(seg, prepend=seg[:1] - 1)).flatten()
    assert batch["position_ids"][0, starts].tolist() == [0] * 4


def test_packed_rows_default_to_the_longest_sequence():
    batch = collate_pairs(PAIRS, "packed", PAD)
    assert batch["input_ids"].shape[1] == 5
    assert (batch["attn_segments"] >= 0).sum() == 13  # all tokens, fewer rows than the padded 4


def test_padding_tokens_attend_only_to_themselves():
    batch = collate_pairs(PAIRS, "prefix_shared", PAD)
    mask = attention_mask_4d(batch["attn_segments"], batch["attn_branches"])
    pads = batch["attn_segments"] < 0
    assert pads.any()
    row, col = torch.nonzero(pads)[0].tolist()
    assert mask[row, 0, col].nonzero().flatten().tolist() == [col]
    assert not mask[row, 0, ~pads[row]][:, col].any()


def test_reference_logps_pass_through():
    feats = [dict(p, ref_chosen_logps=-1.5, ref_rejected_logps=-2.5) for p in PAIRS]
    batch = collate_pairs(feats, "packed_prefix_shared", PAD)
    assert batch["ref_chosen_logps"].dtype == torch.float32
    assert batch["ref_rejected_logps"].tolist() == [-2.5, -2.5]


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown batch layout"):
        collate_pairs(PAIRS, "sideways", PAD)
    with pytest.raises(ValueError, match="empty prompt"):
        collate_pairs([dict(PAIRS[0], prompt_ids=[])], "padded", PAD)
    with pytest.raises(ValueError, match="reference"):
        collate_pairs([dict(PAIRS[0], ref_chosen_logps=-1.0, ref_rejected_logps=-1.0), PAIRS[1]], "padded", PAD)
