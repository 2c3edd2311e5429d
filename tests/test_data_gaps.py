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
    ({"dimensions": {"help": {"chosen": 3}}}, "dimensions.help", "none for rejected"),
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
