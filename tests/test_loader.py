"""load_pairs: files of every kind, stable ids, problems with file/line/field, skipping, splits."""

import json
from pathlib import Path

import pytest

from prefloop.data.formats import write_seed_jsonl
from prefloop.data.loader import MAX_LISTED_PROBLEMS, load_pairs, split_validation
from prefloop.data.registry import CONFIG_KEYS
from prefloop.data.schema import Message, PreferencePair
from prefloop.errors import DataError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"


def jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def trl(i):
    return {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


def test_jsonl_ids_sources_and_format_counts(tmp_path):
    path = jsonl(tmp_path / "prefs.jsonl", [trl(1), "", trl(2) | {"id": "mine"}])
    result = load_pairs(str(path))
    assert [p.id for p in result.pairs] == ["prefs:1", "mine"]
    assert [p.source for p in result.pairs] == [f"{path}:1", f"{path}:3"]
    assert result.format_counts == {"trl_standard": 2}
    assert result.skipped.count == 0
    assert "2 pairs from 1 file " in result.summary()


def test_json_list_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "l.json").write_text(json.dumps([trl(1), trl(2)]))
    pq.write_table(pa.Table.from_pylist([trl(3) | {"weight": None}, trl(4) | {"weight": 2.0}]), tmp_path / "t.parquet")
    result = load_pairs(f"{tmp_path / 'l.json'},{tmp_path / 't.parquet'}")
    assert [p.prompt[0].content for p in result.pairs] == ["question 1", "question 2", "question 3", "question 4"]
    assert [p.id for p in result.pairs] == ["l:1", "l:2", "t:1", "t:2"]
    assert result.pairs[2].source == f"{tmp_path / 't.parquet'}#1"
    assert [p.weight for p in result.pairs] == [None, None, None, 2.0]
    assert result.pairs_per_dataset == {str(tmp_path / "l.json"): 2, str(tmp_path / "t.parquet"): 2}


def test_json_file_holding_json_lines_is_read(tmp_path):
    path = jsonl(tmp_path / "lines.json", [trl(1), trl(2)])
    assert len(load_pairs(str(path)).pairs) == 2


def test_directory_mixing_formats(tmp_path):
    jsonl(tmp_path / "a.jsonl", [trl(1)])
    jsonl(tmp_path / "b.jsonl", [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}])
    result = load_pairs(str(tmp_path))
    assert result.format_counts == {"trl_standard": 1, "hh": 1}


def test_same_file_stem_in_two_folders_gets_distinct_ids(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    jsonl(tmp_path / "x" / "d.jsonl", [trl(1)])
    jsonl(tmp_path / "y" / "d.jsonl", [trl(1)])
    ids = [p.id for p in load_pairs(f"{tmp_path / 'x'},{tmp_path / 'y'}").pairs]
    assert len(set(ids)) == 2


def test_names_through_dataset_info(tmp_path):
    jsonl(tmp_path / "a.jsonl", [trl(1), trl(2), trl(3)])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"a": {"file_name": "a.jsonl", "num_samples": 2}}))
    result = load_pairs("a", dataset_dir=str(tmp_path))
    assert len(result.pairs) == 2
    assert result.pairs_per_dataset == {"a": 2}


def test_max_samples_caps_each_dataset(tmp_path):
    jsonl(tmp_path / "a.jsonl", [trl(i) for i in range(5)])
    jsonl(tmp_path / "b.jsonl", [trl(i) for i in range(5)])
    result = load_pairs(f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}", max_samples=2)
    assert [p.id for p in result.pairs] == ["a:1", "a:2", "b:1", "b:2"]


def test_every_registered_example_loads_with_its_declared_format():
    expected = {
        "seed_example": "seed", "sharegpt_example": "sharegpt", "support_custom": "sharegpt", "alpaca_example": "alpaca",
        "trl_standard_example": "trl_standard", "trl_conversational_example": "trl_conversational",
        "trl_parquet_example": "trl_conversational", "hh_example": "hh",
    }
    for name, fmt in expected.items():
        result = load_pairs(name, dataset_dir=str(EXAMPLES))
        assert set(result.format_counts) == {fmt}, name
        assert len(result.pairs) >= 2


def info(tmp_path, **entries):
    (tmp_path / "dataset_info.json").write_text(json.dumps(entries))
    return str(tmp_path)


def alpaca(i, **extra):
    return {"instruction": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}", **extra}


def test_dataset_info_ranking_alpaca_with_every_column(tmp_path):
    """LLaMA-Factory's documented alpaca ranking entry: prompt/query/chosen/rejected/system/history columns."""
    jsonl(tmp_path / "a.jsonl", [alpaca(1, input="x", system="S", history=[["h", "i"]]), alpaca(2)])
    columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
               "system": "system", "history": "history"}
    result = load_pairs("a", dataset_dir=info(tmp_path, a={"file_name": "a.jsonl", "ranking": True, "columns": columns}))
    assert [(m.role, m.content) for m in result.pairs[0].prompt] == [
        ("system", "S"), ("user", "h"), ("assistant", "i"), ("user", "question 1\nx")]
    assert [(m.role, m.content) for m in result.pairs[1].prompt] == [("user", "question 2")]


def test_declared_optional_column_that_no_record_has_is_an_error(tmp_path):
    """A misspelt optional column (system, history, query, tools) would drop its text from every prompt
    without a word; LLaMA-Factory refuses a declared column missing from the data, and so does prefloop."""
    jsonl(tmp_path / "a.jsonl", [alpaca(1, system="S"), alpaca(2)])
    entry = {"file_name": "a.jsonl", "ranking": True,
             "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected", "system": "sytem"}}
    with pytest.raises(DataError, match="declares the column 'system': 'sytem', but no record"):
        load_pairs("a", dataset_dir=info(tmp_path, a=entry))
    entry["columns"]["system"] = "system"  # present in one record of two: fine
    result = load_pairs("a", dataset_dir=info(tmp_path, a=entry))
    assert [p.system for p in result.pairs] == ["S", None]


def test_media_and_kto_columns_are_refused(tmp_path):
    jsonl(tmp_path / "a.jsonl", [alpaca(1)])
    entry = {"file_name": "a.jsonl", "ranking": True, "columns": {"prompt": "instruction", "images": "images"}}
    with pytest.raises(DataError, match="columns 'images' are not supported"):
        load_pairs("a", dataset_dir=info(tmp_path, a=entry))


def test_openai_formatting_loads(tmp_path):
    record = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
              "chosen": {"role": "assistant", "content": "A"}, "rejected": {"role": "assistant", "content": "B"}}
    (tmp_path / "o.json").write_text(json.dumps([record]))
    entry = {"file_name": "o.json", "formatting": "openai", "ranking": True,
             "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}}
    result = load_pairs("o", dataset_dir=info(tmp_path, o=entry))
    assert [(m.role, m.content) for m in result.pairs[0].prompt] == [("system", "S"), ("user", "Q")]


def test_custom_columns_need_their_declaration():
    with pytest.raises(DataError, match="declare them as 'columns' in dataset_info.json"):
        load_pairs(str(EXAMPLES / "support_custom_tags.json"))


def test_bad_rows_are_listed_with_file_line_and_field(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [
        trl(1),
        '{"prompt": "q", "chosen": "a", "rejected": ',
        {"prompt": "q", "chosen": 3, "rejected": "b"},
        {"conversations": [{"from": "alien", "value": "q"}], "chosen": "a", "rejected": "b"},
        "[1, 2]",
    ])
    with pytest.raises(DataError) as err:
        load_pairs(str(path), options=CONFIG_KEYS)
    message = str(err.value)
    assert "4 problems" in message
    assert f"{path}:2: malformed JSON at column 43: the text ends before the JSON value is complete" in message
    assert f"{path}:3: field 'chosen'" in message
    assert f"{path}:4: field 'conversations[0].from': unknown role 'alien'" in message
    assert f"{path}:5: expected a JSON object" in message
    assert "skip bad rows with skip_bad_rows: true" in message
    with pytest.raises(DataError) as err:  # a command without the option is not told to use it
        load_pairs(str(path))
    assert "skip" not in str(err.value).splitlines()[-1]


# A broken JSON line: the parser's position and a plain cause (issue 12, item 20).
BROKEN_LINES = [
    ('{"prompt": "What is the capital of France?", "chosen": "Paris is the capital',
     "column 77: unterminated string (the string opened at column 56 has no closing quote before the line ends)"),
    ('{"prompt": "q", "chosen": "a" "rejected": "b"}', "column 31: missing ',' between two items"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b",}', "column 48: expected a key in double quotes"),
    ('{"prompt": "q", "chosen": "a", "rejected": None}', "column 44: no JSON value here"),
    ('{"prompt": "q", "chosen": "tab\there", "rejected": "b"}', "column 31: a raw control character '\\t'"),
    ('{"prompt": "q", "chosen": "C:\\q", "rejected": "b"}', "column 30: invalid backslash escape"),
]


@pytest.mark.parametrize("line, message", BROKEN_LINES)
def test_a_broken_json_line_says_where_and_why(tmp_path, line, message):
    path = jsonl(tmp_path / "broken.jsonl", [trl(1), line])
    with pytest.raises(DataError) as err:
        load_pairs(str(path))
    assert f"{path}:2: malformed JSON at {message}" in str(err.value)


def test_skip_bad_rows_counts_every_skip(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [trl(1), "{oops", {"prompt": "q", "chosen": "a"}, "{oops again", trl(2)])
    result = load_pairs(str(path), skip_bad_rows=True)
    assert len(result.pairs) == 2
    assert result.skipped.count == 3
    reasons = result.skipped.reasons
    assert sum(reasons.values()) == 3
    assert any("malformed JSON" in r for r in reasons) and any("missing field 'rejected'" in r for r in reasons)
    assert "skipped 3 bad rows" in result.summary()
    assert result.skipped.to_dict()["first"][0]["location"] == "line 2"


def test_error_lists_first_20_problems_and_a_count(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", ["{bad"] * 45)
    with pytest.raises(DataError) as err:
        load_pairs(str(path))
    message = str(err.value)
    assert "45 problems" in message
    assert message.count("malformed JSON") == MAX_LISTED_PROBLEMS
    assert "and 25 more" in message


@pytest.mark.parametrize("content, name, message", [
    (b"", "empty.jsonl", "file is empty"),
    (b"\n\n", "blank.jsonl", "file is empty"),
    (b"[]", "empty.json", "file is empty"),
    (b'{"a": 1', "broken.json", "malformed JSON"),
    (b'"just a string"', "str.json", "expected a JSON list"),
    (b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}\n', "latin.jsonl", "not UTF-8"),
    (b"not parquet", "fake.parquet", "not a readable parquet file"),
    (b"a,b\n", "data.csv", "unsupported file type"),
])
def test_unreadable_files_are_reported(tmp_path, content, name, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_pairs(str(tmp_path / name))
    result = load_pairs(str(tmp_path / name), skip_bad_rows=True, allow_empty=True)
    assert result.pairs == [] and result.skipped.count == 1


def test_all_rows_skipped_is_still_an_error_unless_allowed(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", ["{bad"])
    with pytest.raises(DataError, match="no usable preference pairs; 1 bad row"):
        load_pairs(str(path), skip_bad_rows=True)


def test_unreadable_file_is_a_problem_not_a_crash(tmp_path):
    from prefloop.data.loader import iter_records

    (tmp_path / "dir.jsonl").mkdir()  # opening it fails like a file without read permission (tests run as root)
    (problem,) = list(iter_records(tmp_path / "dir.jsonl"))
    assert "cannot read the file" in problem.message and problem.file == str(tmp_path / "dir.jsonl")


def test_written_seed_file_loads_back_equal(tmp_path):
    pairs = [
        PreferencePair([Message("system", "S"), Message("user", "q")], "a", "b", id="x", weight=2.0, dimensions={"d": 1}, source="s0"),
        PreferencePair([Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2")], "c", "d", source="s"),
    ]
    path = tmp_path / "out.jsonl"
    write_seed_jsonl(pairs, path)
    loaded = load_pairs(str(path)).pairs
    assert loaded[0] == pairs[0]
    assert loaded[1].prompt == pairs[1].prompt and loaded[1].source == "s" and loaded[1].id == "out:2"


# --- split_validation ----------------------------------------------------------------------


def make_pairs(n):
    return [PreferencePair([Message("user", f"q{i}")], "a", "b", id=str(i)) for i in range(n)]


def test_split_fraction_is_reproducible_and_ordered():
    pairs = make_pairs(100)
    train, val = split_validation(pairs, 0.1)
    assert len(val) == 10 and len(train) == 90
    assert {p.id for p in train} | {p.id for p in val} == {str(i) for i in range(100)}
    assert [p.id for p in val] == sorted((p.id for p in val), key=int)
    assert split_validation(pairs, 0.1)[1] == val
    assert split_validation(pairs, 0.1, seed=7)[1] != val


def test_split_count_and_zero():
    pairs = make_pairs(20)
    assert len(split_validation(pairs, 3)[1]) == 3
    assert len(split_validation(pairs, 3.0)[1]) == 3
    assert split_validation(pairs, 0) == (pairs, [])
    assert len(split_validation(pairs, 0.01)[1]) == 1  # a fraction always gives at least one


@pytest.mark.parametrize("val_size", [20, 25, 1.5, -0.1, True, "0.1"])
def test_split_rejects_bad_sizes(val_size):
    with pytest.raises(DataError, match="val_size"):
        split_validation(make_pairs(20), val_size)


def test_a_bad_record_of_a_json_list_is_named_by_line_too(tmp_path):
    """A .json list has no line per record: the problem says the record and the line it starts on."""
    path = tmp_path / "list.json"
    path.write_text('[\n  {"prompt": "q", "chosen": "a", "rejected": "b"},\n  {"prompt": "q",\n'
                    '   "chosen": 3, "rejected": "b"}, [1, 2],\n  {"prompt": "[x]"}\n]\n')
    with pytest.raises(DataError) as err:
        load_pairs(str(path))
    text = str(err.value)
    assert f"{path}:3 (record 2): field 'chosen': 'chosen' must be a string" in text
    assert f"{path}:4 (record 3): expected a JSON object" in text
    assert f"{path}:5 (record 4): field 'chosen': missing field 'chosen'" in text
    single = tmp_path / "one.json"
    single.write_text('\n{"prompt": ["not", "turns"], "chosen": "a", "rejected": "b"}')
    with pytest.raises(DataError, match=r"one.json:2 \(record 1\): field 'prompt\[0\]'"):
        load_pairs(str(single))


IGNORED_PROMPT = {"prompt": "Name a fruit.",
                  "chosen": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "Blue."}],
                  "rejected": [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "Green."}]}
MIXED_LISTS = {"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
               "rejected": [{"role": "assistant", "content": "B"}]}


def test_a_trl_prompt_string_next_to_conversations_is_ignored_counted_and_reported(tmp_path):
    """TRL ignores such a string; the load does too (it used to fail), and its summary says how many pairs
    had one that is none of their shared user turns, with file and line kept for `data check`."""
    path = jsonl(tmp_path / "trl.jsonl", [IGNORED_PROMPT, trl(2), MIXED_LISTS, IGNORED_PROMPT | {"chosen": 1}])
    result = load_pairs(str(path), skip_bad_rows=True)
    assert [p.prompt[0].content for p in result.pairs] == ["What color is the sky?", "question 2", "Q?"]
    assert [(p.chosen, p.rejected) for p in result.pairs] == [("Blue.", "Green."), ("good 2", "bad 2"), ("A", "B")]
    assert result.warnings.kinds == {"prompt_string_ignored": 1}  # the bad row 4 is skipped, not warned about
    (warning,) = result.warnings.problems
    assert (warning.file, warning.location, warning.field) == (str(path), "line 1", "prompt")
    assert "1 pair had a prompt string that is none of the user turns chosen and rejected share" in result.summary()
    assert load_pairs(str(jsonl(tmp_path / "clean.jsonl", [trl(1), MIXED_LISTS]))).warnings.count == 0
