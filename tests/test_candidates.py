"""The one candidate-file reader shared by `judge` and `label`."""

import json

import pytest

from prefloop.candidates import read_candidates
from prefloop.errors import DataError


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_candidate_shape_is_read_and_skips_are_counted(tmp_path):
    path = _write(tmp_path / "c.jsonl", [
        {"id": "g", "messages": [{"role": "user", "content": "q"}], "model": "gen", "candidates": ["a", "b", "a"]},
        {"prompt": "p", "responses": [{"text": "x", "model": "m1"}, {"content": "y", "source": "m2"}]},
        {"prompt": "only one", "candidates": ["same", "same"]},
    ])
    read = read_candidates(path)
    assert read.lines == 3 and read.too_few == 1 and read.duplicate_answers == 2
    first, second = read.sets
    assert (first.id, first.candidates, first.sources, first.model) == ("g", ["a", "b"], ["gen #0", "gen #1"], "gen")
    assert second.messages == [{"role": "user", "content": "p"}] and second.sources == ["m1", "m2"]
    assert second.source == f"{path}:2" and second.id == f"{path}:2"
    assert "1 prompt skipped" in read.summary()


def test_bad_records_name_the_line_and_field(tmp_path):
    with pytest.raises(DataError, match=r"c\.jsonl:2: no candidates"):
        read_candidates(_write(tmp_path / "c.jsonl", [{"prompt": "p", "candidates": ["a", "b"]}, {"prompt": "q"}]))
    with pytest.raises(DataError, match=r"candidates\[1\]: a candidate object needs a text field"):
        read_candidates(_write(tmp_path / "d.jsonl", [{"prompt": "p", "candidates": ["a", {"score": 1}]}]))
    with pytest.raises(DataError, match="file not found"):
        read_candidates(tmp_path / "missing.jsonl")
