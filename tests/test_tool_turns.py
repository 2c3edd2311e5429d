"""Turn contents beyond role and text (issue 12, item 3): tool calls, tool results, names and reasoning
reach every rendering (the tokenizer's chat template, the judge's prompt, the server), or the record is
refused with its place when the chosen template cannot render them, and `data check` counts them."""

import json

import pytest

from prefloop.data.encode import encode_pairs
from prefloop.data.formats import RecordError, record_to_pair, to_seed_record
from prefloop.data.loader import load_pairs
from prefloop.data.template import get_template
from prefloop.judge.prompt import render_conversation
from prefloop.testing import build_tiny_tokenizer

CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
TOOL_PROMPT = [
    {"role": "user", "content": "What is the weather in Paris and Lyon?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Paris: 18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "name": "get_weather", "content": "Lyon: 21 C, cloudy"},
]
TOOL_RECORD = {"prompt": TOOL_PROMPT, "chosen": [{"role": "assistant", "content": "Paris 18 C, Lyon 21 C."}],
               "rejected": [{"role": "assistant", "content": "I cannot check the weather."}]}
REASONING_RECORD = {"prompt": [{"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4", "reasoning_content": "two plus two is four"},
                               {"role": "user", "content": "and 3+3?"}],
                    "chosen": "6", "rejected": "7"}
NAME_RECORD = {"prompt": [{"role": "user", "content": "Hi, I am new here.", "name": "alice"}],
               "chosen": "Welcome, Alice!", "rejected": "Go away."}

# A template that renders all of them (tool calls as Qwen2.5 writes them, reasoning as Qwen3 does).
TOOL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response id=' + message.tool_call_id + '>\\n' + message['content']"
    " + '\\n</tool_response><|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message.name %}{{ message.name + ': ' }}{% endif %}"
    "{% if message.reasoning_content %}{{ '<think>' + message.reasoning_content + '</think>' }}{% endif %}"
    "{{ message['content'] or '' }}"
    "{% for call in message.tool_calls or [] %}"
    "{{ '<tool_call>{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson)"
    " + '}</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_tool_calls_and_results_are_read_into_the_pair_and_written_back():
    _, pair = record_to_pair(TOOL_RECORD)
    messages = pair.prompt_messages()
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": TOOL_PROMPT[1]["tool_calls"]}
    assert messages[2] == {"role": "tool", "content": "Paris: 18 C, sunny", "tool_call_id": "call_1",
                           "name": "get_weather"}
    assert len(messages) == 4  # two tool results in a row answer two parallel calls
    _, again = record_to_pair(to_seed_record(pair))
    assert again.prompt_messages() == messages and (again.chosen, again.rejected) == (pair.chosen, pair.rejected)


@pytest.mark.parametrize("turn, field, message", [
    ({"role": "user", "content": "x", "tool_calls": [CALL]}, "prompt[0].tool_calls", "a 'user' turn has tool_calls"),
    ({"role": "assistant", "content": "", "tool_calls": {"name": "f"}}, "prompt[1].tool_calls", "must be a list"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]},
     "prompt[1].tool_calls[0]", "needs a function name"),
    ({"role": "user", "content": "x", "tool_call_id": "call_1"}, "prompt[0].tool_call_id", "has a tool_call_id"),
    ({"role": "user", "content": "x", "reasoning_content": "r"}, "prompt[0].reasoning_content", "a 'user' turn has 'reasoning_content'"),
])
def test_malformed_template_fields_are_located(turn, field, message):
    prompt = [turn] if turn["role"] == "user" else [{"role": "user", "content": "q"}, turn,
                                                     {"role": "tool", "content": "r"}]
    with pytest.raises(RecordError) as err:
        record_to_pair({"prompt": prompt, "chosen": "a", "rejected": "b"})
    assert err.value.field == field and message in err.value.message


@pytest.mark.parametrize("record, shown", [
    (TOOL_RECORD, ['{"name": "get_weather", "arguments": {"city": "Paris"}}',
                   '{"name": "get_weather", "arguments": {"city": "Lyon"}}',
                   "<tool_response id=call_1>\nParis: 18 C, sunny\n</tool_response>",
                   "<tool_response id=call_2>\nLyon: 21 C, cloudy\n</tool_response>"]),
    (REASONING_RECORD, ["<think>two plus two is four</think>4"]),
    (NAME_RECORD, ["<|im_start|>user\nalice: Hi, I am new here."]),
])
def test_a_template_that_renders_them_trains_on_them(record, shown):
    tokenizer = build_tiny_tokenizer(chat_template=TOOL_TEMPLATE)
    template = get_template(None, tokenizer)
    _, pair = record_to_pair(record)
    (encoded,), report = encode_pairs([pair], tokenizer, template)
    prompt_text = tokenizer.decode(encoded.prompt_ids)
    for text in shown:
        assert text in prompt_text
    full = template.training_text(pair.messages(pair.chosen))
    assert encoded.prompt_ids + encoded.chosen_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert report.fields_not_rendered == 0


@pytest.mark.parametrize("record, template_name, dropped", [
    (TOOL_RECORD, None, "tool calls in prompt turn 2 (assistant)"),
    (REASONING_RECORD, None, "reasoning_content in prompt turn 2 (assistant)"),
    (NAME_RECORD, None, "speaker names in prompt turn 1 (user)"),
    (TOOL_RECORD, "phi3", "tool results in prompt turn 3 (tool), tool results in prompt turn 4 (tool)"),
    (TOOL_RECORD, "mistral", "tool results in prompt turn 3 (tool)"),  # the template raises on the role
])
def test_a_template_that_drops_them_refuses_the_pair_with_its_place(tmp_path, record, template_name, dropped):
    path = write(tmp_path / "tools.jsonl", [{"prompt": "plain?", "chosen": "yes", "rejected": "no"}, record])
    pairs = load_pairs(str(path)).pairs
    tokenizer = build_tiny_tokenizer()  # ChatML: role and content only
    template = get_template(template_name, tokenizer)
    encoded, report = encode_pairs(pairs, tokenizer, template)
    assert len(encoded) == 1 and report.fields_not_rendered == 1
    (drop,) = report.dropped
    assert drop.reason.startswith("template cannot render message fields: ")
    assert dropped in drop.reason and f"({path}:2)" in drop.reason
    assert report.drop_reasons() == {"template cannot render message fields": 1}


def test_data_check_counts_them(tmp_path, capsys):
    from prefloop.cli import main

    path = write(tmp_path / "tools.jsonl", [TOOL_RECORD, REASONING_RECORD, NAME_RECORD,
                                            {"prompt": "plain?", "chosen": "yes", "rejected": "no"}])
    tokenizer_dir = tmp_path / "tok"
    build_tiny_tokenizer().save_pretrained(tokenizer_dir)
    assert main(["data", "check", str(path), "--tokenizer", str(tokenizer_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    turns = report["turns"]
    assert (turns["with_tool_calls"], turns["with_tool_results"], turns["with_names"], turns["with_reasoning"]) == \
        (1, 1, 1, 1)
    assert report["tokens"]["fields_not_rendered"] == 3 and report["usable_pairs"] == 1
    assert main(["data", "check", str(path), "--tokenizer", str(tokenizer_dir)]) == 0
    text = capsys.readouterr().out
    assert "prompts with template fields: 1 with tool calls, 1 with tool results, 1 with names, 1 with reasoning" \
        in text
    assert "3 pairs refused: their prompts or answers have tool calls" in text


def test_the_judge_sees_tool_calls_and_results():
    _, pair = record_to_pair(TOOL_RECORD)
    text = render_conversation(pair.prompt_messages())
    assert '[Tool call] get_weather({"city": "Paris"})' in text and '[Tool call] get_weather({"city": "Lyon"})' in text
    assert "[Tool (get_weather)]\nParis: 18 C, sunny" in text and "[Tool (get_weather)]\nLyon: 21 C, cloudy" in text
    _, reasoning = record_to_pair(REASONING_RECORD)
    assert "[Assistant]\n[Reasoning] two plus two is four\n4" in render_conversation(reasoning.prompt_messages())
    _, named = record_to_pair(NAME_RECORD)
    assert render_conversation(named.prompt_messages()) == "[User (alice)]\nHi, I am new here."


@pytest.mark.parametrize("tool_template", [False, True])
def test_the_server_renders_tool_turns_or_refuses_them(tiny_model_dir, tool_template):
    """Through the real `openai` client: a conversation with tool calls and results reaches the model's
    template whole (its prompt tokens are the template's rendering), or gets a 400 naming the turn."""
    import openai

    from prefloop.models import load_causal_lm, load_tokenizer
    from prefloop.sampling import LocalGenerator
    from prefloop.serve.app import create_app
    from prefloop.serve.background import BackgroundServer
    from prefloop.serve.engine import GenerationEngine

    tokenizer = load_tokenizer(str(tiny_model_dir))
    if tool_template:
        tokenizer.chat_template = TOOL_TEMPLATE
    generator = LocalGenerator(load_causal_lm(str(tiny_model_dir)), tokenizer)
    engine = GenerationEngine(generator)
    try:
        with BackgroundServer(create_app(engine, "tiny", max_tokens_limit=8)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            ask = lambda: client.chat.completions.create(model="tiny", messages=TOOL_PROMPT, max_tokens=2)  # noqa: E731
            if not tool_template:
                with pytest.raises(openai.BadRequestError) as err:
                    ask()
                # refused by name before encoding (the server's rule for fields the template does not render)
                assert err.value.body["param"] == "messages[1].tool_calls"
                assert "messages[1].tool_calls: this model's chat template does not render tool calls" in str(err.value)
                # a malformed tool call is located whatever the template
                bad = [TOOL_PROMPT[0], {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]
                with pytest.raises(openai.BadRequestError) as err:
                    client.chat.completions.create(model="tiny", messages=bad, max_tokens=2)
                assert err.value.body["param"] == "messages[1].tool_calls[0]"
                assert "needs a function name" in str(err.value)
                return
            response = ask()
    finally:
        engine.close()
    rendered = generator.template.render(TOOL_PROMPT, add_generation_prompt=True)
    assert '"arguments": {"city": "Lyon"}' in rendered and "Lyon: 21 C, cloudy" in rendered
    assert response.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_the_server_refuses_tool_results_its_template_drops():
    """A tool result (its tool_call_id and name are links, passed on) on a template that writes only
    user and assistant turns: the template's own check (DataError) is a 400 naming the turn."""
    import openai

    from prefloop.sampling import LocalGenerator
    from prefloop.serve.app import create_app
    from prefloop.serve.background import BackgroundServer
    from prefloop.serve.engine import GenerationEngine
    from prefloop.testing import build_tiny_model

    template = ("{% for m in messages %}{% if m['role'] in ('user', 'assistant') %}<|im_start|>{{ m['role'] }}\n"
                "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = build_tiny_tokenizer(chat_template=template)
    engine = GenerationEngine(LocalGenerator(build_tiny_model(tokenizer), tokenizer))
    try:
        with BackgroundServer(create_app(engine, "tiny", max_tokens_limit=8)) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model="tiny", messages=[TOOL_PROMPT[0], TOOL_PROMPT[2]], max_tokens=2)
    finally:
        engine.close()
    assert err.value.body["param"] == "messages[1].content"
    assert "the tokenizer chat template does not render tool results" in str(err.value)


def test_generate_refuses_only_the_prompt_its_model_cannot_render(tiny_model_dir, tmp_path, capsys):
    from prefloop.generate import generate_command

    prompts = write(tmp_path / "prompts.jsonl", [{"id": "tools", "messages": TOOL_PROMPT}, {"id": "plain", "prompt": "Hi?"}])
    out = tmp_path / "cands.jsonl"
    assert generate_command(model=str(tiny_model_dir), prompts=str(prompts), out=str(out), n=1, max_new_tokens=2) == 1
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["plain"]
    err = capsys.readouterr().err
    assert "prompts.jsonl:1 (id tools): DataError: messages[1].tool_calls: the tokenizer chat template does not render tool calls" in err
    assert "1 prompt cannot be sent to this model as written" in err and "run the same command again" not in err


# Answer turns (review finding 1): an answer's tool calls, reasoning, name or function-call role reach the
# template; a pair is refused only when the chosen template would drop them, per pair and counted.

# Reasoning as Qwen3's template writes it: only on assistant turns after the last user turn, and always on
# the final one (an empty <think> block when there is no reasoning).
QWEN3_LIKE_TEMPLATE = (
    "{% set ns = namespace(last_user=-1) %}"
    "{% for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% if loop.index0 > ns.last_user and (loop.last or m.reasoning_content) %}"
    "{{ '<think>\\n' + (m.reasoning_content or '') + '\\n</think>\\n\\n' }}"
    "{% endif %}"
    "{{ m.content + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# A reasoning model's template whose generation prompt opens <think> (the answer is "reasoning</think>answer").
THINKING_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'assistant' and loop.last %}{{ '<|im_start|>assistant\\n<think>\\n' + m.content + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
)

REASONING_ANSWER = {"prompt": [{"role": "user", "content": "2+2?"}],
                    "chosen": [{"role": "assistant", "content": "4", "reasoning_content": "two and two make four"}],
                    "rejected": [{"role": "assistant", "content": "5", "reasoning_content": "a guess"}]}
TOOL_CALL_ANSWER = {"prompt": [{"role": "user", "content": "Weather in Paris?"}],
                    "chosen": [{"role": "assistant", "content": None, "tool_calls": [CALL]}],
                    "rejected": [{"role": "assistant", "content": "I cannot check the weather."}]}
NAME_ANSWER = {"conversations": [{"from": "human", "value": "Who are you?"}],
               "chosen": {"from": "gpt", "value": "Your assistant.", "name": "helper"}, "rejected": "Nobody."}
FUNCTION_CALL_ANSWER = {"conversations": [{"from": "human", "value": "Weather in Paris?"}],
                        "chosen": {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {}}"},
                        "rejected": {"from": "gpt", "value": "Sunny."}}


def thinking_tokenizer(template):
    tokenizer = build_tiny_tokenizer(chat_template=template)
    tokenizer.add_tokens(["<think>", "</think>"])  # added, not special, as in Qwen3's tokenizer
    return tokenizer


@pytest.mark.parametrize("record, template_source, shown", [
    (REASONING_ANSWER, QWEN3_LIKE_TEMPLATE, "<think>\ntwo and two make four\n</think>\n\n4<|im_end|>"),
    (TOOL_CALL_ANSWER, TOOL_TEMPLATE, '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'),
    (NAME_ANSWER, TOOL_TEMPLATE, "helper: Your assistant.<|im_end|>"),
])
def test_answer_fields_a_template_renders_are_trained_on(tmp_path, record, template_source, shown):
    """Read without a word (the load used to fail on such a row), and trained exactly as the template
    renders the whole answer turn: prompt_ids + chosen_ids == training_text(prompt + chosen turn)."""
    path = write(tmp_path / "answers.jsonl", [record])
    (pair,) = load_pairs(str(path)).pairs
    tokenizer = thinking_tokenizer(template_source)
    template = get_template(None, tokenizer)
    (encoded,), report = encode_pairs([pair], tokenizer, template)
    assert report.fields_not_rendered == 0 and not report.dropped
    assert shown in tokenizer.decode(encoded.chosen_ids)
    for which, ids in (("chosen", encoded.chosen_ids), ("rejected", encoded.rejected_ids)):
        full = template.training_text(pair.messages(pair.answer(which)))
        assert encoded.prompt_ids + ids == tokenizer(full, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("record, template_name, dropped, advice", [
    (REASONING_ANSWER, None, "reasoning_content in the chosen answer (chosen.reasoning_content), reasoning_content "
     "in the rejected answer (rejected.reasoning_content)", "write the reasoning into the turn's text"),
    (TOOL_CALL_ANSWER, None, "tool calls in the chosen answer (chosen.tool_calls)", "for tool calls and results"),
    (NAME_ANSWER, "llama3", "speaker names in the chosen answer (chosen.name)", "speaker's name into the turn's text"),
    (FUNCTION_CALL_ANSWER, "mistral", "function-call turns in the chosen answer (chosen.role)",
     "for tool calls and results"),
])
def test_answer_fields_a_template_drops_refuse_that_pair_alone(tmp_path, record, template_name, dropped, advice):
    """The template would drop them: that pair alone is refused, counted, with file:line, field and advice
    for that kind of field (a name is not told about reasoning and <think>)."""
    path = write(tmp_path / "answers.jsonl", [{"prompt": "plain?", "chosen": "yes", "rejected": "no"}, record])
    pairs = load_pairs(str(path)).pairs
    tokenizer = build_tiny_tokenizer()  # ChatML: role and content only
    encoded, report = encode_pairs(pairs, tokenizer, get_template(template_name, tokenizer))
    assert len(encoded) == 1 and report.fields_not_rendered == 1
    (drop,) = report.dropped
    assert drop.reason.startswith("template cannot render message fields: ") and dropped in drop.reason
    assert f"({path}:2)" in drop.reason and advice in drop.reason
    if "name" in dropped:
        assert "reasoning" not in drop.reason and "<think>" not in drop.reason


def test_reasoning_advice_and_control_tokens_follow_a_generation_prompt_that_opens_think():
    """A template whose generation prompt opens <think>: the advice says to write "reasoning</think>answer",
    and a <think> or </think> in an answer is not reported as text rendered with a chat template (it is
    what the model writes), while real turn markup still is."""
    tokenizer = thinking_tokenizer(THINKING_TEMPLATE)
    template = get_template(None, tokenizer)
    _, with_field = record_to_pair(REASONING_ANSWER)
    _, report = encode_pairs([with_field], tokenizer, template)
    (drop,) = report.dropped
    assert "generation prompt already opens <think>" in drop.reason and "closed by </think>" in drop.reason
    _, written = record_to_pair({"prompt": "2+2?", "chosen": "two and two make four\n</think>\n\n4",
                                 "rejected": "<think>a guess</think>5"})
    encoded, report = encode_pairs([written], tokenizer, template)
    assert len(encoded) == 1 and report.control_tokens_in_text == 0
    _, rendered = record_to_pair({"prompt": "<|im_start|>user\n2+2?<|im_end|>", "chosen": "4", "rejected": "5"})
    _, report = encode_pairs([rendered], tokenizer, template)
    assert report.control_tokens_in_text == 1 and "<|im_start|>" in report.control_tokens_seen


def test_data_check_counts_answer_fields(tmp_path, capsys):
    from prefloop.cli import main

    path = write(tmp_path / "answers.jsonl", [REASONING_ANSWER, TOOL_CALL_ANSWER, NAME_ANSWER, FUNCTION_CALL_ANSWER,
                                              {"prompt": "plain?", "chosen": "yes", "rejected": "no"}])
    tokenizer_dir = tmp_path / "tok"
    build_tiny_tokenizer().save_pretrained(tokenizer_dir)
    assert main(["data", "check", str(path), "--tokenizer", str(tokenizer_dir), "--template", "mistral", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    turns = report["turns"]
    assert [turns[k] for k in ("answers_with_tool_calls", "function_call_answers", "answers_with_names",
                               "answers_with_reasoning")] == [1, 1, 1, 1]
    assert report["quality"]["removed_by_check"] == {} and report["tokens"]["fields_not_rendered"] == 4
    assert main(["data", "check", str(path), "--tokenizer", str(tokenizer_dir), "--template", "mistral"]) == 0
    text = capsys.readouterr().out
    assert "pairs whose answers have template fields: 1 with tool calls, 1 function calls, 1 with names, " \
           "1 with reasoning" in text
