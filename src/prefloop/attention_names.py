"""The names under which prefloop's attention backends are registered with transformers.

Shared by training (`train/attention.py`, `train/flex.py`, `train/varlen.py`, which register the
functions) and inference (`sampling.py`, which must recognise a model that trained with one of them
and still holds it in its config) so that inference code never imports training code.
"""

SEGMENTS = "prefloop_segments"
VARLEN = "prefloop_varlen"
FLEX = "prefloop_flex"
SDPA_MASK = "prefloop_sdpa_mask"

# backend name (the `attn_backend` config value) -> transformers attention implementation name
IMPLEMENTATIONS = {"segments": SEGMENTS, "varlen": VARLEN, "flex": FLEX, "sdpa_mask": SDPA_MASK}

# Without a segment plan / layout / block mask (generation, padded batches) each of these runs
# transformers' SDPA exactly (train/attention.py `_register`), so inference treats them as "sdpa".
RUNS_SDPA = frozenset(IMPLEMENTATIONS.values())
