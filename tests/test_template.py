"""Chat templates: built-ins render the real model families' formats; names and errors are clear."""

import pytest

from prefloop.data.template import BUILTIN_TEMPLATES, get_template, known_templates
from prefloop.errors import ConfigError
from prefloop.testing import build_tiny_tokenizer

# BOS / EOS strings of each family's real tokenizer (None: keep the tiny ChatML tokenizer's).
FAMILY_BOS_EOS = {
    "qwen": (None, None),
    "chatml": (None, None),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral": ("<s>", "</s>"),
    "gemma": ("<bos>", "<eos>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "alpaca": ("<s>", "</s>"),
    "vicuna": ("<s>", "</s>"),
    "default": ("<s>", "</s>"),
}


def tokenizer_like(name: str, chat_template=None):
    """A tiny tokenizer given the BOS/EOS and control tokens of template `name`'s model family."""
    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    bos, eos = FAMILY_BOS_EOS[name]
    specials = [t for t in (bos, eos, *BUILTIN_TEMPLATES[name].control_tokens) if t]
    tokenizer.add_tokens([t for t in specials if t not in tokenizer.get_vocab()], special_tokens=True)
    if bos:
        tokenizer.bos_token = bos
    if eos:
        tokenizer.eos_token = eos
    return tokenizer


SYSTEM = {"role": "system", "content": "Be brief."}
HISTORY = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]

# What each family's own chat template writes for SYSTEM + HISTORY with the generation prompt.
EXPECTED_PROMPT = {
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\n2+2?[/INST]",
    "gemma": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\n2+2?<|end|>\n"
    "<|assistant|>\n",
    # a custom system is followed by a blank line (LLaMA-Factory 0.9.5 writes none: data/template.py)
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n### Instruction:\n2+2?\n\n"
    "### Response:\n",
    "vicuna": "Be brief. USER: Hi ASSISTANT: Hello!</s>USER: 2+2? ASSISTANT:",
    "default": "System: Be brief.</s>\nHuman: Hi</s>\nAssistant:Hello!</s>\nHuman: 2+2?</s>\nAssistant:",
}

# Without a system message: the families' default system prompts (or none).
EXPECTED_START_WITHOUT_SYSTEM = {
    "qwen": "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi<|im_end|>",
    "chatml": "<|im_start|>user\nHi<|im_end|>",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "mistral": "<s>[INST] Hi[/INST] Hello!</s>[INST] 2+2?[/INST]",
    "gemma": "<bos><start_of_turn>user\nHi<end_of_turn>\n",
    "phi3": "<|user|>\nHi<|end|>\n",
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\nHi\n\n",
    "vicuna": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT:",
    "default": "Human: Hi</s>\nAssistant:",
}

# (end of turn, what follows it at the end of a conversation) with the family's tokenizer.
EXPECTED_ENDING = {
    "qwen": ("<|im_end|>", "\n"),
    "chatml": ("<|im_end|>", "\n"),
    "llama3": ("<|eot_id|>", ""),
    "mistral": ("</s>", ""),
    "gemma": ("<end_of_turn>", "\n"),
    "phi3": ("<|end|>", "\n<|endoftext|>"),
    "alpaca": ("</s>", "\n\n"),
    "vicuna": ("</s>", ""),
    "default": ("</s>", "\n"),
}


def test_every_required_template_is_built_in():
    assert set(known_templates()) >= {"qwen", "chatml", "llama3", "mistral", "gemma", "phi3", "alpaca", "vicuna", "default"}
    assert set(EXPECTED_PROMPT) == set(known_templates())


@pytest.mark.parametrize("name", sorted(EXPECTED_PROMPT))
def test_builtin_renders_the_family_format(name):
    template = get_template(name, tokenizer_like(name))
    assert template.render([SYSTEM, *HISTORY], add_generation_prompt=True) == EXPECTED_PROMPT[name]
    assert template.render(HISTORY, add_generation_prompt=True).startswith(EXPECTED_START_WITHOUT_SYSTEM[name])
    assert (template.end_of_turn, template.reply_trailer) == EXPECTED_ENDING[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_PROMPT))
def test_generation_prompt_is_a_prefix_of_the_answered_conversation(name):
    template = get_template(name, tokenizer_like(name))
    prompt = template.render([SYSTEM, *HISTORY], add_generation_prompt=True)
    full = template.render([SYSTEM, *HISTORY, {"role": "assistant", "content": "4"}])
    assert full.startswith(prompt)
    assert template.training_text([SYSTEM, *HISTORY, {"role": "assistant", "content": "4"}]).endswith(
        "4" + template.end_of_turn
    )


def test_tokenizers_own_template_renders_like_apply_chat_template():
    tokenizer = build_tiny_tokenizer()
    template = get_template(None, tokenizer)
    assert template.name == "tokenizer"
    assert (template.end_of_turn, template.reply_trailer) == ("<|im_end|>", "\n")
    for messages in ([SYSTEM, *HISTORY], HISTORY, HISTORY[:1], [*HISTORY, {"role": "assistant", "content": "4"}]):
        for add_generation_prompt in (True, False):
            assert template.render(messages, add_generation_prompt) == tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )


def test_own_template_without_end_of_turn_appends_eos():
    bare = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    template = get_template(None, build_tiny_tokenizer(chat_template=bare))
    assert template.appends_eos and template.end_of_turn == "<|im_end|>"
    text = template.training_text([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    assert text == "user: Hi\nassistant: Yo\n<|im_end|>"


def test_bos_is_detected_only_when_rendered():
    assert get_template("llama3", tokenizer_like("llama3")).bos_token == "<|begin_of_text|>"
    assert get_template("chatml", tokenizer_like("chatml")).bos_token is None
    # A tokenizer without a BOS token: the template writes none (no stray "None" text either).
    assert get_template("llama3", build_tiny_tokenizer()).render(HISTORY[:1]).startswith("<|start_header_id|>user")


def test_template_names_are_case_insensitive():
    assert get_template("Llama3", tokenizer_like("llama3")).name == "llama3"


def test_unknown_template_name_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_template("llama9", build_tiny_tokenizer())
    message = str(err.value)
    assert "llama9" in message
    for name in known_templates():
        assert name in message


def test_tokenizer_without_template_says_how_to_fix_it():
    with pytest.raises(ConfigError, match=r"set template: NAME, known: qwen, chatml, llama3"):
        get_template(None, build_tiny_tokenizer(chat_template=None))


def test_eos_templates_need_an_eos_token():
    tokenizer = build_tiny_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(ConfigError, match="EOS"):
        get_template("alpaca", tokenizer)


def test_missing_control_tokens_are_warned_about(caplog):
    with caplog.at_level("WARNING"):
        get_template("llama3", build_tiny_tokenizer())
    assert "<|eot_id|>" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        get_template("llama3", tokenizer_like("llama3"))
    assert caplog.text == ""


def test_broken_own_template_is_a_config_error():
    broken = "{{ raise_exception('no chats here') }}"
    with pytest.raises(ConfigError, match="no chats here"):
        get_template(None, build_tiny_tokenizer(chat_template=broken))


def test_stop_token_ids_hold_the_end_of_turn_and_eos():
    from prefloop.data.template import END_OF_TURN_TOKENS, special_token_text

    tokenizer = tokenizer_like("llama3")
    tokenizer.eos_token = "<|begin_of_text|>"  # a base-model EOS different from the end of turn
    template = get_template("llama3", tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    special = {t: i for i, t in special_token_text(tokenizer, added=True).items()}
    # then the common end-of-turn tokens that are special/added tokens here (the tiny tokenizer's ChatML ones)
    markers = [special[t] for t in END_OF_TURN_TOKENS if t in special and special[t] not in (eot, tokenizer.eos_token_id)]
    assert markers and template.stop_token_ids(tokenizer) == [eot, tokenizer.eos_token_id, *markers]
    chatml = build_tiny_tokenizer()
    eos, pad = chatml.eos_token_id, chatml.convert_tokens_to_ids("<|endoftext|>")
    assert get_template(None, chatml).stop_token_ids(chatml) == [eos, pad]


def test_own_template_with_tools_renders_like_apply_chat_template():
    own = (
        "{% if tools is not none %}{{ 'TOOLS: ' + tools | tojson + '\n' }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tokenizer = build_tiny_tokenizer(chat_template=own)
    template = get_template(None, tokenizer)
    tools = [{"name": "search", "parameters": {"query": "string"}}]
    for given in (None, tools):
        assert template.render(HISTORY, True, tools=given) == tokenizer.apply_chat_template(
            HISTORY, tools=given, add_generation_prompt=True, tokenize=False
        )
    assert template.render(HISTORY, True, tools='[{"name": "search"}]').startswith('TOOLS: [{"name": "search"}]')


def test_generation_stops_where_the_data_side_says_a_reply_ends():
    """One definition of the tokens that end a reply and of the special tokens: sampling uses the data side's
    (template.stop_token_ids with the model's generation config, template.special_token_text)."""
    import prefloop.data.template as template_module
    import prefloop.sampling as sampling
    from prefloop.testing import build_tiny_model

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 7]
    generator = sampling.LocalGenerator(model, tokenizer)
    template = get_template(None, tokenizer)
    assert generator.stop_ids == set(template.stop_token_ids(tokenizer, model)) and 7 in generator.stop_ids
    assert sampling.special_token_text is template_module.special_token_text
    assert not hasattr(sampling, "stop_token_ids")


def test_a_common_end_token_stops_only_as_a_special_token_never_inside_an_assistant_turn():
    """END_OF_TURN_TOKENS join the stops only when they are special/added tokens of this tokenizer, and never
    when the template writes them inside an assistant turn (gpt-oss's harmony format: `<|end|>` closes the
    analysis message before the final answer, `<|return|>` the reply)."""
    from prefloop.data.template import stop_token_ids

    harmony = (
        "{% for m in messages %}"
        "{% if m['role'] == 'assistant' %}"
        "{% if m.get('thinking') %}{{ '<|start|>assistant<|channel|>analysis<|message|>' + m['thinking'] + '<|end|>' }}{% endif %}"
        "{{ '<|start|>assistant<|channel|>final<|message|>' + m['content'] + '<|return|>' }}"
        "{% else %}{{ '<|start|>' + m['role'] + '<|message|>' + m['content'] + '<|end|>' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
    )
    tokenizer = build_tiny_tokenizer(chat_template=harmony)
    tokenizer.add_tokens(["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>"], special_tokens=True)
    template = get_template(None, tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert "<|end|>" in template.in_turn_tokens()
    stops = template.stop_token_ids(tokenizer)
    assert end not in stops and tokenizer.convert_tokens_to_ids("<|return|>") in stops
    assert "<|end|>" not in template.stop_strings(tokenizer)
    # the same tokenizer without the probe would stop there: the exclusion is the template's, not a rule
    assert end in stop_token_ids(tokenizer, template.end_of_turn)

    # a common token that is only ordinary vocabulary is text, not a stop
    plain = build_tiny_tokenizer()
    vocab = plain.get_vocab()
    assert "</s>" not in plain.all_special_tokens
    ids = get_template(None, plain).stop_token_ids(plain)
    assert vocab.get("</s>") not in ids or vocab.get("</s>") is None
    assert "</s>" not in get_template(None, plain).stop_strings(plain)


def test_dropped_by_builtin_names_what_the_tokenizers_own_template_renders_and_the_builtin_drops():
    own = (
        "{% if tools is not none %}{{ 'TOOLS: ' + tools | tojson + '\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m.get('reasoning_content') %}{{ '<think>' + m['reasoning_content'] + '</think>' }}{% endif %}"
        "{{ m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}{{ c['function']['name'] + (c['function']['arguments'] | tojson) }}{% endfor %}"
        "{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    from prefloop.data.template import dropped_by_builtin

    tokenizer = build_tiny_tokenizer(chat_template=own)
    assert dropped_by_builtin(tokenizer, "qwen") == ["tools", "tool calls", "reasoning_content"]
    assert dropped_by_builtin(tokenizer, None) == [] and dropped_by_builtin(build_tiny_tokenizer(), "chatml") == []


def test_training_with_a_builtin_that_drops_what_the_models_template_renders_warns(tmp_path):
    """`template: qwen` replaces the tokenizer's own template in the saved model: when the own one rendered tools,
    tool calls or reasoning, the run says that a served or merged model loses them."""
    from pathlib import Path

    from prefloop.config import load_config
    from prefloop.train.run import load_data

    own = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{{ m['content'] or '' }}"
           "{% for c in m.get('tool_calls') or [] %}{{ c['function']['name'] + (c['function']['arguments'] | tojson) }}"
           "{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tokenizer = build_tiny_tokenizer(chat_template=own)
    data = Path(__file__).resolve().parents[1] / "examples" / "data" / "seed_preferences.jsonl"
    said = []
    for template, warned in (("qwen", True), (None, False)):
        said.clear()
        cfg = load_config(None, dict(model_name_or_path=str(tmp_path), dataset=str(data), template=template,
                                     output_dir=str(tmp_path / "out"), report_to="none"))
        load_data(cfg, tokenizer, lambda *a, **k: said.append(" ".join(map(str, a))))
        assert any("does not render tool calls" in line and "loses them" in line for line in said) is warned
