"""Every accepted preference format -> PreferencePair, the seed writer, and per-record errors."""

import json

import pytest

from prefloop.data.formats import (
    FormatSpec,
    RecordError,
    detect_format,
    make_reader,
    record_to_pair,
    to_seed_record,
    write_seed_jsonl,
)
from prefloop.data.schema import Message, PreferencePair


def roles(pair):
    return [(m.role, m.content) for m in pair.prompt]


# --- the seed's format ------------------------------------------------------------------------


def test_seed_single_turn():
    fmt, pair = record_to_pair({"conversations": [{"from": "user", "value": "Hi?"}], "chosen": "Hello!", "rejected": "Go away."})
    assert fmt == "seed"
    assert roles(pair) == [("user", "Hi?")]
    assert (pair.chosen, pair.rejected) == ("Hello!", "Go away.")
    assert pair.id is None and pair.weight is None and pair.extra == {}


def test_seed_multi_turn_with_system_and_optional_fields():
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "user", "value": "2+2?"},
            {"from": "assistant", "value": "4."},
            {"from": "user", "value": "And 3+3?"},
        ],
        "chosen": "6.",
        "rejected": "7.",
        "id": 17,
        "weight": 2,
        "margin": 0.5,
        "dimensions": {"helpfulness": 4},
        "source": "judge:x",
        "annotator": "bob",
    }
    fmt, pair = record_to_pair(record)
    assert fmt == "seed"
    assert pair.system == "Be brief."
    assert roles(pair)[1:] == [("user", "2+2?"), ("assistant", "4."), ("user", "And 3+3?")]
    assert (pair.id, pair.weight, pair.margin, pair.source) == ("17", 2.0, 0.5, "judge:x")
    assert pair.dimensions == {"helpfulness": 4}
    assert pair.extra == {"annotator": "bob"}


def test_seed_accepts_role_content_turns_and_top_level_system():
    fmt, pair = record_to_pair({"messages": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B", "system": "S"})
    assert fmt == "seed"
    assert roles(pair) == [("system", "S"), ("user", "Q")]


# --- LLaMA-Factory sharegpt / alpaca ranking -----------------------------------------------


def test_sharegpt_ranking_default_tags_with_tools_and_observation():
    record = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "w"}'},
            {"from": "observation", "value": '{"t": 18}'},
        ],
        "chosen": {"from": "gpt", "value": "18 C."},
        "rejected": {"from": "gpt", "value": "35 C."},
        "system": "You check the weather.",
        "tools": [{"name": "w"}],
    }
    fmt, pair = record_to_pair(record)
    assert fmt == "sharegpt"
    assert roles(pair) == [("system", "You check the weather."), ("user", "Weather in Paris?"), ("function_call", '{"name": "w"}'), ("tool", '{"t": 18}')]
    assert pair.chosen == "18 C." and pair.rejected == "35 C."
    assert json.loads(pair.tools) == [{"name": "w"}]


def test_sharegpt_custom_columns_and_tags():
    spec = FormatSpec(
        formatting="sharegpt",
        columns={"messages": "dialog", "chosen": "better", "rejected": "worse", "system": "instructions"},
        tags={"role_tag": "speaker", "content_tag": "text", "user_tag": "customer", "assistant_tag": "agent"},
    )
    record = {
        "dialog": [{"speaker": "customer", "text": "Refund?"}],
        "better": {"speaker": "agent", "text": "Yes, send the order number."},
        "worse": {"speaker": "agent", "text": "No."},
        "instructions": "Support agent.",
    }
    fmt, pair = make_reader(spec)(record)
    assert fmt == "sharegpt"
    assert roles(pair) == [("system", "Support agent."), ("user", "Refund?")]
    assert (pair.chosen, pair.rejected) == ("Yes, send the order number.", "No.")
    with pytest.raises(RecordError, match="unknown role 'client'"):
        make_reader(spec)({**record, "dialog": [{"speaker": "client", "text": "x"}]})


def test_alpaca_ranking_with_input_history_and_system():
    record = {
        "instruction": "Convert to Fahrenheit.",
        "input": "25 C",
        "chosen": "77 F",
        "rejected": "45 F",
        "system": "Be exact.",
        "history": [["Convert 100 C.", "212 F."]],
    }
    fmt, pair = record_to_pair(record)
    assert fmt == "alpaca"
    assert roles(pair) == [("system", "Be exact."), ("user", "Convert 100 C."), ("assistant", "212 F."), ("user", "Convert to Fahrenheit.\n25 C")]
    fmt, pair = record_to_pair({"instruction": "Say hi.", "input": "", "chosen": "Hi", "rejected": "No"})
    assert roles(pair) == [("user", "Say hi.")]


def test_alpaca_custom_columns():
    spec = FormatSpec(formatting="alpaca", columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    fmt, pair = make_reader(spec)({"question": "Q", "good": "A", "bad": "B"})
    assert (fmt, roles(pair), pair.chosen) == ("alpaca", [("user", "Q")], "A")


def test_sharegpt_system_turn_and_system_column():
    """LLaMA-Factory takes a leading system turn (its `system_tag`) as the system prompt; a `system` column
    with the same text agrees with it; a different one is an error naming the column, not a silent pick."""
    base = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}
    assert roles(record_to_pair(base)[1]) == [("system", "S"), ("user", "q")]
    assert roles(record_to_pair({**base, "system": "S"})[1]) == [("system", "S"), ("user", "q")]
    with pytest.raises(RecordError) as err:
        record_to_pair({**base, "system": "Other"})
    assert err.value.field == "system" and "different texts" in err.value.message


def test_sharegpt_tags_with_a_role_tag_only_find_the_text():
    spec = FormatSpec("sharegpt", {"messages": "dialog", "chosen": "c", "rejected": "r"}, {"role_tag": "speaker"})
    record = {"dialog": [{"speaker": "user", "text": "Q"}], "c": {"speaker": "assistant", "text": "A"},
              "r": {"speaker": "assistant", "text": "B"}}
    _, pair = make_reader(spec)(record)
    assert roles(pair) == [("user", "Q")] and (pair.chosen, pair.rejected) == ("A", "B")


def test_openai_formatting_of_dataset_info():
    """LLaMA-Factory's `formatting: openai` (role/content messages, the first may be the system prompt)."""
    spec = FormatSpec("openai", {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
                      {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                       "system_tag": "system"})
    record = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
              "chosen": {"role": "assistant", "content": "A"}, "rejected": {"role": "assistant", "content": "B"}}
    fmt, pair = make_reader(spec)(record)
    assert fmt == "sharegpt" and roles(pair) == [("system", "S"), ("user", "Q")]
    assert (pair.chosen, pair.rejected) == ("A", "B")


def test_alpaca_like_llama_factory_converter():
    """LLaMA-Factory's AlpacaDatasetConverter: history pairs first, then "instruction\\ninput" (an empty part
    left out), the system column, and the tools column."""
    spec = FormatSpec("alpaca", {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
                                 "system": "system", "history": "history", "tools": "tools"})
    record = {"instruction": "", "input": "25 C", "chosen": "77 F", "rejected": "45 F", "system": "Be exact.",
              "history": [["Convert 100 C.", "212 F."]], "tools": [{"name": "convert"}]}
    _, pair = make_reader(spec)(record)
    assert roles(pair) == [("system", "Be exact."), ("user", "Convert 100 C."), ("assistant", "212 F."), ("user", "25 C")]
    assert json.loads(pair.tools) == [{"name": "convert"}] and pair.extra == {}


# --- TRL -----------------------------------------------------------------------------------


def test_trl_standard():
    fmt, pair = record_to_pair({"prompt": "Largest planet?", "chosen": "Jupiter.", "rejected": "Saturn."})
    assert fmt == "trl_standard"
    assert roles(pair) == [("user", "Largest planet?")]


def test_trl_conversational_explicit_prompt():
    record = {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "A"}],
        "rejected": [{"role": "assistant", "content": "B"}],
    }
    fmt, pair = record_to_pair(record)
    assert fmt == "trl_conversational"
    assert roles(pair) == [("system", "S"), ("user", "Q")]
    assert (pair.chosen, pair.rejected) == ("A", "B")


def test_trl_conversational_implicit_prompt_multi_turn():
    shared = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Capital of France?"}]
    record = {"chosen": shared + [{"role": "assistant", "content": "Paris."}], "rejected": shared + [{"role": "assistant", "content": "Lyon."}]}
    fmt, pair = record_to_pair(record)
    assert fmt == "trl_conversational"
    assert roles(pair) == [("user", "Hi"), ("assistant", "Hello"), ("user", "Capital of France?")]
    assert (pair.chosen, pair.rejected) == ("Paris.", "Lyon.")


def test_trl_prompt_string_with_full_conversations_like_ultrafeedback():
    record = {
        "prompt": "Q",
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}],
        "score_chosen": 8.0,
    }
    fmt, pair = record_to_pair(record)
    assert roles(pair) == [("user", "Q")] and (pair.chosen, pair.rejected) == ("A", "B")
    assert pair.extra == {"score_chosen": 8.0}


def test_trl_implicit_prompt_that_differs_before_the_answer_is_an_error():
    record = {
        "chosen": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A"}],
        "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "B"}],
    }
    with pytest.raises(RecordError) as err:
        record_to_pair(record)
    assert err.value.field == "chosen"
    assert "share every turn except the final assistant answer" in err.value.suggestion


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_trl_prompt_string_next_to_conversations_with_a_system_turn():
    """TRL's maybe_extract_prompt ignores a string prompt next to whole conversations and takes the turns
    chosen and rejected share: a system turn in them stays first (it used to become a second system turn
    after the string prompt: "a system turn may only come first")."""
    shared = turns(("system", "Be brief."), ("user", "What color is the sky?"))
    record = {"prompt": "What color is the sky?",
              "chosen": shared + turns(("assistant", "Blue.")), "rejected": shared + turns(("assistant", "Green."))}
    fmt, pair = record_to_pair(record)
    assert fmt == "trl_conversational"
    assert roles(pair) == [("system", "Be brief."), ("user", "What color is the sky?")]
    assert (pair.chosen, pair.rejected) == ("Blue.", "Green.")


def test_trl_prompt_string_that_is_the_first_question_of_a_multi_turn_conversation():
    """Capybara-style rows: `prompt` holds the first user message, chosen/rejected the whole dialogue."""
    shared = turns(("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?"))
    record = {"prompt": "Hi ", "chosen": shared + turns(("assistant", "4")), "rejected": shared + turns(("assistant", "5"))}
    _, pair = record_to_pair(record)
    assert roles(pair) == [("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")]
    assert (pair.chosen, pair.rejected) == ("4", "5")


def test_trl_prompt_string_that_disagrees_with_the_conversation_is_ignored_with_a_warning():
    """TRL ignores a string prompt next to whole conversations; so does prefloop, but it says so (the
    loader counts such pairs) instead of refusing the record."""
    shared = turns(("user", "What color is the sky?"))
    record = {"prompt": "Name a fruit.",
              "chosen": shared + turns(("assistant", "Blue.")), "rejected": shared + turns(("assistant", "Green."))}
    warnings = []
    _, pair = record_to_pair(record, warn=lambda *w: warnings.append(w))
    assert roles(pair) == [("user", "What color is the sky?")] and (pair.chosen, pair.rejected) == ("Blue.", "Green.")
    ((kind, field, message, suggestion),) = warnings
    assert kind == "prompt_string_ignored" and field == "prompt" and "'Name a fruit.'" in message and suggestion
    assert record_to_pair(record)[1].prompt == pair.prompt  # without a warn callback: read the same, silently


def test_trl_prompt_string_that_is_a_shared_user_turn_gives_no_warning():
    shared = turns(("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?"))
    record = {"prompt": "Hi", "chosen": shared + turns(("assistant", "4")), "rejected": shared + turns(("assistant", "5"))}
    warnings = []
    record_to_pair(record, warn=lambda *w: warnings.append(w))
    assert warnings == []


def test_trl_prompt_string_with_mixed_lists_strips_the_repeated_prompt():
    """Regression (read before the audit, then refused with "'chosen' has 2 turns"): chosen repeats the
    string prompt as its first turn, rejected is the answer turn only."""
    record = {"prompt": "Q?", "chosen": turns(("user", "Q?"), ("assistant", "A")),
              "rejected": turns(("assistant", "B"))}
    fmt, pair = record_to_pair(record)
    assert fmt == "trl_conversational" and roles(pair) == [("user", "Q?")]
    assert (pair.chosen, pair.rejected) == ("A", "B")


def test_trl_prompt_string_with_answer_turns_only_is_the_user_turn():
    record = {"prompt": "Q", "chosen": turns(("assistant", "A")), "rejected": turns(("assistant", "B"))}
    _, pair = record_to_pair(record)
    assert roles(pair) == [("user", "Q")] and (pair.chosen, pair.rejected) == ("A", "B")


def test_trl_explicit_prompt_with_answers_sharing_turns_beyond_it():
    """chosen and rejected share an answer and a follow-up question after the explicit prompt: the shared
    turns join the prompt (identical tokens in an identical context cancel in every pairwise loss), and
    the pair's answers are the final turns that differ."""
    record = {
        "prompt": turns(("user", "Hi")),
        "chosen": turns(("assistant", "Hello"), ("user", "2+2?"), ("assistant", "4")),
        "rejected": turns(("assistant", "Hello"), ("user", "2+2?"), ("assistant", "5")),
    }
    _, pair = record_to_pair(record)
    assert roles(pair) == [("user", "Hi"), ("assistant", "Hello"), ("user", "2+2?")]
    assert (pair.chosen, pair.rejected) == ("4", "5")


def test_trl_implicit_prompt_when_one_conversation_extends_the_other_is_an_error():
    """TRL #6472: extract_prompt leaked the last shared turn into the answers when one completion is a prefix
    of the other; here such a row is refused, naming the field, instead of training on a wrong split."""
    base = turns(("user", "Hi"), ("assistant", "Hello"))
    record = {"chosen": base, "rejected": base + turns(("user", "More?"), ("assistant", "No."))}
    with pytest.raises(RecordError) as err:
        record_to_pair(record)
    assert err.value.field == "rejected" and "expected one answer" in err.value.message


def test_trl_implicit_prompt_of_identical_conversations_reads_identical_answers():
    conversation = turns(("user", "Q"), ("assistant", "Same."))
    _, pair = record_to_pair({"chosen": conversation, "rejected": conversation})
    assert roles(pair) == [("user", "Q")] and pair.chosen == pair.rejected == "Same."  # encode drops it, counted


# --- Anthropic HH --------------------------------------------------------------------------


def test_hh_single_and_multi_turn():
    fmt, pair = record_to_pair({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."})
    assert fmt == "hh"
    assert roles(pair) == [("user", "Hi")]
    assert (pair.chosen, pair.rejected) == ("Hello!", "Go away.")
    common = "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant:"
    fmt, pair = record_to_pair({"chosen": common + " good\nanswer", "rejected": common + " bad"})
    assert roles(pair) == [("user", "Q1"), ("assistant", "A1"), ("user", "Q2")]
    assert (pair.chosen, pair.rejected) == ("good\nanswer", "bad")


def test_hh_empty_final_answer_is_read_and_left_to_the_quality_check():
    fmt, pair = record_to_pair({"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant:"})
    assert pair.rejected == ""


def test_hh_text_before_first_turn_is_an_error():
    with pytest.raises(RecordError, match="before the first 'Human:'"):
        record_to_pair({"chosen": "\n\nPreamble\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: Q\n\nAssistant: B"}, FormatSpec("hh"))


def test_hh_marker_quoted_inside_a_turn_stays_in_its_text():
    """A "\\n\\nHuman:" inside the user's own message (or "\\n\\nAssistant:" inside the answer) cannot start a
    turn of an alternating dialogue: it is kept as text, exactly as written."""
    question = 'Repeat after me: "\n\nHuman: hello"'
    fmt, pair = record_to_pair({
        "chosen": f"\n\nHuman: {question}\n\nAssistant: Sure.\n\nAssistant: is my name.",
        "rejected": f"\n\nHuman: {question}\n\nAssistant: No.",
    })
    assert fmt == "hh"
    assert roles(pair) == [("user", question)]
    assert (pair.chosen, pair.rejected) == ("Sure.\n\nAssistant: is my name.", "No.")


def test_hh_transcripts_that_differ_before_the_last_answer_are_an_error():
    """The split must not put a differing earlier turn into the prompt (an empty or wrong answer would
    follow, as with a right-most "Assistant:" split); the record is refused and names the field."""
    with pytest.raises(RecordError) as err:
        record_to_pair({"chosen": "\n\nHuman: Q1\n\nAssistant: A\n\nHuman: Q2\n\nAssistant: good",
                        "rejected": "\n\nHuman: Q1\n\nAssistant: B\n\nHuman: Q2\n\nAssistant: bad"})
    assert err.value.field == "chosen" and "expected one answer" in err.value.message


# --- detection and errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"conversations": [], "chosen": "a", "rejected": "b"}, "seed"),
        ({"conversations": [], "chosen": {"from": "gpt", "value": "a"}, "rejected": {}}, "sharegpt"),
        ({"instruction": "i", "chosen": "a", "rejected": "b"}, "alpaca"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "trl_standard"),
        ({"chosen": [], "rejected": []}, "trl_conversational"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "x"}, "hh"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected


def test_undetectable_record_says_what_formats_exist():
    with pytest.raises(RecordError) as err:
        record_to_pair({"question": "q", "chosen": "a", "rejected": "b"})
    assert err.value.field == "prompt" and "accepted formats" in err.value.suggestion
    with pytest.raises(RecordError) as err:
        record_to_pair({"prompt": "q", "chosen": "a"})
    assert err.value.field == "rejected" and "missing field 'rejected'" in err.value.message


@pytest.mark.parametrize(
    "record, field, message",
    [
        ({"conversations": [{"from": "robot", "value": "x"}], "chosen": "a", "rejected": "b"}, "conversations[0].from", "unknown role 'robot'"),
        ({"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}], "chosen": "a", "rejected": "b"}, "conversations", "does not end with a user turn"),
        ({"conversations": [{"from": "user", "value": "q"}, {"from": "user", "value": "q2"}], "chosen": "a", "rejected": "b"}, "conversations[1]", "must alternate"),
        ({"conversations": [{"from": "user", "value": "q"}], "chosen": ["a", "b"], "rejected": "b"}, "chosen", "must be a string or a message object"),
        ({"conversations": [{"from": "user", "value": 3}], "chosen": "a", "rejected": "b"}, "conversations[0].value", "content must be a string"),
        ({"conversations": "hello", "chosen": "a", "rejected": "b"}, "conversations", "must be a list of turns"),
        ({"conversations": [], "chosen": "a", "rejected": "b"}, "conversations", "no user turn"),
        ({"conversations": [{"from": "user", "value": "q"}], "chosen": "a", "rejected": None}, "rejected", "'rejected' is null"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "weight": "high"}, "weight", "must be a finite number"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "weight": -1}, "weight", ">= 0"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "dimensions": [1, 2]}, "dimensions", "must be an object"),
        ({"prompt": "q", "chosen": "a", "rejected": 5}, "rejected", "must be a string or a list"),
        ({"instruction": 5, "chosen": "a", "rejected": "b"}, "instruction", "must be a string"),
        ({"instruction": "i", "chosen": "a", "rejected": "b", "history": [["only one"]]}, "history[0]", "[question, answer]"),
    ],
)
def test_record_errors_name_the_field(record, field, message):
    with pytest.raises(RecordError) as err:
        record_to_pair(record)
    assert err.value.field == field
    assert message in err.value.message
    assert err.value.suggestion


# --- the writer ----------------------------------------------------------------------------


def full_pair():
    return PreferencePair(
        prompt=[Message("system", "S"), Message("user", "Q1"), Message("assistant", "A1"), Message("user", "Q2")],
        chosen="good",
        rejected="bad",
        tools='[{"name": "f"}]',
        id="p1",
        weight=0.5,
        margin=1.25,
        dimensions={"safety": 5},
        source="file.jsonl:3",
        extra={"annotator": "ann"},
    )


def test_to_seed_record_shape():
    record = to_seed_record(full_pair(), judge="gpt-x")
    assert record["conversations"] == [
        {"from": "system", "value": "S"},
        {"from": "user", "value": "Q1"},
        {"from": "assistant", "value": "A1"},
        {"from": "user", "value": "Q2"},
    ]
    assert (record["chosen"], record["rejected"], record["id"], record["weight"]) == ("good", "bad", "p1", 0.5)
    assert (record["annotator"], record["judge"]) == ("ann", "gpt-x")
    minimal = to_seed_record(PreferencePair([Message("user", "q")], "a", "b"))
    assert set(minimal) == {"conversations", "chosen", "rejected"}


def test_seed_writer_round_trips_through_the_reader():
    pair = full_pair()
    fmt, again = record_to_pair(json.loads(json.dumps(to_seed_record(pair))))
    assert fmt == "seed"
    assert again == pair


def test_provenance_may_set_optional_fields_but_not_the_pair():
    record = to_seed_record(full_pair(), source="judge:y", weight=None)
    assert record["source"] == "judge:y" and record["weight"] == 0.5
    with pytest.raises(ValueError, match="chosen"):
        to_seed_record(full_pair(), chosen="x")


def test_write_seed_jsonl(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    assert write_seed_jsonl([full_pair(), full_pair()], path, round=3) == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["round"] == 3


@pytest.mark.parametrize(
    "record, which, role, fields",
    [
        ({"prompt": [{"role": "user", "content": "Q"}],
          "chosen": [{"role": "assistant", "content": "A", "reasoning_content": "because"}],
          "rejected": [{"role": "assistant", "content": "B"}]}, "chosen", "assistant", {"reasoning_content": "because"}),
        ({"prompt": [{"role": "user", "content": "Weather?"}],
          "chosen": [{"role": "assistant", "content": None,
                      "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]}],
          "rejected": [{"role": "assistant", "content": "Sunny."}]}, "chosen", "assistant",
         {"tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]}),
        ({"conversations": [{"from": "human", "value": "Weather?"}], "chosen": {"from": "function_call", "value": "{}"},
          "rejected": {"from": "gpt", "value": "Sunny."}}, "chosen", "function_call", {}),
        ({"conversations": [{"from": "human", "value": "Who?"}], "chosen": "Me.",
          "rejected": {"from": "gpt", "value": "Bob.", "name": "bob"}}, "rejected", "assistant", {"name": "bob"}),
        ({"chosen": turns(("user", "Q"), ("assistant", "A")),
          "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B", "thinking": "hmm"}]},
         "rejected", "assistant", {"thinking": "hmm"}),
    ],
)
def test_answers_keep_their_tool_calls_reasoning_names_and_function_role(record, which, role, fields):
    """An answer turn's fields and role are read into the pair (not refused at read time: whether the chat
    template renders them is decided per pair when encoding), and written back by the seed writer."""
    _, pair = record_to_pair(record)
    answer = pair.answer(which)
    assert (answer.role, answer.fields) == (role, fields)
    other = pair.answer("rejected" if which == "chosen" else "chosen")
    assert (other.role, other.fields) == ("assistant", {})
    _, again = record_to_pair(to_seed_record(pair))
    assert again.answer("chosen") == pair.answer("chosen") and again.answer("rejected") == pair.answer("rejected")
    assert pair.messages(answer)[-1] == {"role": role, "content": answer.content, **fields}
    swapped = pair.swapped()
    assert swapped.answer("chosen") == pair.answer("rejected") and swapped.answer("rejected") == pair.answer("chosen")


def test_answer_fields_are_still_validated_where_they_are():
    record = {"prompt": "Q", "chosen": [{"role": "assistant", "content": "A", "reasoning_content": 3}],
              "rejected": [{"role": "assistant", "content": "B"}]}
    with pytest.raises(RecordError) as err:
        record_to_pair(record)
    assert err.value.field == "chosen[0].reasoning_content" and "must be a string" in err.value.message
