"""prefloop's encoding, truncation, label masking and per-sequence log-probs against TRL 1.16's own code.

    cd REPO && PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 bench/.venv/bin/python bench/check_encode.py   # ~30 s

Exit status 1 when a case differs from TRL and the difference is not one of the documented, deliberate
ones (README, "Parity with TRL and LLaMA-Factory"); each documented difference is checked to be exactly
that difference, so a case passes only when prefloop's output is TRL's output changed in the way the
README says.

TRL is the peer, not a prefloop dependency: this runs only in the bench's environment (bench/setup.sh).
Nothing is re-implemented on TRL's side:
- token ids: `DPOTrainer._prepare_dataset` itself (prompt extraction, EOS for text data, its tokenize_fn,
  its `max_length` filter), called with the same conversation;
- truncation: that plus `DataCollatorForPreference(max_length, truncation_mode)`;
- per-sequence log-probs: TRL's fused LM head (`add_fused_lm_head`, the call `DPOTrainer._compute_loss`
  makes: `model(input_ids, attention_mask, labels=..., fused_lm_head=True).log_probs`) on the batch TRL's
  collator builds, summed per row as `_compute_loss` does; with `ld_alpha`, `DPOTrainer._compute_loss`
  itself with a stand-in trainer (`logps/chosen` and `logps/rejected` of one pair at a time); and the IPO
  and length-normalized losses (`ipo`, `sigmoid_norm`: averaged per token in TRL) from `_compute_loss`;
  also for models that scale their logits (Granite, Cohere) or attend within a sliding window (Mistral,
  Gemma 2), in every batch layout.
The models are the tiny random ones of `prefloop.testing` (Qwen2 with ChatML; Llama with a BOS token);
the SmolLM2 tokenizer is used too when `models/SmolLM2-135M-Instruct` (scripts/fetch_model.sh; or
$PREFLOOP_MODEL_DIR) exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

warnings.filterwarnings("ignore")

from prefloop.data.encode import encode_pairs  # noqa: E402
from prefloop.data.formats import record_to_pair  # noqa: E402
from prefloop.data.template import BUILTIN_TEMPLATES, get_template  # noqa: E402
from prefloop.testing import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from prefloop.train.collate import LAYOUTS, collate_pairs  # noqa: E402
from prefloop.train.logps import pair_logps  # noqa: E402
from prefloop.train.losses import LossSpec, SequenceLogps, preference_loss  # noqa: E402

from check_losses import _Accelerator  # noqa: E402 - the stand-in accelerator TRL's loss code asks for (bench/)

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = Path(os.environ.get("PREFLOOP_MODEL_DIR", ROOT / "models" / "SmolLM2-135M-Instruct"))
LOGPS_TOL = 1e-4  # fp32, summed over up to ~60 tokens
LOSS_TOL = 1e-5

# Documented deliberate differences (README, "Parity with TRL and LLaMA-Factory"): the verdict's wording.
TRAILER = "documented: TRL also trains on what the template writes after the end of turn"
TEXT_DATA = "documented: a string prompt is rendered with the chat template (TRL: raw text + EOS)"
EOT_AS_TEXT = "documented: an end-of-turn token written in the answer is removed (TRL trains it twice)"
TRUNCATION = "documented: prefloop cuts the prompt's oldest text, TRL the sequence's end"
KEEP_END = "documented: TRL keep_end cuts the sequence's start (system prompt, BOS, markup)"
PROMPT_FILLS = "documented: TRL drops a pair whose prompt fills max_length; prefloop cuts the prompt"


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, group: str, case: str, verdict: str) -> None:
        self.rows.append((group, case, verdict))

    def print(self) -> int:
        width = max(len(f"{g} / {c}") for g, c, _ in self.rows)
        bad = 0
        for group, case, verdict in self.rows:
            bad += verdict.startswith("DIFFERS")
            print(f"{group + ' / ' + case:<{width}}  {verdict}")
        print(f"\n{len(self.rows)} cases: {sum(v == 'equal' for *_, v in self.rows)} equal, "
              f"{sum(v.startswith('documented') for *_, v in self.rows)} documented differences, {bad} undocumented")
        return bad


# ------------------------------------------------------------------------------------------------
# Tokenizers and cases
# ------------------------------------------------------------------------------------------------


def tokenizers():
    """(name, tokenizer, prefloop template name or None) for every tokenizer/template checked."""
    chatml = build_tiny_tokenizer()
    out = [("tiny ChatML (own template)", chatml, None)]
    for name in ("chatml", "llama3", "mistral", "alpaca", "vicuna", "phi3", "gemma", "default"):
        tok = build_tiny_tokenizer()
        if name in ("llama3", "mistral", "gemma"):  # families whose template writes a BOS token
            tok.add_special_tokens({"bos_token": "<s>"})
        if name in ("mistral", "alpaca", "vicuna", "default"):
            tok.add_special_tokens({"eos_token": "</s>"})
        tok.chat_template = BUILTIN_TEMPLATES[name].source  # TRL renders with the tokenizer's template
        out.append((f"tiny + {name}", tok, name))
    if (SMOLLM2 / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        out.append(("SmolLM2", AutoTokenizer.from_pretrained(SMOLLM2), None))
    return out


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


ENCODE_CASES = {
    "single turn": {"prompt": [user("What is the capital of France?")],
                    "chosen": [assistant("The capital of France is Paris.")],
                    "rejected": [assistant("I do not know.")]},
    "system prompt": {"prompt": [{"role": "system", "content": "Be very brief."}, user("Name a fruit.")],
                      "chosen": [assistant("Apple.")], "rejected": [assistant("A banana is a fruit, and so is...")]},
    "multi-turn history": {"prompt": [user("hi"), assistant("Hello! How can I help?"), user("Two plus two?")],
                           "chosen": [assistant("Four.")], "rejected": [assistant("Five.")]},
    "answer starts with a space": {"prompt": [user("Say a word")], "chosen": [assistant(" water")],
                                   "rejected": [assistant(" fire")]},
    "answer starts with a newline": {"prompt": [user("Code?")], "chosen": [assistant("\ndef f(): return 1")],
                                     "rejected": [assistant("\nprint(1)")]},
    "prompt ends with a space": {"prompt": [user("Complete: the sun is ")], "chosen": [assistant("hot")],
                                 "rejected": [assistant("cold")]},
    "non-ASCII": {"prompt": [user("Übersetze: Wasser")], "chosen": [assistant("水 — water ✓")],
                  "rejected": [assistant("火")]},
    "empty answer": {"prompt": [user("Say nothing.")], "chosen": [assistant("")], "rejected": [assistant("No.")]},
    "implicit prompt (TRL chosen/rejected conversations)": {
        "chosen": [user("Capital of Italy?"), assistant("Rome.")],
        "rejected": [user("Capital of Italy?"), assistant("Paris.")]},
}
EOT_CASE = {"prompt": [user("Hi")], "chosen": [assistant("Hello.{eot}")], "rejected": [assistant("Go away.{eot}")]}
TEXT_CASE = {"prompt": "What is the capital of France?", "chosen": " Paris.", "rejected": " Rome."}


_CONFIGS: dict = {}


def _dpo_config(max_length, truncation_mode):
    """TRL's own DPOConfig (its defaults), made once per setting."""
    from trl import DPOConfig

    key = (max_length, truncation_mode)
    if key not in _CONFIGS:
        with tempfile.TemporaryDirectory() as out:
            _CONFIGS[key] = DPOConfig(output_dir=out, max_length=max_length, truncation_mode=truncation_mode,
                                      report_to=[], use_cpu=True, bf16=False)
    return _CONFIGS[key]


def trl_ids(record: dict, tokenizer, max_length=None, truncation_mode="keep_start"):
    """TRL 1.16's token ids for one record: `DPOTrainer._prepare_dataset`, then its collator's truncation.
    Returns (prompt_ids, chosen_ids, rejected_ids) or None when TRL drops the record."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    args = _dpo_config(max_length, truncation_mode)
    stub = SimpleNamespace(_tokenizer=tokenizer)
    data = DPOTrainer._prepare_dataset(stub, Dataset.from_list([record]), tokenizer, args, "check")
    if len(data) == 0:
        return None
    row = data[0]
    if max_length is None:
        return row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id or 0, max_length=max_length,
                                      truncation_mode=truncation_mode)([row])
    seqs = []
    for i in range(2):
        n = int(batch["attention_mask"][i].sum())
        ids, mask = batch["input_ids"][i, :n].tolist(), batch["completion_mask"][i, :n].tolist()
        start = mask.index(1) if 1 in mask else n
        seqs.append((ids[:start], ids[start:]))
    return seqs[0][0], seqs[0][1], seqs[1][1], seqs[1][0]


def prefloop_ids(record: dict, tokenizer, template_name, cutoff=None):
    _, pair = record_to_pair(record)
    template = get_template(template_name, tokenizer)
    encoded, report = encode_pairs([pair], tokenizer, template, cutoff)
    if not encoded:
        return None, report, template
    e = encoded[0]
    return (list(e.prompt_ids), list(e.chosen_ids), list(e.rejected_ids)), report, template


def trailer_ids(tokenizer, template) -> list[int]:
    return tokenizer(template.reply_trailer, add_special_tokens=False)["input_ids"] if template.reply_trailer else []


def compare_ids(ours, theirs, tokenizer, template) -> str:
    """'equal', or the documented difference it is exactly, or DIFFERS."""
    if ours == theirs:
        return "equal"
    if ours is None or theirs is None:
        return f"DIFFERS: {'prefloop' if ours is None else 'TRL'} dropped the pair"
    trailer = trailer_ids(tokenizer, template)
    if trailer and ours[0] == theirs[0] and all(t == o + trailer for o, t in zip(ours[1:], theirs[1:])):
        return TRAILER + f" ({template.reply_trailer!r})"
    return f"DIFFERS: prompt {'same' if ours[0] == theirs[0] else 'differs'}; " + "; ".join(
        f"{side} prefloop {tokenizer.decode(o)!r} TRL {tokenizer.decode(t)!r}"
        for side, o, t in zip(("chosen", "rejected"), ours[1:], theirs[1:]) if o != t)


def check_encoding(table: Table) -> None:
    for tname, tok, template_name in tokenizers():
        for case, record in ENCODE_CASES.items():
            ours, _, template = prefloop_ids(record, tok, template_name)
            table.add(f"ids {tname}", case, compare_ids(ours, trl_ids(record, tok), tok, template))
        # An end-of-turn token written as text: prefloop removes it, TRL renders it and the template's own.
        template = get_template(template_name, tok)
        eot = template.end_of_turn
        record = {k: [dict(m, content=m["content"].format(eot=eot)) for m in v] for k, v in EOT_CASE.items()}
        ours, report, _ = prefloop_ids(record, tok, template_name)
        clean = {k: [dict(m, content=m["content"].format(eot="")) for m in v] for k, v in EOT_CASE.items()}
        as_clean = compare_ids(ours, trl_ids(clean, tok), tok, template)
        as_written = compare_ids(ours, trl_ids(record, tok), tok, template)
        if not as_written.startswith("DIFFERS"):  # the tokenizer reads it as plain text: nothing to remove
            verdict = as_written
        elif report.end_of_turn_in_text == 1 and not as_clean.startswith("DIFFERS"):
            verdict = EOT_AS_TEXT + ("" if as_clean == "equal" else "; " + as_clean)
        else:
            verdict = as_written
        table.add(f"ids {tname}", "end-of-turn written in the answer", verdict)
    # Text (non-conversational) data: TRL tokenizes raw text and appends EOS; prefloop renders the template.
    tok = build_tiny_tokenizer()
    ours, _, template = prefloop_ids(TEXT_CASE, tok, None)
    rendered = prefloop_ids({"prompt": [user(TEXT_CASE["prompt"])], "chosen": [assistant(TEXT_CASE["chosen"])],
                             "rejected": [assistant(TEXT_CASE["rejected"])]}, tok, None)[0]
    theirs = trl_ids(TEXT_CASE, tok)
    table.add("ids text data", "string prompt/chosen/rejected",
              "equal" if ours == theirs else TEXT_DATA if ours == rendered else "DIFFERS: not the rendered conversation")


# ------------------------------------------------------------------------------------------------
# Truncation
# ------------------------------------------------------------------------------------------------


def words(n: int, seed: int) -> str:
    from prefloop.testing import _WORDS

    g = torch.Generator().manual_seed(seed)
    vocab = [w for w in _WORDS if w.isalpha()]
    return " ".join(vocab[int(i)] for i in torch.randint(len(vocab), (n,), generator=g))


TRUNCATION_CASES = {
    "fits": ({"prompt": [user(words(8, 1))], "chosen": [assistant(words(10, 2))],
              "rejected": [assistant(words(6, 3))]}, 128),
    "long answers, short prompt": ({"prompt": [user(words(6, 4))], "chosen": [assistant(words(80, 5))],
                                    "rejected": [assistant(words(60, 6))]}, 128),
    "long rejected only (LLaMA-Factory #4402)": ({"prompt": [user(words(6, 7))], "chosen": [assistant(words(4, 8))],
                                                  "rejected": [assistant(words(90, 9))]}, 96),
    "long prompt, short answers": ({"prompt": [user(words(120, 10))], "chosen": [assistant(words(5, 11))],
                                    "rejected": [assistant(words(7, 12))]}, 128),
    "prompt over half of max_length": ({"prompt": [user(words(30, 26))], "chosen": [assistant(words(60, 27))],
                                        "rejected": [assistant(words(50, 28))]}, 128),
    "prompt alone over max_length": ({"prompt": [user(words(200, 13))], "chosen": [assistant(words(5, 14))],
                                      "rejected": [assistant(words(5, 15))]}, 128),
    "long multi-turn history": ({"prompt": [{"role": "system", "content": "Be brief."}, user(words(40, 16)),
                                            assistant(words(40, 17)), user(words(40, 18)), assistant(words(40, 19)),
                                            user(words(8, 20))],
                                 "chosen": [assistant(words(10, 21))], "rejected": [assistant(words(12, 22))]}, 160),
    "everything long": ({"prompt": [user(words(150, 23))], "chosen": [assistant(words(150, 24))],
                         "rejected": [assistant(words(140, 25))]}, 256),
}


def prefloop_truncation_ok(ours, report, full, cutoff, template, tok) -> str | None:
    """None when prefloop's truncated pair keeps its invariants (README): fits cutoff_len, both answers keep
    at least one token and start as the untruncated ones, the prompt keeps its system prompt and generation
    prompt, and the cut is counted; else what is wrong."""
    if ours is None:
        return "prefloop dropped it" + ("" if report.dropped else " without counting it")
    p, c, r = ours
    fp, fc, fr = full
    if len(p) + max(len(c), len(r)) > cutoff:
        return f"longer than cutoff_len ({len(p) + max(len(c), len(r))} > {cutoff})"
    if not c or not r or c != fc[:len(c)] or r != fr[:len(r)]:
        return "an answer is empty or not the start of the untruncated one"
    header = tok(template.render([user("x")], add_generation_prompt=True).split("x")[-1],
                 add_special_tokens=False)["input_ids"]
    if p[-len(header):] != header or p[:3] != fp[:3]:
        return "the prompt lost its start or its generation prompt"
    if (len(c), len(r)) != (len(fc), len(fr)) and not report.response_truncated:
        return "a cut answer is not counted"
    if len(p) != len(fp) and not report.prompt_truncated:
        return "a cut prompt is not counted"
    return None


def check_truncation(table: Table) -> None:
    tok = build_tiny_tokenizer()
    template = get_template(None, tok)
    for case, (record, cutoff) in TRUNCATION_CASES.items():
        full, _, _ = prefloop_ids(record, tok, None)
        ours, report, _ = prefloop_ids(record, tok, None, cutoff)
        problem = prefloop_truncation_ok(ours, report, full, cutoff, template, tok)
        trailer = trailer_ids(tok, template)
        for mode in ("keep_start", "keep_end"):
            theirs = trl_ids(record, tok, max_length=cutoff, truncation_mode=mode)
            if problem:
                verdict = f"DIFFERS: {problem}"
            elif theirs is None:
                verdict = PROMPT_FILLS if mode == "keep_start" else "DIFFERS: TRL dropped it"
            else:
                tp, tc, tr, trp = theirs
                # TRL's ids with its trailer taken off where an answer kept it, to compare like with like.
                strip = [ids[: len(ids) - len(trailer)] if trailer and ids[-len(trailer):] == trailer and
                         len(ids) == len(f) + len(trailer) else ids for ids, f in ((tc, full[1]), (tr, full[2]))]
                if mode == "keep_start" and [tp, *strip] == list(ours) and tp == trp:
                    verdict = "equal" if not trailer or (strip[0], strip[1]) == (tc, tr) else TRAILER
                elif mode == "keep_start":
                    verdict = TRUNCATION
                elif tp == trp == full[0] and [tp, *strip] == list(ours):
                    verdict = "equal" if (strip[0], strip[1]) == (tc, tr) else TRAILER
                elif tp != full[0] or trp != full[0]:
                    verdict = KEEP_END
                else:
                    verdict = TRUNCATION
            table.add(f"truncation max_length={cutoff} {mode}", case, verdict)


# ------------------------------------------------------------------------------------------------
# Label masking and log-probs
# ------------------------------------------------------------------------------------------------


def trl_batch_and_logps(model, tok, features):
    """TRL's collated batch for `features` and its per-sequence summed log-probs [2B] (fused head)."""
    import copy

    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)([dict(f) for f in features])
    fused = copy.deepcopy(model)
    add_fused_lm_head(fused, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = fused(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)
    seq_len = batch["completion_mask"].shape[1] - 1
    return batch, fused, out.log_probs[:, -seq_len:].sum(1)


def trl_compute_loss(fused, batch, loss_type, beta, ld_alpha, ref):
    """`DPOTrainer._compute_loss` on the real (fused-head) model with a stand-in trainer and the reference's
    log-probs given in the batch (`precompute_ref_log_probs`). Returns (loss, metrics)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    fused.training = True
    stub = SimpleNamespace(
        model=fused, accelerator=_Accelerator(), ld_alpha=ld_alpha, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, args=SimpleNamespace(discopop_tau=0.05), use_weighting=False,
        aux_loss_enabled=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    pairs = batch["input_ids"].shape[0] // 2
    inputs = dict(batch, ref_chosen_logps=ref[:pairs], ref_rejected_logps=ref[pairs:])
    with torch.no_grad():
        loss = DPOTrainer._compute_loss(stub, fused, inputs, False)
    return float(loss), {k: v[-1] for k, v in stub._metrics["train"].items()}


def encoded_features(tok, template_name=None):
    """Features of the encoding cases (unequal lengths, multi-turn, system prompt) for the log-prob checks."""
    template = get_template(template_name, tok)
    pairs = [record_to_pair(r)[1] for r in ENCODE_CASES.values()]
    encoded, _ = encode_pairs(pairs, tok, template)
    return [{"prompt_ids": list(e.prompt_ids), "chosen_ids": list(e.chosen_ids), "rejected_ids": list(e.rejected_ids)}
            for e in encoded]


def check_masking(table: Table) -> None:
    """The tokens that count: prefloop's target index vs TRL's completion mask (shifted), on the same ids."""
    tok = build_tiny_tokenizer()
    features = encoded_features(tok)
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    trl = DataCollatorForPreference(pad_token_id=tok.pad_token_id)([dict(f) for f in features])
    mask = trl["completion_mask"][:, 1:].bool()
    want = sorted((int(r), int(c), int(trl["input_ids"][r, c + 1])) for r, c in mask.nonzero())
    ours = collate_pairs(features, "padded", tok.pad_token_id)
    got = sorted(zip(ours["target_rows"].tolist(), ours["target_cols"].tolist(), ours["target_ids"].tolist()))
    table.add("label masking", "padded: predicted tokens", "equal" if got == want else
              f"DIFFERS: {len(got)} tokens vs TRL's {len(want)}")
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    counts = [(f["chosen_ids"].count(eot), f["rejected_ids"].count(eot)) for f in features]
    table.add("label masking", "end of turn counted once per answer",
              "equal" if all(c == (1, 1) for c in counts) else f"DIFFERS: {counts}")


def check_logps(table: Table) -> None:
    for arch in ("qwen2", "llama"):
        tok = build_tiny_tokenizer()
        template_name = None
        if arch == "llama":  # a Llama tokenizer with BOS, the llama3 template writing it
            tok.add_special_tokens({"bos_token": "<s>"})
            template_name = "llama3"
        model = build_tiny_model(tok, arch=arch, seed=3)
        features = encoded_features(tok, template_name)
        batch, fused, trl_logps = trl_batch_and_logps(model, tok, features)
        pairs = len(features)
        for layout in LAYOUTS:
            with torch.no_grad():
                out = pair_logps(model, collate_pairs(features, layout, tok.pad_token_id), chunk_size=5)
            ours = torch.cat([out.seq.chosen, out.seq.rejected])
            diff = float((ours - trl_logps).abs().max())
            table.add(f"logps {arch}", f"summed, {layout}",
                      "equal" if diff < LOGPS_TOL else f"DIFFERS: max |diff| {diff:.2e}")
        # ld_alpha, and losses that average per token, through _compute_loss itself.
        g = torch.Generator().manual_seed(0)
        ref = trl_logps + torch.randn(2 * pairs, generator=g) * 2
        with torch.no_grad():
            padded = collate_pairs(features, "packed_prefix_shared", tok.pad_token_id)
            plain = pair_logps(model, padded).seq
        reference = SequenceLogps(ref[:pairs], ref[pairs:], plain.chosen_tokens, plain.rejected_tokens)
        for loss_type in ("sigmoid", "ipo", "sigmoid_norm"):
            trl_loss, _ = trl_compute_loss(fused, batch, loss_type, 0.1, None, ref)
            ours = float(preference_loss(plain, reference, LossSpec(names=[loss_type], beta=0.1)).losses.mean())
            diff = abs(ours - trl_loss) / max(1.0, abs(trl_loss))
            table.add(f"loss {arch}", loss_type, "equal" if diff < LOSS_TOL else f"DIFFERS: {ours} vs TRL {trl_loss}")
        for alpha in (0.5, 0.0):
            diffs = []
            for i in range(pairs):
                one = batch_of(batch, i, pairs)
                _, metrics = trl_compute_loss(fused, one, "sigmoid", 0.1, alpha, torch.zeros(2))
                with torch.no_grad():
                    seq = pair_logps(model, collate_pairs([features[i]], "prefix_shared", tok.pad_token_id),
                                     ld_alpha=alpha).seq
                diffs += [abs(float(seq.chosen) - metrics["logps/chosen"]),
                          abs(float(seq.rejected) - metrics["logps/rejected"])]
            table.add(f"logps {arch}", f"ld_alpha={alpha}",
                      "equal" if max(diffs) < LOGPS_TOL else f"DIFFERS: max |diff| {max(diffs):.2e}")


def _other_models(tok):
    """Tiny random models of families whose forward does more than head(decoder(x)): logit scaling (Granite,
    Cohere) and sliding-window attention (Mistral, Gemma 2 with alternating layers; window 8 tokens)."""
    from transformers import (CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig,
                              GraniteForCausalLM, MistralConfig, MistralForCausalLM)

    kw = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
              tie_word_embeddings=False)
    torch.manual_seed(0)
    yield "granite (logits_scaling)", GraniteForCausalLM(GraniteConfig(**kw, logits_scaling=3.0)).eval()
    yield "cohere (logit_scale)", CohereForCausalLM(CohereConfig(**kw, logit_scale=0.3)).eval()
    yield "mistral (sliding window 8)", MistralForCausalLM(MistralConfig(**kw, sliding_window=8)).eval()
    yield "gemma2 (sliding window 8)", Gemma2ForCausalLM(Gemma2Config(**kw, head_dim=16, sliding_window=8)).eval()


def check_other_models(table: Table) -> None:
    tok = build_tiny_tokenizer()
    features = encoded_features(tok)
    for name, model in _other_models(tok):
        _, _, trl_logps = trl_batch_and_logps(model, tok, features)
        for layout in LAYOUTS:
            with torch.no_grad():
                out = pair_logps(model, collate_pairs(features, layout, tok.pad_token_id), chunk_size=5)
            diff = float((torch.cat([out.seq.chosen, out.seq.rejected]) - trl_logps).abs().max())
            table.add(f"logps {name}", f"summed, {layout}",
                      "equal" if diff < LOGPS_TOL else f"DIFFERS: max |diff| {diff:.2e}")


def batch_of(batch, i, pairs):
    """Pair i of a TRL batch as a batch of one (its chosen and rejected rows), trimmed of shared padding."""
    rows = torch.tensor([i, pairs + i])
    one = {k: batch[k][rows] for k in ("input_ids", "attention_mask", "completion_mask")}
    width = int(one["attention_mask"].sum(1).max())
    return {k: v[:, :width] for k, v in one.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    torch.manual_seed(0)
    table = Table()
    check_encoding(table)
    check_truncation(table)
    check_masking(table)
    check_logps(table)
    check_other_models(table)
    bad = table.print()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
