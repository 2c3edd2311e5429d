"""Preference-data input gaps: every bad value is a counted bad row naming file:line and field,
treated the same by `prefloop data check` and training's loading (both use `load_pairs`)."""

import json
from pathlib import Path

import pytest

from prefloop.cli import main
from prefloop.data.dimensions import apply_dimensions
from prefloop.data.loader import load_pairs
from prefloop.data.registry import CONFIG_KEYS
from prefloop.errors import DataError


def jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def trl(i, **extra):
    return {"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}", **extra}


BAD_NUMBERS = [
    ({"dimensions": {"help": {"chosen": True, "rejected": 1}}}, "dimensions.help.chosen", "boolean"),
    ({"dimensions": {"help": {"chosen": "0.5", "rejected": 1}}}, "dimensions.help.chosen", "string"),
    ('"dimensions": {"help": {"chosen": 1, "rejected": NaN}}', "dimensions.help.rejected", "not a finite number"),
    ({"dimensions": {"help": {"chosen": "3"}}}, "dimensions.help.chosen", "string"),
    ({"dimensions": {"help": {"score": 3}}}, "dimensions.help", "without 'chosen' and 'rejected'"),
    ({"dimensions": {"help": {"chosen": 3, "rejected": 1, "why": "x"}}}, "dimensions.help", "unknown key 'why'"),
    ({"dimensions": {"help": "5"}}, "dimensions.help", "string"),
    ({"weight": True}, "weight", "boolean"),
    ({"margin": "0.5"}, "margin", "string"),
    ('"weight": Infinity', "weight", "not a finite number"),
]


def _row(extra, i=2):
    if isinstance(extra, str):  # raw JSON text (NaN / Infinity cannot be written by json.dumps strictly)
        return json.dumps(trl(i))[:-1] + ", " + extra + "}"
    return trl(i, **extra)


@pytest.mark.parametrize("extra,field,words", BAD_NUMBERS)
def test_bad_numbers_are_bad_rows_in_check_and_training(tmp_path, capsys, extra, field, words):
    data = jsonl(tmp_path / "p.jsonl", [trl(1), _row(extra), trl(3)])
    # training's loading: a clear per-row error, or with skip_bad_rows a counted skip
    with pytest.raises(DataError) as err:
        load_pairs(str(data), options=CONFIG_KEYS)
    assert f"p.jsonl:2: field '{field}'" in str(err.value) and words in str(err.value)
    loaded = load_pairs(str(data), skip_bad_rows=True)
    assert len(loaded.pairs) == 2 and loaded.skipped.count == 1
    # weighting the dimensions of what was loaded never meets the bad value
    apply_dimensions(loaded.pairs, {"help": 1.0})
    # data check: the same row, the same words, exit 2
    assert main(["data", "check", str(data)]) == 2
    out = capsys.readouterr()
    assert f"p.jsonl:2: field '{field}'" in out.err and words in out.err


def test_a_key_given_twice_is_a_bad_row_naming_line_and_key(tmp_path, capsys):
    dup = '{"prompt": "q", "chosen": "good", "rejected": "bad", "chosen": "other"}'
    nested = ('{"conversations": [{"from": "human", "value": "q", "value": "q2"}], '
              '"chosen": "good", "rejected": "bad"}')
    data = jsonl(tmp_path / "d.jsonl", [trl(1), dup, nested, trl(4)])
    with pytest.raises(DataError) as err:
        load_pairs(str(data))
    text = str(err.value)
    assert "d.jsonl:2: field 'chosen': key 'chosen' is given twice" in text
    assert "d.jsonl:3: field 'conversations[0].value': key 'value' is given twice" in text
    loaded = load_pairs(str(data), skip_bad_rows=True)
    assert [p.chosen for p in loaded.pairs] == ["good 1", "good 4"] and loaded.skipped.count == 2
    assert main(["data", "check", str(data)]) == 2
    assert "d.jsonl:2: field 'chosen'" in capsys.readouterr().err


def test_a_key_given_twice_in_a_json_list_names_record_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n' + json.dumps(trl(1)) + ',\n{"prompt": "q", "prompt": "q2", "chosen": "a", "rejected": "b"}\n]\n')
    loaded = load_pairs(str(path), skip_bad_rows=True)
    assert len(loaded.pairs) == 1 and loaded.skipped.count == 1
    assert str(loaded.skipped.problems[0]).startswith(f"{path}:3 (record 2): field 'prompt': key 'prompt' is given twice")


def test_jsonl_with_a_byte_order_mark_still_reads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(trl(1)).encode() + b"\n" + json.dumps(trl(2)).encode() + b"\n")
    assert len(load_pairs(str(path)).pairs) == 2


def _info(tmp_path, entry):
    jsonl(tmp_path / "a.jsonl", [trl(1), trl(2)])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "a.jsonl", "ranking": True, **entry}}))


@pytest.mark.parametrize("entry,words", [
    ({"colums": {"prompt": "prompt"}}, "unknown key 'colums'; did you mean 'columns'?"),
    ({"formating": "alpaca"}, "unknown key 'formating'; did you mean 'formatting'?"),
    ({"columns": {"promt": "q"}}, "unknown key 'columns.promt'; did you mean 'columns.prompt'?"),
    ({"tags": {"role_tags": "from"}}, "unknown key 'tags.role_tags'; did you mean 'tags.role_tag'?"),
    ({"hf_hub_url": "org/data"}, "'hf_hub_url' datasets are not downloaded by prefloop (LLaMA-Factory would load that"),
    ({"ms_hub_url": "org/data"}, "'ms_hub_url' datasets are not downloaded"),
    ({"om_hub_url": "org/data"}, "'om_hub_url' datasets are not downloaded"),
    ({"script_url": "loader"}, "'script_url' datasets are not downloaded"),
    ({"cloud_file_name": "s3://b/a.json"}, "'cloud_file_name' datasets are not downloaded"),
    ({"subset": "en"}, "'subset' (a subset of a hub dataset) is not supported"),
    ({"folder": "data"}, "'folder' (a folder of a hub dataset repository) is not supported"),
    ({"revision": "v1"}, "'revision' (a revision of a hub dataset) is not supported"),
    ({"split": "test"}, "'split': 'test' is not supported"),
])
def test_dataset_info_keys_prefloop_does_not_read_are_refused(tmp_path, capsys, entry, words):
    _info(tmp_path, entry)
    with pytest.raises(DataError) as err:
        load_pairs("prefs", str(tmp_path))
    assert "'prefs'" in str(err.value) and words in str(err.value)
    assert main(["data", "check", "prefs", "--dataset-dir", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("entry", [{"split": "train"}, {"num_samples": 2}, {"file_sha1": "abc"}])
def test_dataset_info_keys_that_change_nothing_are_accepted(tmp_path, entry):
    _info(tmp_path, entry)
    assert len(load_pairs("prefs", str(tmp_path)).pairs) == 2


def test_num_samples_draws_at_random_and_repeats_as_llama_factory(tmp_path, capsys):
    """num_samples: a random permutation cut to N (not the first N: a sorted file would give a biased subset); above
    the dataset's size every pair once plus random repeats (LLaMA-Factory's _load_single_dataset); max_samples then
    keeps the first of the draw. Reproducible from the seed; said in the load summary."""
    jsonl(tmp_path / "a.jsonl", [trl(i) for i in range(1, 21)])

    def load(entry, **kw):
        (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "a.jsonl", **entry}}))
        return load_pairs("prefs", str(tmp_path), **kw)

    five = load({"num_samples": 5})
    ids = [p.id for p in five.pairs]
    assert len(ids) == len(set(ids)) == 5 and ids != [f"a:{i}" for i in range(1, 6)]
    assert ids == [p.id for p in load({"num_samples": 5}).pairs]  # same seed, same draw
    assert ids != [p.id for p in load({"num_samples": 5}, seed=7).pairs]
    assert "num_samples 5 drawn at random from its 20 pairs (seed 42)" in five.summary()
    more = load({"num_samples": 26})
    base = [p.id.split("#")[0] for p in more.pairs]
    assert len(more.pairs) == 26 and set(base) == {f"a:{i}" for i in range(1, 21)}
    assert len({p.id for p in more.pairs}) == 26 and sum("#repeat-" in p.id for p in more.pairs) == 6
    assert more.pairs_per_dataset == {"prefs": 26} and "6 pairs repeated to reach it" in more.summary()
    capped = load({"num_samples": 10}, max_samples=3)
    assert [p.id for p in capped.pairs] == [p.id for p in load({"num_samples": 10}).pairs][:3]
    # data check reads the same draw (--seed as training's), says so, and does not call the repeats duplicates
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "a.jsonl", "num_samples": 26}}))
    assert main(["data", "check", "prefs", "--dataset-dir", str(tmp_path), "--seed", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == report["usable_pairs"] == 26 and "(seed 7; 6 pairs repeated" in report["notes"][0]
    assert next(f for f in report["quality"]["findings"] if f["check"] == "duplicate")["count"] == 0


def test_a_mapped_column_no_record_has_is_one_error_naming_the_mapping(tmp_path):
    """dataset_info.json "columns": {"chosen": "better"} with rows that have no "better": one error naming the
    mapping and the fields the rows do have (was one "missing field 'better'" line per row)."""
    jsonl(tmp_path / "a.jsonl", [{"instruction": f"q{i}", "input": "", "chosen": "good", "rejected": "bad"}
                                 for i in range(12)])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {
        "file_name": "a.jsonl", "ranking": True,
        "columns": {"prompt": "instruction", "query": "input", "chosen": "better", "rejected": "rejected"}}}))
    with pytest.raises(DataError) as err:
        load_pairs("prefs", str(tmp_path))
    message = str(err.value)
    assert "declares the column 'chosen': 'better', but no record" in message
    assert "its fields: chosen, input, instruction, rejected" in message and message.count("better") == 1


def test_misspelt_and_unread_fields_are_counted_and_named(tmp_path, capsys):
    rows = [trl(1, sytem="be brief"), trl(2, sytem="be brief"), trl(3, histroy=[["a", "b"]]), trl(4, history=[["a", "b"]]),
            trl(5, prompt_id="x1", model="m"), trl(6)]
    data = jsonl(tmp_path / "t.jsonl", rows)
    loaded = load_pairs(str(data))
    assert len(loaded.pairs) == 6  # read, not dropped; the field stays in `extra` (written back by --write-clean)
    lines = loaded.warnings.lines()
    assert "2 pairs had a field 'sytem', which no format reads (kept as an extra field, not used): did you mean 'system'?" in lines[0]
    assert any("1 pair had a field 'histroy'" in line and "did you mean 'history'?" in line for line in lines)
    assert any("1 pair had a field 'history', which the trl_standard format does not read" in line for line in lines)
    assert not any("prompt_id" in line or "'model'" in line for line in lines)  # not one typo away from a field
    assert main(["data", "check", str(data)]) == 0
    assert "did you mean 'system'?" in capsys.readouterr().out


def test_ultrafeedback_binarized_messages_column_is_not_warned_about(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized rows carry `messages` = prompt + chosen (and prompt_id, scores):
    a copy of the pair, so no 'not read' warning; a `messages` that holds something else still is warned."""
    def row(i, messages):
        prompt = f"Question {i}?"
        return {"prompt": prompt, "prompt_id": f"p{i}", "score_chosen": 8.0, "score_rejected": 5.0,
                "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"Good {i}."}],
                "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "Bad."}],
                "messages": messages}
    rows = [row(1, [{"role": "user", "content": "Question 1?"}, {"role": "assistant", "content": "Good 1."}]),
            row(2, [{"role": "user", "content": "Question 2?"}]),
            row(3, [{"role": "user", "content": "Something else"}, {"role": "assistant", "content": "Other."}])]
    loaded = load_pairs(str(jsonl(tmp_path / "uf.jsonl", rows)))
    assert len(loaded.pairs) == 3
    [line] = [line for line in loaded.warnings.lines() if "'messages'" in line]
    assert line.startswith("1 pair had a field 'messages'"), line  # row 3 only (was all three)


def test_one_answer_rated_is_a_missing_score_not_a_single_score(tmp_path):
    """`prefloop export` writes {"safety": {"chosen": 4}} when a labeler rated one answer: no direction, so
    weighting counts it as missing (it used to stop training with 'expected {"chosen", "rejected"}')."""
    data = jsonl(tmp_path / "e.jsonl", [trl(1, dimensions={"help": {"chosen": 5, "rejected": 2}, "safety": {"chosen": 4}})])
    loaded = load_pairs(str(data))
    pairs, report = apply_dimensions(loaded.pairs, {"help": 1.0, "safety": 1.0})
    assert report.agree == 1 and report.missing == {"safety": 1}
    from prefloop.data.dimensions import agreement_report
    assert agreement_report(loaded.pairs)["single_scores"] == {}


def test_counts_in_messages_agree_with_their_number(tmp_path):
    from prefloop.data.words import count

    assert [count(1, "row"), count(0, "row"), count(3, "bad row"), count(2, "entry")] == ["1 row", "0 rows", "3 bad rows", "2 entries"]
    # consonant + y -> ies (any such noun, not a list of them); vowel + y keeps its y
    assert [count(2, "reply"), count(2, "bad entry"), count(1, "reply"), count(3, "day"), count(2, "key")] == [
        "2 replies", "2 bad entries", "1 reply", "3 days", "2 keys"]
    assert [count(2, "match"), count(0, "was")] == ["2 matches", "0 were"]
    data = jsonl(tmp_path / "one.jsonl", [trl(1), "{oops"])
    loaded = load_pairs(str(data), skip_bad_rows=True)
    assert "1 pair from 1 file (formats" in loaded.summary() and "skipped 1 bad row:" in loaded.summary()
    with pytest.raises(DataError, match=r"^1 problem reading dataset"):
        load_pairs(str(data))


@pytest.mark.parametrize("columns", [
    {"prompt": ["q1", "q2", "q3"]},
    {"instruction": ["q1", "q2", "q3"]},
    {"conversations": [[{"from": "human", "value": f"q{i}"}] for i in range(3)]},
    {},  # HH transcripts / TRL conversational: chosen alone carries the prompt
])
def test_parquet_rows_with_a_null_answer_are_counted_bad_rows(tmp_path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if columns:
        chosen, rejected = ["a1", None, "a3"], ["b1", "b2", None]
    else:
        chosen = ["\n\nHuman: q1\n\nAssistant: a1", None, "\n\nHuman: q3\n\nAssistant: a3"]
        rejected = ["\n\nHuman: q1\n\nAssistant: b1", "\n\nHuman: q2\n\nAssistant: b2", None]
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({**columns, "chosen": chosen, "rejected": rejected}), path)
    loaded = load_pairs(str(path), skip_bad_rows=True)
    assert len(loaded.pairs) == 1 and loaded.skipped.count == 2
    first, second = (str(p) for p in loaded.skipped.problems)
    assert first.startswith(f"{path} (record 2): field 'chosen': 'chosen' is null (an empty cell or JSON null)")
    assert second.startswith(f"{path} (record 3): field 'rejected': 'rejected' is null")


def test_per_answer_scores_are_checked_and_compared_with_the_label(tmp_path, capsys):
    rows = [trl(1, chosen_score=8, rejected_score=3),
            trl(2, chosen_score=2, rejected_score=7),            # scores say rejected is better
            trl(3, score_chosen=5.0, score_rejected=5.0),        # UltraFeedback-binarized names, a tie
            trl(4, chosen_score=6),                              # one side only
            trl(5, chosen_score="8", rejected_score=1),          # a string
            trl(6, chosen_scor=1)]                               # a typo of a score field
    data = jsonl(tmp_path / "s.jsonl", rows)
    loaded = load_pairs(str(data), skip_bad_rows=True)
    assert [p.chosen for p in loaded.pairs] == ["good 1", "good 2", "good 3", "good 6"]  # read as labeled
    assert loaded.pairs[1].extra == {"chosen_score": 2, "rejected_score": 7}  # kept (written back by --write-clean)
    problems = [str(p) for p in loaded.skipped.problems]
    assert problems[0].startswith(f"{data}:4: field 'rejected_score': 'chosen_score' is given but 'rejected_score' is not")
    assert problems[1].startswith(f"{data}:5: field 'chosen_score': 'chosen_score' must be a finite number: '8' is a string")
    assert loaded.warnings.kinds["scores_contradict_label"] == 1 and loaded.warnings.kinds["scores_tied"] == 1
    text = " ".join(loaded.warnings.lines())
    assert "1 pair had chosen/rejected scores that rate the rejected answer higher: read as labeled" in text
    assert "did you mean 'chosen_score'?" in text
    assert main(["data", "check", str(data), "--skip-bad-rows"]) == 0
    assert "rate the rejected answer higher" in capsys.readouterr().out


def test_a_sharegpt_row_without_its_turns_names_the_default_column(tmp_path):
    """A sharegpt entry without columns reads 'conversations' (or 'messages'): the error named only 'messages'."""
    jsonl(tmp_path / "s.jsonl", [{"dialogue": [{"from": "human", "value": "q"}],
                                  "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prefs": {"file_name": "s.jsonl", "ranking": True,
                                                                      "formatting": "sharegpt"}}))
    with pytest.raises(DataError, match=r"field 'conversations': missing field 'conversations' \(or 'messages'\)"):
        load_pairs("prefs", str(tmp_path))
