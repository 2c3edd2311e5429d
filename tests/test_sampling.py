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


def forced(first: int, second: int, *banned: int) -> dict:
    """Sampling settings under which any model whose logits span less than 2 (the tiny random models: about
    1.2) answers `first`, `second`, `first` greedily, whatever the CPU's float rounding: logit_bias +100 and
    +98 (all else 0, `banned` -100), and OpenAI's largest penalties (2 + 2 once a token occurred), so each
    of the three steps is decided by a margin of 2. The fourth step is a tie: ask for at most three tokens."""
    return dict(temperature=0.0, logit_bias=((first, 100.0), (second, 98.0), *((b, -100.0) for b in banned)),
                frequency_penalty=2.0, presence_penalty=2.0)


def test_a_stop_string_that_is_a_special_token_stops_the_answer(tiny_tokenizer):
    """The text is decoded without special tokens, so stop=["<|im_start|>"] never matched it and the answer
    ran on past the token (FastChat #3104 with vLLM); the token itself now ends the answer with "stop".
    The tokens are forced (`forced`), so the special token comes second on any CPU."""
    from prefloop.testing import build_tiny_model

    gen = LocalGenerator(build_tiny_model(tiny_tokenizer), tiny_tokenizer)
    start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    prompt = gen.encode_chat([{"role": "user", "content": "hello"}])
    settings = forced(300, start, 0, 2)  # end of turn impossible
    free = gen.generate([(prompt, SamplingParams(3, **settings))])[0]
    assert free.token_ids == [300, start, 300] and free.finish_reason == "length"
    cut = gen.generate([(prompt, SamplingParams(3, **settings, stop=("<|im_start|>",)))])[0]
    assert cut.finish_reason == "stop" and cut.token_ids == [300]
    assert cut.text == tiny_tokenizer.decode([300]) != ""


def _byte_fallback_tokenizer():
    """A SentencePiece-style tokenizer (Llama 2 / Mistral): "▁" for spaces, <0xNN> byte pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ("▁", "a", "b", "▁a", "▁b", "é"):
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "a"), ("▁", "b")], byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_token_bytes_join_into_the_text_where_a_character_spans_tokens(tiny_tokenizer):
    """OpenAI's logprobs `bytes` are what each token adds to the text, so that tokens holding parts of one
    character join into it; the decoded text of such a token alone is "\\ufffd", whose UTF-8 is not its bytes.
    At the start of the text a SentencePiece `Strip` decoder (Llama 2, Mistral) drops the first token's
    leading space: "▁a" first adds b"a", not its own b" a" (the bytes joined into " " + text before)."""
    from prefloop.sampling import TokenBytes, TokenLogprob, special_token_text

    text = "a é 😀 b"
    for tokenizer in (tiny_tokenizer, _byte_fallback_tokenizer()):
        token_bytes = TokenBytes(tokenizer, special_token_text(tokenizer))
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
        pieces = [token_bytes.in_text(i, ids[:k]) for k, i in enumerate(ids)]
        assert any(tokenizer.decode([i]) == "\ufffd" for i in ids)  # a character split over tokens
        assert b"".join(pieces) == text.encode("utf-8")  # exactly: no space the text lacks
        entry = TokenLogprob(tokenizer.decode([ids[0]]), float("-inf"), [("x", -1.0)], pieces[0], [b"x"]).to_openai()
        assert entry["bytes"] == list(pieces[0]) and entry["logprob"] == -9999.0  # JSON has no -inf
    sentencepiece = _byte_fallback_tokenizer()
    token_bytes = TokenBytes(sentencepiece, special_token_text(sentencepiece))
    a, b, eos = (sentencepiece.convert_tokens_to_ids(t) for t in ("▁a", "▁b", "</s>"))
    assert token_bytes(a) == b" a"  # the token's own bytes
    assert token_bytes.in_text(a, []) == token_bytes.in_text(a, [eos]) == b"a"  # first in the text (</s> is skipped)
    assert token_bytes.in_text(b, [a]) == b" b"  # later: its own
    special = TokenBytes(tiny_tokenizer, special_token_text(tiny_tokenizer))
    assert special(tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")) == b"<|im_end|>"


def test_logprob_bytes_of_an_answer_join_into_its_text_with_a_sentencepiece_strip_decoder():
    """End to end through the sampler, tokens forced (`forced`): "▁a" then "▁b" is the text "a b"; the
    logprobs' bytes were b" a b" (the first token's own leading space, which the decoder strips)."""
    from prefloop.testing import build_tiny_model

    tokenizer = _byte_fallback_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    gen = LocalGenerator(build_tiny_model(tokenizer), tokenizer)
    a, b = tokenizer.convert_tokens_to_ids("▁a"), tokenizer.convert_tokens_to_ids("▁b")
    prompt = gen.encode_chat([{"role": "user", "content": "ab"}])
    sample = gen.generate([(prompt, SamplingParams(2, **forced(a, b, 2), logprobs=True, top_logprobs=2))])[0]
    assert sample.token_ids == [a, b] and sample.text == "a b"
    assert b"".join(lp.token_bytes for lp in sample.logprobs) == b"a b"
    assert [bytes(e["bytes"]) for e in (lp.to_openai() for lp in sample.logprobs)] == [b"a", b" b"]


def test_an_added_token_s_bytes_are_its_text():
    """An added token is stored as its text, not as byte-level characters: "é" added is b"\\xc3\\xa9", not b"\\xe9"."""
    from prefloop.sampling import TokenBytes, special_token_text
    from prefloop.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["é", "<think>"])
    token_bytes = TokenBytes(tokenizer, special_token_text(tokenizer))
    for text in ("é", "<think>"):
        assert token_bytes(tokenizer.convert_tokens_to_ids(text)) == text.encode("utf-8")
