"""The batched sampler: right distribution, top-p respected, rows independent of their batch."""

import torch

from prefloop.sampling import LocalGenerator, SamplingParams, choose_tokens


def draw(logits, params, seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return choose_tokens(logits, params, gens)


def test_sampling_follows_the_tempered_distribution():
    base = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    rows = 20000
    tokens = draw(base.repeat(rows, 1), [SamplingParams(temperature=0.7)] * rows, range(rows))
    freq = torch.bincount(torch.tensor(tokens), minlength=5).float() / rows
    expected = torch.softmax(base / 0.7, dim=-1)
    assert torch.allclose(freq, expected, atol=0.015)


def test_top_p_keeps_only_the_nucleus_and_greedy_takes_the_top():
    base = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    rows = 5000
    tokens = draw(base.repeat(rows, 1), [SamplingParams(temperature=1.0, top_p=0.7)] * rows, range(rows))
    freq = torch.bincount(torch.tensor(tokens), minlength=4).float() / rows
    assert freq[2] == 0 and freq[3] == 0  # outside the 0.7 nucleus {0.5, 0.3}
    assert abs(float(freq[0]) - 0.5 / 0.8) < 0.03
    assert draw(base.repeat(3, 1), [SamplingParams(temperature=0)] * 3, [1, 2, 3]) == [0, 0, 0]


def test_a_seeded_row_samples_the_same_alone_or_in_a_batch(tiny_tokenizer):
    from prefloop.testing import build_tiny_model

    gen = LocalGenerator(build_tiny_model(tiny_tokenizer), tiny_tokenizer)
    prompts = [gen.encode_chat([{"role": "user", "content": "word " * n}]) for n in (1, 5, 9)]
    params = [SamplingParams(12, temperature=1.0, top_p=0.9, seed=s) for s in (4, 5, 6)]
    together = gen.generate(list(zip(prompts, params)))
    alone = [gen.generate([(p, q)])[0] for p, q in zip(prompts, params)]
    assert [s.token_ids for s in together] == [s.token_ids for s in alone]
    assert len({tuple(s.token_ids) for s in together}) == 3


def test_penalties_and_logit_bias_follow_the_openai_formula():
    """logit[j] - c[j] * frequency - (c[j] > 0) * presence + bias[j], for the tokens generated so far."""
    from prefloop.sampling import adjust_logits

    logits = torch.zeros(2, 4)
    params = [SamplingParams(frequency_penalty=0.5, presence_penalty=1.0, logit_bias=((3, 2.0),)), None]
    out = adjust_logits(logits, params, [[1, 1, 2], [1]])
    assert out[0].tolist() == [0.0, -2.0, -1.5, 2.0]  # token 1 twice: -2*0.5-1; token 2 once: -0.5-1
    assert out[1].tolist() == [0.0] * 4 and logits.abs().sum() == 0  # a finished row and the input untouched
    assert adjust_logits(logits, [SamplingParams(), None], [[1], []]) is logits



def test_a_temperature_too_small_to_divide_by_is_greedy():
    """Logits / 1e-40 overflow float32 to inf and NaN; argmax of those picked an arbitrary token (an end of
    turn: an empty answer). Below GREEDY_BELOW (vLLM's 1e-5) the row is greedy, as at temperature 0."""
    from prefloop.sampling import GREEDY_BELOW

    base = torch.tensor([[0.5, 3.0, -1.0, 2.9, 0.0]])
    for temperature in (0.0, 1e-300, 1e-45, 1e-30, GREEDY_BELOW / 2):
        assert draw(base.repeat(4, 1), [SamplingParams(temperature=temperature)] * 4, range(4)) == [1] * 4
    # just above the threshold it is still a (very cold) sample of the same distribution, never NaN
    assert draw(base.repeat(4, 1), [SamplingParams(temperature=GREEDY_BELOW)] * 4, range(4)) == [1] * 4
