"""Audit of the sampler against transformers and the house rules: layering, top-k/top-p as
transformers' warpers, stop strings, empty and too-long prompts, the context limit."""

import subprocess
import sys

import pytest
import torch

from prefloop.errors import DataError
from prefloop.sampling import LocalGenerator, PromptTooLong, SamplingParams, choose_tokens, sampling_logits


def test_inference_modules_import_no_training_code():
    """Inference code never imports prefloop.train (the sampler took the attention backends' names from it)."""
    modules = ["prefloop.sampling", "prefloop.generate", "prefloop.chat", "prefloop.chat_clients",
               "prefloop.serve.app", "prefloop.serve.engine", "prefloop.serve.protocol", "prefloop.judge.run"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'prefloop.train' or m.startswith('prefloop.train.')))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_training_and_inference_share_the_attention_names():
    from prefloop import attention_names
    from prefloop.train import attention, flex, varlen

    assert attention.IMPLEMENTATION == attention_names.SEGMENTS and flex.IMPLEMENTATION == attention_names.FLEX
    assert varlen.IMPLEMENTATION == attention_names.VARLEN
    assert attention.SDPA_MASK_IMPLEMENTATION == attention_names.SDPA_MASK


def _transformers_warped(logits, temperature, top_k, top_p):
    """What transformers' generate samples from: temperature, then top-k, then top-p (min_tokens_to_keep=1)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


def _ours(logits, temperature, top_k, top_p):
    rows = logits.shape[0]
    return sampling_logits(logits, torch.full((rows,), temperature), torch.full((rows,), top_k),
                           torch.full((rows,), top_p, dtype=torch.float64))


@pytest.mark.parametrize("probs, top_p", [
    ([0.5, 0.25, 0.125, 0.125], 0.75),  # the top two hold exactly top_p: the rest goes
    ([0.5, 0.25, 0.125, 0.125], 0.5),  # the top token alone holds top_p
    ([0.4, 0.2, 0.2, 0.2], 0.5),  # ties at the boundary
    ([0.25, 0.25, 0.25, 0.25], 0.5),  # all tied
    ([0.7, 0.2, 0.1], 0.1),  # below the top token: it alone stays
])
def test_top_p_matches_transformers_on_the_boundary_and_on_ties(probs, top_p):
    logits = torch.tensor([probs]).log()
    expected = _transformers_warped(logits, 1.0, 0, top_p)
    assert torch.equal(_ours(logits, 1.0, 0, top_p), expected)


def test_top_p_drops_the_token_past_an_exact_boundary_when_sampling():
    """probs 0.5, 0.25, 0.125, 0.125 and top_p 0.75: the top two hold 0.75, so tokens 2 and 3 are never
    sampled (TopPLogitsWarper); the old filter kept token 2 too (the mass above it was not > top_p)."""
    logits = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    rows = 3000
    gens = [torch.Generator().manual_seed(s) for s in range(rows)]
    tokens = torch.tensor(choose_tokens(logits.repeat(rows, 1), [SamplingParams(top_p=0.75)] * rows, gens))
    counts = torch.bincount(tokens, minlength=4)
    assert counts[2] == 0 and counts[3] == 0 and counts[1] > rows / 4


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 0, 0.9), (0.7, 0, 0.5), (1.3, 5, 1.0), (1.0, 3, 0.8), (0.5, 1, 0.3), (1.0, 60, 0.95), (2.0, 2, 1e-9),
])
def test_temperature_top_k_top_p_match_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = (torch.randn(16, 50) * 3).round(decimals=0)  # rounded: many ties, at the k-th and elsewhere
    ours = _ours(logits, temperature, top_k, top_p)
    expected = torch.cat([_transformers_warped(row[None], temperature, top_k, top_p) for row in logits])
    assert torch.equal(ours, expected)


def test_top_k_limits_the_sampled_tokens():
    logits = torch.tensor([[3.0, 2.9, 2.8, 2.7, -1.0]])
    rows = 400
    gens = [torch.Generator().manual_seed(s) for s in range(rows)]
    tokens = choose_tokens(logits.repeat(rows, 1), [SamplingParams(top_k=2)] * rows, gens)
    assert set(tokens) == {0, 1}


def _ops_of_choose_tokens(params: SamplingParams, rows: int = 3) -> set[str]:
    """The aten ops `choose_tokens` runs for `rows` rows with `params` (a dispatch mode records them)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    logits = torch.randn(rows, 50)
    gens = [torch.Generator().manual_seed(s) for s in range(rows)]
    with Recorder() as recorder:
        choose_tokens(logits, [params] * rows, gens)
    return recorder.names


def test_sampling_without_top_k_reads_nothing_back_and_sorts_nothing():
    """Neither top_k nor top_p set (what serve and generate always send for top_k): no filter runs and no
    value is read back from the device (`_local_scalar_dense`: a sync per decode step on a GPU). Before,
    every step built a top_k tensor and tested `bool((top_k > 0).any())`."""
    plain = _ops_of_choose_tokens(SamplingParams(temperature=0.7, seed=1))
    assert not plain & {"_local_scalar_dense", "sort", "topk", "any"}, plain
    top_p = _ops_of_choose_tokens(SamplingParams(top_p=0.9))  # top-p sorts, but reads nothing back either
    assert "sort" in top_p and not top_p & {"_local_scalar_dense", "topk", "any"}, top_p


def test_top_k_takes_the_k_largest_without_sorting_the_vocabulary():
    ops = _ops_of_choose_tokens(SamplingParams(top_k=5))
    assert "topk" in ops and "sort" not in ops, ops


@pytest.fixture(scope="module")
def gen(tiny_tokenizer):
    from prefloop.testing import build_tiny_model

    return LocalGenerator(build_tiny_model(tiny_tokenizer), tiny_tokenizer)


def _forced(first: int, second: int) -> dict:
    """Greedy settings under which the tiny model answers first, second, first (see test_sampling.forced)."""
    return dict(temperature=0.0, logit_bias=((first, 100.0), (second, 98.0), (0, -100.0), (2, -100.0)),
                frequency_penalty=2.0, presence_penalty=2.0)


def test_the_answer_is_cut_at_the_earliest_stop_string_not_the_first_listed(gen, tiny_tokenizer):
    """Token 323 ("ount") brings "o" and "t" in one step: stop=["t", "o"] cuts before "o" (the earliest),
    not before "t" (the first in the list)."""
    first, second = 300, 323  # "ld", "ount"
    assert tiny_tokenizer.decode([first]) == "ld" and tiny_tokenizer.decode([second]) == "ount"
    prompt = gen.encode_chat([{"role": "user", "content": "hello"}])
    for stream in (False, True):
        deltas = []
        on_update = (lambda row, delta, logprobs, done: deltas.append(delta)) if stream else None
        cut = gen.generate([(prompt, SamplingParams(3, **_forced(first, second), stop=("t", "o")))], on_update)[0]
        assert cut.text == "ld" and cut.finish_reason == "stop"
        if stream:
            assert "".join(deltas) == "ld"


def test_a_stop_string_spanning_two_tokens_cuts_the_answer(gen):
    prompt = gen.encode_chat([{"role": "user", "content": "hello"}])
    for stream in (False, True):
        deltas = []
        on_update = (lambda row, delta, logprobs, done: deltas.append(delta)) if stream else None
        cut = gen.generate([(prompt, SamplingParams(3, **_forced(300, 323), stop=("dou",)))], on_update)[0]
        assert cut.text == "l" and cut.finish_reason == "stop" and cut.token_ids == [300, 323]
        if stream:
            assert "".join(deltas) == "l"


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "  \n"}],
    [{"role": "system", "content": "You are helpful."}],
    [{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": ""}]}],
])
def test_an_empty_prompt_is_a_data_error(gen, messages):
    with pytest.raises(DataError, match="no user message holds any text"):
        gen.encode_chat(messages)


def test_generating_from_no_prompt_tokens_is_a_data_error_not_a_crash(gen):
    with pytest.raises(DataError, match="the prompt is empty"):
        gen.generate([([], SamplingParams(3))])


def _short_context(tiny_tokenizer, context: int):
    from prefloop.testing import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    model.config.max_position_embeddings = context
    return LocalGenerator(model, tiny_tokenizer)


def test_a_prompt_longer_than_the_context_is_prompt_too_long(tiny_tokenizer):
    gen = _short_context(tiny_tokenizer, 40)
    with pytest.raises(PromptTooLong, match="maximum context length is 40 tokens") as info:
        gen.encode_chat([{"role": "user", "content": "word " * 60}])
    assert info.value.code == "context_length_exceeded" and info.value.prompt_tokens > 40
    assert isinstance(info.value, DataError)
    with pytest.raises(PromptTooLong):
        gen.generate([(list(range(3, 43)), SamplingParams(3))])


def test_an_answer_reaching_the_context_stops_there_with_length(tiny_tokenizer):
    """The answer may not run past max_position_embeddings (a garbage continuation, or a crash with learned
    positions): it ends with "length" where prompt and answer fill the context, streamed or not."""
    gen = _short_context(tiny_tokenizer, 40)
    prompt = gen.encode_chat([{"role": "user", "content": "hello"}])
    no_stop = SamplingParams(200, temperature=0, logit_bias=tuple((t, -100.0) for t in sorted(gen.stop_ids)))
    for on_update in (None, lambda *args: None):
        [sample] = gen.generate([(prompt, no_stop)], on_update)
        assert sample.finish_reason == "length" and len(prompt) + len(sample.token_ids) == 40


def test_generate_reports_too_long_prompts_with_file_and_line(tiny_model_dir, tmp_path, capsys):
    """Each prompt that cannot be answered fails alone, named by file:line with the reason; the rest are written.
    (An empty prompt never gets here: the prompt reader refuses it, test_generate.py.)"""
    import json
    import shutil

    from prefloop.generate import generate_command

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 60}))
    prompts = tmp_path / "p.jsonl"
    records = [{"prompt": "word " * 80}, {"prompt": "Name a city."}, {"prompt": "word " * 90}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    assert generate_command(str(model), str(prompts), str(out), n=1, max_new_tokens=200, batch_size=2) == 1
    err = capsys.readouterr().err
    assert f"{prompts}:1 (id p:1): PromptTooLong: messages: this model's maximum context length is 60" in err
    assert f"{prompts}:3 (id p:3): PromptTooLong: messages: this model's maximum context length is 60" in err
    assert "2 prompts cannot be sent to this model" in err
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["messages"] == [{"role": "user", "content": "Name a city."}]


def test_greedy_answers_equal_transformers_generate_alone_and_in_a_batch(tiny_tokenizer):
    """The one decode loop (left-padded batch, KV cache, eager decode steps) gives transformers' own greedy
    `generate` tokens, stopping at the same end-of-turn; float64 so that no argmax is decided by rounding."""
    from prefloop.testing import build_tiny_model, to_float64

    model = to_float64(build_tiny_model(tiny_tokenizer))
    gen = LocalGenerator(model, tiny_tokenizer)
    prompts = [gen.encode_chat([{"role": "user", "content": text}]) for text in ("hi", "tell me a story " * 4, "x y")]
    params = SamplingParams(10, temperature=0)
    together = gen.generate([(p, params) for p in prompts])
    for prompt, sample in zip(prompts, together):
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=10, do_sample=False, eos_token_id=sorted(gen.stop_ids),
                                 pad_token_id=gen.pad_id)
        expected = out[0, len(prompt):].tolist()
        stopped = bool(expected) and expected[-1] in gen.stop_ids
        assert sample.token_ids == (expected[:-1] if stopped else expected)
        assert sample.finish_reason == ("stop" if stopped else "length")
        assert gen.generate([(prompt, params)])[0].token_ids == sample.token_ids


def test_a_model_with_an_adapter_prompts_with_the_adapters_own_template(tiny_model_dir, tmp_path):
    """`serve BASE --adapter OUT` (what the model card says to run) and eval's chat mode load the tokenizer the
    adapter was saved with (its trained chat template), not the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefloop.sampling import LocalGenerator

    adapter = tmp_path / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                               "{% if add_generation_prompt %}[assistant] {% endif %}")
    tokenizer.save_pretrained(adapter)
    generator = LocalGenerator.load(str(tiny_model_dir), adapter=str(adapter))
    ids = generator.encode_chat([{"role": "user", "content": "Hi"}])
    assert generator.tokenizer.decode(ids) == "[user] Hi\n[assistant] "
    plain = LocalGenerator.load(str(tiny_model_dir))  # without the adapter: the base's own template
    assert "[user]" not in plain.tokenizer.decode(plain.encode_chat([{"role": "user", "content": "Hi"}]))
