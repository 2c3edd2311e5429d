"""Dataset names through dataset_info.json, plain paths, directories and comma-separated lists."""

import json
from pathlib import Path

import pytest

from prefloop.data.registry import CHECK_OPTIONS, CONFIG_KEYS, NO_OPTIONS, resolve_dataset
from prefloop.errors import DataError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "data"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path):
    write(tmp_path / "a.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    write(tmp_path / "sub" / "x.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    write(tmp_path / "sub" / "y.json", "[]")
    write(tmp_path / "sub" / "notes.txt", "ignored")
    info = {
        "alpha": {"file_name": "a.jsonl", "formatting": "trl", "ranking": True},
        "folder": {"file_name": "sub", "ranking": True, "num_samples": 5},
        "custom": {"file_name": "a.jsonl", "ranking": True, "formatting": "sharegpt",
                   "columns": {"messages": "dialog"}, "tags": {"role_tag": "speaker"}},
        "cols_only": {"file_name": "a.jsonl", "columns": {"prompt": "q"}},
    }
    write(tmp_path / "dataset_info.json", json.dumps(info))
    return tmp_path


def test_registered_name(data_dir):
    (source,) = resolve_dataset("alpha", data_dir)
    assert source.name == "alpha"
    assert source.files == [data_dir / "a.jsonl"]
    assert source.spec.formatting == "trl"


def test_directory_entry_lists_data_files_sorted(data_dir):
    (source,) = resolve_dataset("folder", data_dir)
    assert [f.name for f in source.files] == ["x.jsonl", "y.json"]
    assert source.num_samples == 5
    assert source.spec.formatting == "auto"


def test_columns_and_tags_are_passed_on(data_dir):
    (source,) = resolve_dataset("custom", data_dir)
    assert source.spec.columns == {"messages": "dialog"}
    assert source.spec.tags == {"role_tag": "speaker"}
    # LLaMA-Factory's default formatting (alpaca) applies when columns are declared without one.
    assert resolve_dataset("cols_only", data_dir)[0].spec.formatting == "alpaca"


def test_comma_separated_names_and_paths(data_dir):
    sources = resolve_dataset(f" alpha , {data_dir / 'sub'} ,a.jsonl", data_dir)
    assert [s.name for s in sources] == ["alpha", str(data_dir / "sub"), "a.jsonl"]
    assert sources[2].files == [data_dir / "a.jsonl"]  # relative to dataset_dir
    assert sources[2].spec.formatting == "auto"


def test_unknown_name_lists_known_names(data_dir):
    with pytest.raises(DataError) as err:
        resolve_dataset("alpha,nope", data_dir)
    message = str(err.value)
    assert "'nope'" in message
    for name in ("alpha", "custom", "folder"):
        assert name in message


def test_unknown_name_without_dataset_info_says_so(tmp_path):
    with pytest.raises(DataError, match="there is no .*dataset_info.json"):
        resolve_dataset("missing", tmp_path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"hf_hub_url": "org/data"}, "download the files and set 'file_name'"),
        ({}, "missing 'file_name'"),
        ({"file_name": "a.jsonl", "ranking": False}, "'ranking' is false"),
        ({"file_name": "a.jsonl", "formatting": "csv"}, "unknown formatting 'csv'"),
        ({"file_name": "gone.jsonl"}, "not found"),
        ({"file_name": "a.jsonl", "columns": ["x"]}, "'columns' must be an object"),
        ({"file_name": "a.jsonl", "num_samples": 0}, "'num_samples' must be a positive integer"),
    ],
)
def test_bad_entries_say_what_to_fix(data_dir, entry, message):
    write(data_dir / "dataset_info.json", json.dumps({"bad": entry}))
    with pytest.raises(DataError, match="dataset 'bad'") as err:
        resolve_dataset("bad", data_dir)
    assert message in str(err.value)


def test_malformed_dataset_info_names_the_line(tmp_path):
    write(tmp_path / "dataset_info.json", '{\n  "a": {"file_name": "x"},\n  oops\n}')
    with pytest.raises(DataError, match=r"dataset_info.json: malformed JSON at line 3, column 3: expected a key in double quotes"):
        resolve_dataset("a", tmp_path)


def test_empty_directory_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        resolve_dataset(str(tmp_path / "empty"), tmp_path)


def test_empty_name_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no dataset given"):
        resolve_dataset(" , ", tmp_path)


def test_shipped_examples_are_registered():
    info = json.loads((EXAMPLES / "dataset_info.json").read_text())
    for name in info:
        (source,) = resolve_dataset(name, EXAMPLES)
        assert all(f.exists() for f in source.files)


# A dataset path with a typo (issue 12, item 20): first that the file does not exist, with the closest
# existing name; only options the command has.
def test_a_typo_in_a_file_name_says_it_does_not_exist_and_the_closest_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "data" / "prefs.jsonl", "{}")
    with pytest.raises(DataError) as err:
        resolve_dataset("data/prefs.jsnol", "data", CHECK_OPTIONS)
    message = str(err.value)
    assert message.startswith("dataset file 'data/prefs.jsnol' does not exist")
    assert message.endswith("did you mean 'data/prefs.jsonl'?")
    assert "dataset_info" not in message and "--dataset-dir" not in message


def test_a_typo_in_a_folder_name_finds_the_file(tmp_path):
    write(tmp_path / "data" / "prefs.jsonl", "{}")
    with pytest.raises(DataError, match=r"did you mean '.*/data/prefs.jsonl'\?"):
        resolve_dataset(str(tmp_path / "dta" / "prefs.jsonl"), tmp_path)


@pytest.mark.parametrize("options, named", [(CHECK_OPTIONS, "set --dataset-dir"), (CONFIG_KEYS, "set dataset_dir"),
                                            (NO_OPTIONS, None)])
def test_a_bare_name_names_only_options_the_command_has(tmp_path, options, named):
    with pytest.raises(DataError) as err:
        resolve_dataset("my_prefs", tmp_path, options)
    message = str(err.value)
    assert message.startswith("dataset file 'my_prefs' does not exist")
    assert "there is no" in message and "dataset_info.json" in message
    assert (named in message) if named else ("(set " not in message), message


def test_a_typo_in_a_registered_name_suggests_the_name(data_dir):
    with pytest.raises(DataError, match=r"not a file or directory, nor a name in .* did you mean 'alpha'\?"):
        resolve_dataset("alpah", data_dir)
def test_a_dataset_given_twice_in_dataset_info_is_a_located_error(tmp_path):
    """Issue 12 item 7. Input: two entries named "prefs" (json keeps the second silently). Right value:
    DataError naming the file, the key and both lines."""
    write(tmp_path / "a.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    write(tmp_path / "dataset_info.json", '{\n  "prefs": {"file_name": "a.jsonl"},\n'
                                         '  "other": {"file_name": "a.jsonl"},\n  "prefs": {"file_name": "b.jsonl"}\n}')
    with pytest.raises(DataError) as err:
        resolve_dataset("prefs", tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'dataset_info.json'}: key 'prefs' is given twice in one object (lines 2, 4)")


def test_a_field_given_twice_inside_an_entry_is_an_error_too(tmp_path):
    write(tmp_path / "dataset_info.json", '{"prefs": {"file_name": "a.jsonl", "ranking": true, "file_name": "b.jsonl"}}')
    with pytest.raises(DataError, match="key 'file_name' is given twice in one object"):
        resolve_dataset("prefs", tmp_path)
