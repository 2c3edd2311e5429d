"""Exact encoding: prompt_ids + response_ids is the tokenized conversation; truncation is counted."""

import pytest
from test_template import FAMILY_BOS_EOS, tokenizer_like

import prefloop.data.encode as encode_module
from prefloop.data.encode import encode_pair, encode_pairs
from prefloop.data.schema import Message, PreferencePair
from prefloop.data.template import get_template, known_templates
from prefloop.testing import CHATML_TEMPLATE, build_tiny_tokenizer

SYSTEM = Message("system", "You are a careful assistant.")
TURNS = [
    Message("user", "What is the capital of France?"),
    Message("assistant", "The capital of France is Paris."),
    Message("user", "And of Germany? Please answer in one word."),
]
CONVERSATIONS = {
    "single-turn": TURNS[-1:],
    "single-turn+system": [SYSTEM, *TURNS[-1:]],
    "multi-turn": TURNS,
    "multi-turn+system": [SYSTEM, *TURNS],
}
CHOSEN = "Berlin. It is also the largest city of Germany."
REJECTED = "Paris, I think"


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pair(prompt, chosen=CHOSEN, rejected=REJECTED, **kw):
    return PreferencePair(prompt=list(prompt), chosen=chosen, rejected=rejected, **kw)


def assert_exact(encoded, tokenizer, template, p):
    """The identity of issue 2 item 4, for chosen and rejected.

    Whitespace rule: the template's rendering of the answered conversation, minus what it writes
    after the final end-of-turn token (`reply_trailer`, e.g. ChatML's "\\n"), tokenized without
    added special tokens, equals prompt_ids + response_ids. The response ends with the end of turn.
    """
    prompt = template.render(p.prompt_messages(), add_generation_prompt=True)
    assert encoded.prompt_ids == ids(tokenizer, prompt)
    end_of_turn = ids(tokenizer, template.end_of_turn)
    for response, response_ids in ((p.chosen, encoded.chosen_ids), (p.rejected, encoded.rejected_ids)):
        rendered = template.render(p.messages(response))
        if template.appends_eos:
            text = rendered + template.end_of_turn
        else:
            assert rendered.endswith(template.end_of_turn + template.reply_trailer)
            text = rendered[: len(rendered) - len(template.reply_trailer)]
        assert encoded.prompt_ids + response_ids == ids(tokenizer, text)
        assert response_ids[-len(end_of_turn) :] == end_of_turn
        if len(end_of_turn) == 1:  # exactly one end-of-turn token in the response
            assert response_ids.count(end_of_turn[0]) == 1


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", ["tokenizer", *known_templates()])
def test_identity_for_every_template(name, conversation):
    tokenizer = build_tiny_tokenizer() if name == "tokenizer" else tokenizer_like(name)
    template = get_template(None if name == "tokenizer" else name, tokenizer)
    p = pair(CONVERSATIONS[conversation])
    encoded = encode_pair(p, tokenizer, template)
    assert encoded is not None
    assert_exact(encoded, tokenizer, template, p)
    bos = FAMILY_BOS_EOS.get(name, (None, None))[0]
    full = encoded.prompt_ids + encoded.chosen_ids
    if template.bos_token:  # BOS written once by the template, never added again
        assert full.count(tokenizer.convert_tokens_to_ids(bos)) == 1 and full[0] == tokenizer.bos_token_id
    # The system prompt and every turn of the history are in the prompt.
    prompt_text = tokenizer.decode(encoded.prompt_ids)
    for message in CONVERSATIONS[conversation]:
        assert message.content in prompt_text


def test_identity_holds_when_control_tokens_are_split_into_pieces():
    tokenizer = build_tiny_tokenizer()  # no <|start_header_id|> / <|eot_id|> tokens
    template = get_template("llama3", tokenizer)
    p = pair(CONVERSATIONS["multi-turn+system"])
    encoded = encode_pair(p, tokenizer, template)
    assert len(ids(tokenizer, "<|eot_id|>")) > 1
    assert_exact(encoded, tokenizer, template, p)


def test_boundary_merge_moves_the_boundary_and_is_counted():
    # The generation prompt ends with "#" and "##..." follows: the tokenizer makes one "###" token.
    own = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\nA: #' }}"
        "{% else %}{{ m['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
    )
    tokenizer = build_tiny_tokenizer(chat_template=own)
    template = get_template(None, tokenizer)
    p = pair([Message("user", "Hi")], chosen="## Title", rejected="No")
    encoded, report = encode_pairs([p], tokenizer, template)
    assert report.boundary_moved == 1 and "merged" in report.summary()
    e = encoded[0]
    prompt = template.render(p.prompt_messages(), add_generation_prompt=True)
    assert len(e.prompt_ids) < len(ids(tokenizer, prompt))
    for response, response_ids in ((p.chosen, e.chosen_ids), (p.rejected, e.rejected_ids)):
        assert e.prompt_ids + response_ids == ids(tokenizer, template.training_text(p.messages(response)))


def test_pair_fields_carry_over_and_order_is_kept(monkeypatch):
    monkeypatch.setattr(encode_module, "BATCH_SIZE", 3)  # several batches
    tokenizer = build_tiny_tokenizer()
    template = get_template(None, tokenizer)
    pairs = [pair(TURNS[-1:], chosen=f"Answer {i}", id=f"p{i}", weight=0.5 * i, margin=i) for i in range(8)]
    pairs[4].weight = pairs[4].margin = None
    encoded, report = encode_pairs(pairs, tokenizer, template)
    assert [e.id for e in encoded] == [f"p{i}" for i in range(8)]
    assert encoded[3].weight == 1.5 and encoded[3].margin == 3.0
    assert encoded[4].weight == 1.0 and encoded[4].margin == 0.0
    assert (report.total, report.kept, report.dropped) == (8, 8, [])
    assert "Nothing was dropped or cut" in report.summary()


# -- truncation ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatml():
    tokenizer = build_tiny_tokenizer()
    return tokenizer, get_template(None, tokenizer)


def long_text(words: int) -> str:
    vocabulary = "the capital of france is paris and the river is long".split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


def test_oldest_turns_are_dropped_first(chatml):
    tokenizer, template = chatml
    history = [
        Message("user", long_text(60)),
        Message("assistant", long_text(60)),
        Message("user", "Second question?"),
        Message("assistant", "Second answer."),
        Message("user", "Third question?"),
    ]
    p = pair([SYSTEM, *history], chosen="Yes.", rejected="No.")
    full, _ = encode_pairs([p], tokenizer, template)
    cutoff = len(full[0].prompt_ids) - 20  # the long first turn must go, the rest fits
    encoded, report = encode_pairs([p], tokenizer, template, cutoff_len=cutoff)
    assert (report.prompt_truncated, report.turns_dropped, report.response_truncated) == (1, 1, 0)
    # Exactly the conversation without its oldest turn, system prompt kept, tokenized exactly.
    shorter = pair([SYSTEM, *history[2:]], chosen="Yes.", rejected="No.")
    assert_exact(encoded[0], tokenizer, template, shorter)
    assert encoded[0].prompt_truncated and not encoded[0].response_truncated
    assert "1 prompt truncated (1 oldest turn dropped" in report.summary()


def test_prompt_is_cut_from_the_left_keeping_system_and_markup(chatml):
    tokenizer, template = chatml
    question = "FIRST " + long_text(200) + " LAST question?"
    p = pair([SYSTEM, Message("user", question)], chosen="Paris.", rejected="Rome.")
    cutoff = 64
    encoded, report = encode_pairs([p], tokenizer, template, cutoff_len=cutoff)
    e = encoded[0]
    assert (report.prompt_truncated, report.turns_dropped, report.response_truncated) == (1, 0, 0)
    assert len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) == cutoff
    head = ids(tokenizer, "<|im_start|>system\nYou are a careful assistant.<|im_end|>\n<|im_start|>user\n")
    tail = ids(tokenizer, " LAST question?<|im_end|>\n<|im_start|>assistant\n")
    assert e.prompt_ids[: len(head)] == head and e.prompt_ids[-len(tail) :] == tail
    assert "FIRST" not in tokenizer.decode(e.prompt_ids)
    # Responses are untouched and end with the end of turn.
    assert e.chosen_ids == ids(tokenizer, "Paris.<|im_end|>")


def test_responses_are_cut_at_the_end_without_end_of_turn(chatml):
    tokenizer, template = chatml
    p = pair([Message("user", "Tell me about Paris.")], chosen=long_text(100), rejected="Paris is a city.")
    full, _ = encode_pairs([p], tokenizer, template)
    prompt_len = len(full[0].prompt_ids)
    cutoff = 2 * prompt_len + 10  # a prompt under half the cutoff stays whole
    encoded, report = encode_pairs([p], tokenizer, template, cutoff_len=cutoff)
    e = encoded[0]
    assert (report.prompt_truncated, report.response_truncated) == (0, 1)
    assert e.prompt_ids == full[0].prompt_ids
    assert e.chosen_ids == full[0].chosen_ids[: cutoff - prompt_len]
    assert template.end_of_turn not in tokenizer.decode(e.chosen_ids)
    assert e.rejected_ids == full[0].rejected_ids  # short enough to stay whole
    assert e.response_truncated and not e.prompt_truncated


def test_long_prompt_and_long_responses_share_the_cutoff(chatml):
    tokenizer, template = chatml
    p = pair([Message("user", long_text(300))], chosen=long_text(300), rejected="short " + long_text(250))
    encoded, report = encode_pairs([p], tokenizer, template, cutoff_len=100)
    e = encoded[0]
    assert len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) == 100
    assert len(e.chosen_ids) == 50  # responses keep half of the cutoff when both sides are long
    assert (report.prompt_truncated, report.response_truncated) == (1, 1)


def test_pairs_that_cannot_fit_are_dropped_and_named(chatml):
    tokenizer, template = chatml
    huge_system = Message("system", long_text(300))
    pairs = [
        pair([huge_system, Message("user", "Hi")], id="too-long"),
        pair([Message("user", "Hi")], chosen="Same start " + long_text(100), rejected="Same start " + long_text(90),
             id="same-after-cut"),
        pair([Message("user", "Hi")], chosen="Fine.", rejected="Also fine.", id="ok"),
    ]
    encoded, report = encode_pairs(pairs, tokenizer, template, cutoff_len=60)
    assert [e.id for e in encoded] == ["ok"]
    assert (report.total, report.kept) == (3, 1)
    reasons = {d.id: d.reason for d in report.dropped}
    assert reasons["too-long"].startswith("does not fit cutoff_len")
    assert reasons["same-after-cut"].startswith("identical after truncation")
    summary = report.summary()
    assert "Encoded 1 of 3 pairs (cutoff_len 60)" in summary and "too-long" in summary


def test_template_errors_drop_the_pair_with_the_reason():
    tokenizer = tokenizer_like("mistral")
    template = get_template("mistral", tokenizer)
    bad = pair([Message("user", "a"), Message("user", "b")], id="two-users")
    encoded, report = encode_pairs([bad, pair(TURNS)], tokenizer, template)
    assert len(encoded) == 1
    assert report.dropped[0].id == "two-users" and "roles must alternate" in report.dropped[0].reason
    assert report.drop_reasons() == {"template error": 1}



# A template that checks the text it renders: a prompt to answer must end with a question.
QUESTIONS_ONLY = (
    "{% if add_generation_prompt and not messages[-1]['content'].endswith('?') %}"
    "{{ raise_exception('user turns must be questions') }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_a_template_error_while_cutting_is_reported_as_a_template_error():
    """Issue 12 item 11: the chat template fails when the encoder renders the prompt to find the last
    user message; the pair is dropped for that reason, not as "does not fit cutoff_len"."""
    tokenizer = build_tiny_tokenizer(chat_template=QUESTIONS_ONLY)
    template = get_template(None, tokenizer)
    too_long = pair([Message("user", long_text(300) + " why?")], chosen="Yes.", rejected="No.", id="long-question")
    fits = pair([Message("user", "Why?")], chosen="Yes.", rejected="No.", id="short-question")
    encoded, report = encode_pairs([too_long, fits], tokenizer, template, cutoff_len=60)
    assert [e.id for e in encoded] == ["short-question"]
    (dropped,) = report.dropped
    assert dropped.id == "long-question"
    assert dropped.reason.startswith("template error: user turns must be questions (while locating the last user")
    assert report.drop_reasons() == {"template error": 1}


def test_a_template_that_rewrites_the_message_says_so_when_it_cannot_be_cut():
    """A template that does not write the user's text as given (here: upper-cased) cannot have it cut:
    the drop says that, instead of claiming the prompt was cut and still did not fit."""
    shouting = CHATML_TEMPLATE.replace(
        "message['content'] + '<|im_end|>'",
        "((message['content'] | upper) if message['role'] == 'user' else message['content']) + '<|im_end|>'")
    tokenizer = build_tiny_tokenizer(chat_template=shouting)
    template = get_template(None, tokenizer)
    too_long = pair([Message("user", long_text(300) + " why?")], chosen="Yes.", rejected="No.", id="long-question")
    encoded, report = encode_pairs([too_long], tokenizer, template, cutoff_len=60)
    (dropped,) = report.dropped
    assert encoded == [] and dropped.reason == (
        "does not fit cutoff_len: the tokenizer template does not write the last user message as given, "
        "so it cannot be cut")

def test_tools_are_counted_when_the_template_ignores_them(chatml):
    tokenizer, template = chatml
    p = pair(TURNS[-1:], tools='[{"name": "search"}]')
    _, report = encode_pairs([p], tokenizer, template)
    assert report.tools_ignored == 1 and "tools" in report.summary()


@pytest.mark.parametrize("name", known_templates())
def test_prompt_cut_keeps_markup_for_every_template(name):
    tokenizer = tokenizer_like(name)
    template = get_template(name, tokenizer)
    p = pair([SYSTEM, Message("user", "OLDEST " + long_text(300) + " newest words")], chosen="Yes.", rejected="No.")
    encoded, report = encode_pairs([p], tokenizer, template, cutoff_len=80)
    e = encoded[0]
    assert report.prompt_truncated == 1 and report.response_truncated == 0
    assert len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) == 80
    full_prompt = ids(tokenizer, template.render(p.prompt_messages(), add_generation_prompt=True))
    # The end of the last user message and everything after it (generation prompt) are kept ...
    assert e.prompt_ids[-8:] == full_prompt[-8:]
    # ... the beginning (BOS, system prompt, headers) too, and the oldest words are gone.
    assert e.prompt_ids[:4] == full_prompt[:4]
    assert "OLDEST" not in tokenizer.decode(e.prompt_ids)
    assert e.chosen_ids == ids(tokenizer, template.training_text(p.messages("Yes.")))[len(full_prompt) :]


def sentencepiece_style_tokenizer():
    """A Metaspace ("▁") BPE with byte fallback and [INST] control tokens, like Mistral's / Llama 2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False)
    backend.train_from_iterator([long_text(40), "What is the capital? Paris, I think."] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_identity_with_a_sentencepiece_style_tokenizer(conversation):
    tokenizer = sentencepiece_style_tokenizer()
    template = get_template("mistral", tokenizer)
    p = pair(CONVERSATIONS[conversation], chosen="  Berlin, I think ", rejected="Paris")  # the template trims
    encoded = encode_pair(p, tokenizer, template)
    assert_exact(encoded, tokenizer, template, p)
    assert (encoded.prompt_ids + encoded.chosen_ids).count(tokenizer.bos_token_id) == 1


def test_tools_reach_a_template_that_renders_them():
    own = (
        "{% if tools %}{{ 'TOOLS: ' + tools | tojson + '\n' }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tokenizer = build_tiny_tokenizer(chat_template=own)
    template = get_template(None, tokenizer)
    p = pair(TURNS[-1:], tools='[{"name": "search"}]')
    encoded, report = encode_pairs([p], tokenizer, template)
    assert report.tools_ignored == 0
    assert tokenizer.decode(encoded[0].prompt_ids).startswith('TOOLS: [{"name": "search"}]')


# -- peers' bug reports replayed ---------------------------------------------------------------


def test_end_of_turn_written_in_the_data_is_not_doubled(chatml):
    """TRL #4481 and its add_eos: data prepared for a trainer that appends EOS ends answers with it; the
    template writes the end of turn too, so it was doubled ("...<|im_end|><|im_end|>")."""
    tokenizer, template = chatml
    clean = pair([Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "Capital of France?")],
                 chosen="Paris.", rejected="Lyon.")
    written = pair([Message("user", "Hi"), Message("assistant", "Hello.<|im_end|>"), Message("user", "Capital of France?")],
                   chosen="Paris.<|im_end|>", rejected="Lyon. <|im_end|>\n")
    (expected, got), report = encode_pairs([clean, written], tokenizer, template)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert got.chosen_ids == expected.chosen_ids and got.chosen_ids.count(end) == 1
    assert got.prompt_ids == expected.prompt_ids
    assert got.rejected_ids == ids(tokenizer, "Lyon. <|im_end|>")  # the space before it is the answer's
    assert report.end_of_turn_in_text == 1 and "ending with the end-of-turn/EOS token written as text" in report.summary()


@pytest.mark.parametrize("name", ["alpaca", "mistral", "llama3"])
def test_eos_written_in_the_data_is_not_doubled_by_builtin_templates(name):
    tokenizer = tokenizer_like(name)
    template = get_template(name, tokenizer)
    stop = template.end_of_turn
    clean = pair(TURNS[-1:], chosen="Berlin.", rejected="Paris.")
    written = pair(TURNS[-1:], chosen="Berlin." + stop, rejected="Paris." + stop + stop)
    (expected, got), report = encode_pairs([clean, written], tokenizer, template)
    assert (got.prompt_ids, got.chosen_ids, got.rejected_ids) == (
        expected.prompt_ids, expected.chosen_ids, expected.rejected_ids)
    assert got.chosen_ids.count(tokenizer.convert_tokens_to_ids(stop)) == 1 and report.end_of_turn_in_text == 1


def test_plain_text_endings_are_not_mistaken_for_an_end_of_turn():
    """Only special tokens are removed: a template whose replies end with plain text keeps answers as written."""
    own = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\nA: ' }}"
           "{% else %}{{ m['content'] + '\n###\n' }}{% endif %}{% endfor %}")
    tokenizer = build_tiny_tokenizer(chat_template=own)
    template = get_template(None, tokenizer)
    p = pair([Message("user", "Hi")], chosen="Hello ###", rejected="No")
    encoded, report = encode_pairs([p], tokenizer, template)
    assert report.end_of_turn_in_text == 0
    assert_exact(encoded[0], tokenizer, template, p)


def bos_adding_llama3_tokenizer(chat_template):
    """Llama-3-like: the tokenizer's post-processor adds <|begin_of_text|> (add_special_tokens=True) and
    the chat template writes it too; tokenizing the rendering the default way gives two."""
    from tokenizers import processors

    tokenizer = tokenizer_like("llama3", chat_template=chat_template)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tokenizer.bos_token_id)])
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


LLAMA3_OWN = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.mark.parametrize("name", [None, "llama3"])
def test_bos_written_by_the_template_appears_once(name):
    """TRL #1885 / axolotl #1616 / reward-bench #164: the BOS of the template plus the BOS of the tokenizer."""
    tokenizer = bos_adding_llama3_tokenizer(LLAMA3_OWN)
    template = get_template(name, tokenizer)
    p = pair(CONVERSATIONS["multi-turn+system"])
    encoded, _ = encode_pairs([p], tokenizer, template, cutoff_len=40)  # truncation keeps it once too
    for e in (encode_pair(p, tokenizer, template), encoded[0]):
        for response in (e.chosen_ids, e.rejected_ids):
            full = e.prompt_ids + response
            assert full.count(tokenizer.bos_token_id) == 1 and full[0] == tokenizer.bos_token_id
    # Equal to what apply_chat_template(tokenize=True) gives (no special tokens added to the rendering).
    prompt = tokenizer.apply_chat_template(p.prompt_messages(), add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    assert encode_pair(p, tokenizer, get_template(None, tokenizer)).prompt_ids == prompt


def test_no_bos_is_added_when_the_template_writes_none():
    """ChatML writes no BOS: the encoder adds none even if the tokenizer would (as apply_chat_template)."""
    tokenizer = bos_adding_llama3_tokenizer(CHATML_TEMPLATE)
    template = get_template(None, tokenizer)
    e = encode_pair(pair(TURNS[-1:]), tokenizer, template)
    assert tokenizer.bos_token_id not in e.prompt_ids + e.chosen_ids + e.rejected_ids


def test_generation_prompt_ending_with_a_space_keeps_one_prompt_for_both_answers():
    """TRL #1153 / #2054: "[/INST] " + "$46" merges differently than "[/INST] " + "46": tokenizing prompt and
    answer separately changes the text, and the prompt tokens of chosen and rejected differed. Here both
    answers share one prompt and prompt + answer is exactly the tokenized conversation."""
    own = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST] ' }}"
           "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    tokenizer = build_tiny_tokenizer(chat_template=own)
    template = get_template(None, tokenizer)
    for chosen, rejected in (("46 as of 10am", "$46 as of 10am"), (" leading space", "no space"), ("\nnewline", "ok")):
        p = pair([Message("user", "How is the stock price?")], chosen=chosen, rejected=rejected)
        e = encode_pair(p, tokenizer, template)
        for response, response_ids in ((chosen, e.chosen_ids), (rejected, e.rejected_ids)):
            assert e.prompt_ids + response_ids == ids(tokenizer, template.training_text(p.messages(response)))
            assert response_ids[-1] == tokenizer.eos_token_id and response_ids.count(tokenizer.eos_token_id) == 1


def test_a_prompt_merged_whole_into_the_answer_is_dropped_not_crashing_the_batch():
    """A template that writes the prompt bare, and an answer that merges with it into one token: no prompt
    token is left to predict the answer from (collate would refuse the batch mid-training)."""
    tokenizer = build_tiny_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    template = get_template(None, tokenizer)
    merged = pair([Message("user", "#")], chosen="## Title", rejected="## Other", id="merged")
    fine = pair([Message("user", "Hi")], chosen=" there", rejected=" you", id="fine")
    encoded, report = encode_pairs([merged, fine], tokenizer, template)
    assert [e.id for e in encoded] == ["fine"] and all(e.prompt_ids for e in encoded)
    assert report.dropped[0].id == "merged" and report.dropped[0].reason.startswith("empty prompt after tokenization")


def test_identical_answers_are_dropped_and_counted(chatml):
    tokenizer, template = chatml
    pairs = [pair(TURNS[-1:], chosen="Same.", rejected="Same.", id="same"), pair(TURNS[-1:], id="ok")]
    encoded, report = encode_pairs(pairs, tokenizer, template)
    assert [e.id for e in encoded] == ["ok"]
    assert report.drop_reasons() == {"identical answers": 1} and "1 identical answers (e.g. same)" in report.summary()


def test_whitespace_answers_that_a_trimming_template_renders_alike_are_identical():
    tokenizer = tokenizer_like("llama3")
    template = get_template("llama3", tokenizer)  # trims contents
    encoded, report = encode_pairs([pair(TURNS[-1:], chosen="Berlin. ", rejected=" Berlin.")], tokenizer, template)
    assert encoded == [] and report.drop_reasons() == {"identical answers": 1}


def test_empty_answers_are_kept_and_counted(chatml):
    tokenizer, template = chatml
    p = pair(TURNS[-1:], chosen="Berlin.", rejected="  ")
    encoded, report = encode_pairs([p], tokenizer, template)
    assert_exact(encoded[0], tokenizer, template, p)
    assert report.empty_responses == 1 and "1 pair has an empty answer" in report.summary()


def test_pad_token_equal_to_eos_does_not_mask_the_final_eos():
    """pad == eos (SmolLM2 ships it; load_tokenizer sets it when a tokenizer has no pad): labels and masks
    come from lengths, so the answers' final EOS is trained and only real padding is -100."""
    from prefloop.train.collate import IGNORE_INDEX, collate_pairs

    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    template = get_template(None, tokenizer)
    eos = tokenizer.eos_token_id
    encoded, _ = encode_pairs([pair(TURNS[-1:], chosen="Berlin.", rejected="Paris, I think so."),
                               pair(TURNS, chosen="Bonn?", rejected="No.")], tokenizer, template)
    features = [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids}
                for e in encoded]
    batch = collate_pairs(features, "padded", tokenizer.pad_token_id)
    rows = [(f["prompt_ids"], f[key]) for key in ("chosen_ids", "rejected_ids") for f in features]
    for r, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        labels = batch["labels"][r].tolist()
        assert labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)  # prompt (its <|im_end|> included)
        assert labels[len(prompt):n] == response and labels[n - 1] == eos  # the final EOS is a target
        assert labels[n:] == [IGNORE_INDEX] * (len(labels) - n)  # padding, also the eos id, is not
        assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (len(labels) - n)
    assert int((batch["target_ids"] == eos).sum()) == 4  # one EOS per answer


@pytest.mark.parametrize("name", ["tokenizer", "llama3", "mistral"])
def test_truncation_never_leaves_an_empty_part_and_counts_every_pair(name):
    """LLaMA-Factory cut the prompt's end (the generation prompt) and TRL keep_start dropped pairs whose
    prompt fills max_length silently, or left answers of zero tokens: at every cutoff, a kept pair has a
    prompt and two different, non-empty answers within the cutoff, and every other pair is reported."""
    tokenizer = build_tiny_tokenizer() if name == "tokenizer" else tokenizer_like(name)
    template = get_template(None if name == "tokenizer" else name, tokenizer)
    pairs = [
        pair([SYSTEM, Message("user", long_text(120))], chosen=long_text(40), rejected="Short.", id="long-prompt"),
        pair(TURNS, chosen=long_text(90), rejected=long_text(80) + " end", id="long-answers"),
        pair([Message("system", long_text(60)), Message("user", "Hi")], chosen="Yes.", rejected="No.", id="long-system"),
        pair(TURNS[-1:], id="short"),
    ]
    for cutoff in range(4, 130, 7):
        encoded, report = encode_pairs(pairs, tokenizer, template, cutoff_len=cutoff)
        assert report.kept + len(report.dropped) == report.total == len(pairs)
        assert all(d.reason for d in report.dropped)
        for e in encoded:
            assert e.prompt_ids and e.chosen_ids and e.rejected_ids and e.chosen_ids != e.rejected_ids
            assert len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= cutoff
            # What follows the last user message (its end of turn, the generation prompt) is never cut;
            # these templates start it with a control token, so it tokenizes the same on its own.
            p = pairs[e.index]
            rendered = template.render(p.prompt_messages(), add_generation_prompt=True)
            last = p.prompt[-1].content
            tail = ids(tokenizer, rendered[rendered.rfind(last) + len(last):])
            assert e.prompt_ids[-len(tail):] == tail


def test_unicode_and_emoji_text_encodes_exactly(chatml):
    tokenizer, template = chatml
    p = pair([Message("user", "Traduis « 你好 » 🙂, s'il te plaît — e\u0301")], chosen="🙂👍🏽 « bonjour »",
             rejected="\u00e9\u0301 字")
    assert_exact(encode_pair(p, tokenizer, template), tokenizer, template, p)
    # cut inside multi-byte characters: the shares stay within the cutoff and the pair stays distinct
    e = encode_pair(pair([Message("user", "🙂" * 200)], chosen="🙂" * 90 + "a", rejected="🙂" * 90 + "b"),
                    tokenizer, template, cutoff_len=80)
    assert e is None or len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= 80


def test_text_already_rendered_with_a_chat_template_is_reported(chatml):
    """TRL's standard format is raw text, so its prompts are often pre-rendered ("<|im_start|>user\\n...");
    prefloop renders every prompt through the chat template, which would template them twice: counted and
    named in the report (the tokenizer reads those strings as control tokens)."""
    tokenizer, template = chatml
    rendered = pair([Message("user", "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n")],
                    chosen="Paris.<|im_end|>", rejected="Lyon.")
    plain = pair(TURNS[-1:], chosen="Paris.<|im_end|>")  # a trailing end of turn alone is removed, not reported
    _, report = encode_pairs([rendered, plain], tokenizer, template)
    assert report.control_tokens_in_text == 1 and report.control_tokens_seen == ["<|im_start|>", "<|im_end|>"]
    assert "rendered again; give plain text" in report.summary() and report.end_of_turn_in_text == 2


def test_every_token_that_ends_a_reply_is_removed_from_the_end_of_answers(chatml):
    """One definition of where a reply ends (template.stop_token_ids): generation stops on the ChatML
    vocabulary's <|endoftext|> too, so an answer written ending with it is trained ending with the end of
    turn alone, as one ending with <|im_end|> is (before, only the end of turn and EOS were removed)."""
    from prefloop.data.template import special_token_text

    tokenizer, template = chatml
    texts = special_token_text(tokenizer, added=True)
    assert set(template.stop_strings(tokenizer)) == {texts[i] for i in template.stop_token_ids(tokenizer)} \
        == {"<|im_end|>", "<|endoftext|>"}
    clean = pair(TURNS[-1:], chosen="Berlin.", rejected="Paris.")
    written = pair(TURNS[-1:], chosen="Berlin.<|endoftext|>", rejected="Paris.<|endoftext|><|im_end|>")
    (expected, got), report = encode_pairs([clean, written], tokenizer, template)
    assert (got.chosen_ids, got.rejected_ids) == (expected.chosen_ids, expected.rejected_ids)
    assert report.end_of_turn_in_text == 1


def test_empty_answer_count_is_data_checks_definition(chatml):
    """The encoder counts an empty answer exactly where `data check` flags one (template.is_empty_answer):
    whitespace, or nothing but this tokenizer's stop tokens; "<|eot_id|>", plain text to a ChatML tokenizer,
    is an answer the model is trained to write, not an empty one."""
    from prefloop.data.quality import check_empty

    tokenizer, template = chatml
    pairs = [pair(TURNS[-1:], chosen="Berlin.", rejected=rejected)
             for rejected in ("  ", "<|im_end|>", " <|eot_id|>\n", "Paris.", "Paris.<|im_end|>")]
    encoded, report = encode_pairs(pairs, tokenizer, template)
    _, flagged = check_empty(pairs, template.stop_strings(tokenizer))
    assert len(encoded) == 5 and report.empty_responses == len(flagged) == 2 and flagged == [0, 1]
